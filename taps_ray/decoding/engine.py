"""Speculative decoding loop: draft -> verify -> commit, plus the plain autoregressive baseline.

Glossary: a *step* is one target verification forward after prefill. It commits the *accepted*
draft tokens (a path of the tree the target agrees with) and one *bonus* token the target emits
after them. tau = sum over steps of (accepted + 1) / steps; the prefill token is not counted.

A step is two halves around the target forward: `begin_step` (policy, propose, cut -> the tokens
to verify) and `finish_step` (verify, learn, clip, commit the drafters). `stream` runs them around
its own cache; the batch scheduler (scheduler.py) around one batched forward of many sequences.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.adaptive import FixedPolicy, empty_tree
from taps_ray.decoding.features import aux_layers_for
from taps_ray.decoding.proposer import make_session
from taps_ray.decoding.sampling import PositionDraws, SamplingParams, logits_to_probs
from taps_ray.decoding.strategies import Proposal, strategy_class
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import (
    DraftTree,
    children_lists,
    tree_attention_mask,
    tree_position_offsets,
)
from taps_ray.decoding.verify import VerifyResult, clip_at_stop, verify_greedy, verify_stochastic


@dataclass
class StepStats:
    verify_tokens: int  # tree nodes + root fed to the target
    accepted: int  # draft tokens accepted (bonus excluded)
    committed: int  # tokens actually emitted (after stop/length clipping)
    draft_s: float
    verify_s: float
    commit_s: float
    route: int | None = None  # drafter whose tree was verified
    speculative: bool = True  # False: the speed policy decoded this step plainly (empty tree)
    accepted_confidence: list[float] = field(default_factory=list)  # exp(cum log-prob)
    accepted_entropy: list[float] = field(default_factory=list)
    rejected_confidence: list[float] = field(default_factory=list)  # examined, not accepted
    rejected_entropy: list[float] = field(default_factory=list)


@dataclass
class Chunk:
    """Tokens committed by one prefill or step (what a stream emits)."""

    tokens: list[int]
    stat: StepStats | None  # None for the prefill token
    finish_reason: str | None = None  # set on the last chunk: "stop" or "length"


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only (prompt excluded)
    steps: list[StepStats]
    prefill_s: float
    wall_s: float
    finish_reason: str  # "stop" (EOS/stop token) or "length"

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tau(self) -> float:
        """Tokens committed per step (accepted + bonus; the last step clipped to the budget).

        The prefill token is not counted and the denominator is the number of steps.
        """
        return sum(s.committed for s in self.steps) / len(self.steps) if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def accepted_by_depth(self, max_depth: int) -> list[float]:
        """Fraction of steps whose accepted length reaches depth d, for d = 1..max_depth."""
        n = max(len(self.steps), 1)
        return [sum(s.accepted >= d for s in self.steps) / n for d in range(1, max_depth + 1)]

    def time_split(self) -> dict[str, float]:
        return {
            k: sum(getattr(s, f"{k}_s") for s in self.steps) for k in ("draft", "verify", "commit")
        }


class SpeculativeEngine:
    """Lossless tree speculative decoding of one sequence with one or more drafters."""

    def __init__(
        self,
        target,
        drafters: list,
        tree: TreeConfig,
        strategy: str = "single",
        policy=None,
        **strategy_options: object,
    ):
        """`policy` (taps_ray.decoding.adaptive) decides per step whether to speculate and how
        much of the tree to verify; default `FixedPolicy`: the drafted tree, every step."""
        self.target = target
        self.policy = policy if policy is not None else FixedPolicy()
        kind = strategy_class(strategy, strategy_options)
        drafters = kind.prepare_drafters(list(drafters), **strategy_options)
        # EAGLE-3 heads read aux hidden states: every target forward returns [final | aux]
        self.runner = TargetRunner(target.model, aux_layers_for(drafters))
        head = self.runner.lm_head.weight
        self.strategy = kind(len(drafters), **strategy_options)
        self.sessions = [make_session(d, self.runner.embed, head) for d in drafters]
        self.tree = tree

    def generate(
        self,
        prompt_ids,
        sampling: SamplingParams,
        max_new_tokens: int,
        stop_token_ids: set[int] | None = None,
        seed: int = 0,
    ) -> GenerationResult:
        return collect(self.stream(prompt_ids, sampling, max_new_tokens, stop_token_ids, seed))

    def stream(
        self,
        prompt_ids,
        sampling: SamplingParams,
        max_new_tokens: int,
        stop_token_ids: set[int] | None = None,
        seed: int = 0,
    ) -> Iterator[Chunk]:
        """Yield the committed tokens as they come: the prefill token, then one chunk per step.

        The last chunk has `finish_reason` set ("stop" or "length").
        """
        if max_new_tokens <= 0:
            raise ValueError("max_new_tokens must be > 0")
        stops = default_stop_ids(self.target) if stop_token_ids is None else set(stop_token_ids)
        draws = sampling_draws(seed)
        prompt = as_ids(prompt_ids, self.runner.device)
        root = self._prefill(prompt, sampling, draws)
        tokens, finished = clip_at_stop([root], stops, max_new_tokens)
        yield Chunk(list(tokens), None, finish_reason(tokens, stops) if finished else None)
        self.strategy.start()
        while not finished:
            stat, (committed, finished) = self._step(
                tokens[-1], sampling, draws, stops, max_new_tokens - len(tokens)
            )
            tokens += committed
            yield Chunk(committed, stat, finish_reason(tokens, stops) if finished else None)

    def _prefill(self, prompt, sampling, draws):
        return self.start(prompt, self.runner.prefill(prompt), sampling, draws)

    def start(self, prompt: torch.Tensor, feats: torch.Tensor, sampling: SamplingParams,
              draws: PositionDraws) -> int:
        """After the prompt's prefill (prompt [L], its target features [L, d], or [L, 4d] with
        aux layers, wherever the cache lives): the root token; the sessions take the prompt."""
        root = pick_token(self.runner.logits(feats[-1:]), sampling, draws)
        nxt = torch.cat([prompt[1:], torch.tensor([root], device=prompt.device)])
        for s in self.sessions:
            s.reset(int(prompt[0]))  # x_0: no pair carries it, token-only sessions need it
            s.extend(feats, nxt.to(feats.device))  # pairs (f_t, x_{t+1}) for t = 0..L-1
        return root

    def _step(self, root: int, sampling, draws, stops, budget):
        plan = self.begin_step(root)
        past = self.runner.length
        start = time.perf_counter()
        feats = self.runner.verify(plan.tokens, plan.offsets, plan.mask)
        out = self.finish_step(plan, feats, sampling, draws, stops, budget,
                               time.perf_counter() - start,
                               lambda keep: self.runner.commit(past, keep))
        return out.stat, (out.committed, out.finished)

    def begin_step(self, root: int, speculate: bool | None = None) -> StepPlan:
        """Propose this step's tree under `root`: `speculate` None lets the speed policy decide
        and cut (one sequence alone); False decodes plainly; True drafts the whole tree (the
        batch scheduler cuts it with `StepPlan.cut`)."""
        start = time.perf_counter()
        proposal = self._propose(start, speculate)
        return StepPlan.of(root, proposal, time.perf_counter() - start)

    def finish_step(
        self,
        plan: StepPlan,
        feats: torch.Tensor,  # [q, d or 4d] the target's features of plan.tokens (padding cut)
        sampling: SamplingParams,
        draws: PositionDraws,
        stops: set[int],
        budget: int,  # tokens this sequence may still emit
        forward_s: float,  # seconds of the forward that produced feats
        commit_cache=None,  # callable(keep [m]) that keeps the verified entries, or None
        solo: bool = True,  # False in a batch: the policy learns acceptance, not step times
        root_logits: torch.Tensor | None = None,  # [V] the root row's logits, if computed
    ) -> StepOutcome:
        """Verify, learn, clip at stop/length, commit the drafter sessions (and the cache
        through `commit_cache` when the caller owns it)."""
        tree, proposal = plan.tree, plan.proposal
        t1 = time.perf_counter()
        result = verify_tree(tree, self.runner, feats, sampling, draws, root_logits)
        t2 = time.perf_counter()
        if proposal.drafted:
            self.strategy.observe(proposal, len(result.accepted_nodes))
        committed, finished = clip_at_stop(
            result.accepted_tokens(tree) + [result.bonus_token], stops, budget
        )
        keep = torch.tensor([0] + [n + 1 for n in result.accepted_nodes])  # verify offsets kept
        if not finished:
            if commit_cache is not None:
                commit_cache(keep)
            self._extend_sessions(feats, keep, committed)
        t3 = time.perf_counter()
        verify_s = forward_s + t2 - t1
        stat = step_stats(tree, result, proposal, len(committed),
                          (plan.draft_s, verify_s, t3 - t2))
        predicted = float(tree.scores.exp().sum())
        if solo:
            self.policy.observe(stat.verify_tokens, stat.accepted, stat.committed, predicted,
                                verify_s, plan.draft_s + verify_s + t3 - t2)
        else:
            self.policy.observe_acceptance(stat.verify_tokens, stat.accepted, predicted)
        return StepOutcome(stat, committed, finished, keep)

    def _propose(self, start: float, speculate: bool | None = None) -> Proposal:
        """The strategy's tree cut by the speed policy, or the empty tree of a plain step."""
        if speculate is False or (speculate is None and not self.policy.speculate()):
            return Proposal(empty_tree(), None, [])
        proposal = self.strategy.propose(self.sessions, self.tree)
        if speculate:
            return proposal
        cut = self.policy.cut(proposal.tree, time.perf_counter() - start)
        return proposal if cut is proposal.tree else replace(proposal, tree=cut)

    def _extend_sessions(self, feats, keep: torch.Tensor, committed: list[int]) -> None:
        kept_feats = feats[keep.to(feats.device)]  # [m+1, d or 4d]: root + accepted positions
        nxt = torch.tensor(committed, device=feats.device)  # accepted + bonus = x_{t+1}
        for s in self.sessions:
            s.extend(kept_feats, nxt)


@dataclass
class StepPlan:
    """One sequence's share of a verification forward: what it feeds and what it drafted."""

    proposal: Proposal
    tokens: torch.Tensor  # [q] root + draft tokens (CPU)
    offsets: torch.Tensor  # [q] depth of each token (root 0)
    mask: torch.Tensor  # [q, q] bool, ancestor-or-self
    draft_s: float  # seconds spent proposing

    @property
    def tree(self) -> DraftTree:
        return self.proposal.tree

    @classmethod
    def of(cls, root: int, proposal: Proposal, draft_s: float) -> StepPlan:
        tree = proposal.tree
        tokens = torch.cat([torch.tensor([root]), tree.tokens.cpu()])
        return cls(proposal, tokens, tree_position_offsets(tree), tree_attention_mask(tree),
                   draft_s)

    @classmethod
    def plain(cls, root: int) -> StepPlan:
        """A plain decoding step: the root alone."""
        return cls.of(root, Proposal(empty_tree(), None, []), 0.0)

    @property
    def keep_root(self) -> torch.Tensor:  # [1]: keep only the root's cache entry
        return torch.zeros(1, dtype=torch.long)

    def cut(self, size: int) -> StepPlan:
        """The same step verifying only the `size` best draft nodes (a connected tree)."""
        tree = self.tree
        if size >= tree.size:
            return self
        return StepPlan.of(int(self.tokens[0]), replace(self.proposal, tree=tree.top(size)),
                           self.draft_s)


@dataclass
class StepOutcome:
    stat: StepStats
    committed: list[int]  # tokens emitted by this step (after stop/length clipping)
    finished: bool
    keep: torch.Tensor  # [m] offsets of the verified block whose cache entries stay


def generate_plain(
    target,
    prompt_ids,
    sampling: SamplingParams,
    max_new_tokens: int,
    stop_token_ids: set[int] | None = None,
    seed: int = 0,
) -> GenerationResult:
    """Autoregressive baseline on the same cache code: one target forward per token."""
    return collect(stream_plain(target, prompt_ids, sampling, max_new_tokens, stop_token_ids, seed))


def stream_plain(
    target,
    prompt_ids,
    sampling: SamplingParams,
    max_new_tokens: int,
    stop_token_ids: set[int] | None = None,
    seed: int = 0,
) -> Iterator[Chunk]:
    """Plain decoding as a stream of one-token chunks (stat None); the last has finish_reason."""
    stops = default_stop_ids(target) if stop_token_ids is None else set(stop_token_ids)
    runner = TargetRunner(target.model)
    draws = sampling_draws(seed)
    feats = runner.prefill(as_ids(prompt_ids, runner.device))
    token, count = pick_token(runner.logits(feats[-1:]), sampling, draws), 1
    while not (token in stops or count >= max_new_tokens):
        yield Chunk([token], None)
        token, count = pick_token(runner.logits(runner.step(token)), sampling, draws), count + 1
    yield Chunk([token], None, finish_reason([token], stops))


def collect(chunks: Iterator[Chunk]) -> GenerationResult:
    """Drain a stream into a GenerationResult; prefill time = until the first chunk."""
    start = time.perf_counter()
    tokens: list[int] = []
    steps: list[StepStats] = []
    prefill_s = None
    for chunk in chunks:
        tokens += chunk.tokens
        if prefill_s is None:
            prefill_s = time.perf_counter() - start
        if chunk.stat is not None:
            steps.append(chunk.stat)
    return GenerationResult(tokens, steps, prefill_s or 0.0, time.perf_counter() - start,
                            chunk.finish_reason or "length")


def finish_reason(tokens: list[int], stops: set[int]) -> str:
    """"stop" when the last committed token is a stop token, else "length"."""
    return "stop" if tokens and tokens[-1] in stops else "length"


def default_stop_ids(target) -> set[int]:
    """EOS ids of the tokenizer and the generation config (which may list several)."""
    ids = set()
    for value in (
        getattr(target.tokenizer, "eos_token_id", None),
        getattr(target.model.generation_config, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids


class LazyRows:
    """Row-indexable [n+1, V] view computing `fn(features[row])` on first access (`fn` reads
    the final columns of [n+1, d or 4d] rows, as `TargetRunner.logits`).

    Verification reads only the rows along the walk (at most depth + 2), so the LM head is
    applied to those instead of to every tree node.
    """

    def __init__(self, features: torch.Tensor, vocab: int, fn,  # features [n+1, d]
                 root: torch.Tensor | None = None):  # row 0 when the caller computed it
        self.features, self.fn = features, fn
        self.rows = {} if root is None else {0: root}
        self.shape = (features.shape[0], vocab)

    def __getitem__(self, row: int) -> torch.Tensor:  # [V]
        if row not in self.rows:
            self.rows[row] = self.fn(self.features[row : row + 1])[0]
        return self.rows[row]


def verify_tree(tree: DraftTree, runner, feats, sampling: SamplingParams, draws: PositionDraws,
                root_logits: torch.Tensor | None = None) -> VerifyResult:
    """Greedy or stochastic verification of `tree` from the target's features [n+1, d or 4d].
    `root_logits` [V]: the root row's logits when the caller already has them (a batch
    computes every row's root logits in one matmul)."""
    vocab = runner.lm_head.weight.shape[0]
    if sampling.greedy:
        result = verify_greedy(tree, LazyRows(feats, vocab, runner.logits, root_logits))
        draws.advance(len(result.accepted_nodes) + 1)
        return result

    def probs_of(logits: torch.Tensor) -> torch.Tensor:  # the inverse CDF runs on the CPU
        return logits_to_probs(logits, sampling).cpu()

    root = None if root_logits is None else probs_of(root_logits[None])[0]
    probs = LazyRows(feats, vocab, lambda f: probs_of(runner.logits(f)), root)
    return verify_stochastic(tree, probs, draws)


def pick_token(logits, sampling: SamplingParams, draws: PositionDraws) -> int:  # logits [1, V]
    """The target's next token: argmax at T = 0, else the processed distribution's token at
    this position's draw."""
    if sampling.greedy:
        draws.advance(1)
        return int(logits[0].argmax())
    return draws.take(logits_to_probs(logits[0], sampling).cpu())


def step_stats(tree, result, proposal: Proposal, committed: int, times) -> StepStats:
    """One step's record: sizes, acceptance, time split, and the judged nodes' diagnostics."""
    accepted = result.accepted_nodes
    examined = _examined(tree, accepted)
    rejected = [n for n in examined if n not in set(accepted)]
    conf, ent = tree.scores.exp().tolist(), tree.entropies.tolist()
    return StepStats(
        verify_tokens=tree.tokens.numel() + 1,
        accepted=len(accepted),
        committed=committed,
        draft_s=times[0],
        verify_s=times[1],
        commit_s=times[2],
        route=proposal.route,
        speculative=bool(proposal.drafted),
        accepted_confidence=[conf[n] for n in accepted],
        accepted_entropy=[ent[n] for n in accepted],
        rejected_confidence=[conf[n] for n in rejected],
        rejected_entropy=[ent[n] for n in rejected],
    )


def _examined(tree: DraftTree, accepted: list[int]) -> list[int]:
    """Children of the root and of every accepted node: the tokens the verifier judged."""
    children = children_lists(tree)
    return [c for parent in [-1, *accepted] for c in children[parent + 1]]


def sampling_draws(seed: int) -> PositionDraws:
    """The position-keyed draws every sampling call of one request takes (see PositionDraws)."""
    return PositionDraws(seed)


def as_ids(prompt_ids, device) -> torch.Tensor:
    """Prompt token ids as a flat long tensor on `device`; an empty prompt is a ValueError."""
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).flatten()
    if ids.numel() == 0:
        raise ValueError("prompt_ids must hold at least one token")
    return ids
