"""Live speculative decoding over Ray actors: the target and each drafter in its own process
(or node, or GPU), coordinated by `ActorEngine`.

    TargetActor    the target, its KV cache (TargetRunner) and the sampling generator:
                   prefill, then per step verify + commit in one call
    DrafterActor   one drafter session (make_session): start (reset + prefill pairs), extend, draft
    ActorEngine    the decode loop of SpeculativeEngine with the same strategies, which see
                   `RemoteSession` proxies instead of in-process sessions

Per step: the strategy asks the proxies for trees (all drafter actors draft at once, see
`RemoteSession.draft_rounds`), the coordinator sends the chosen or merged tree to the target
actor, which verifies and commits and returns the accepted pairs as an object reference; the
coordinator forwards that reference to every drafter actor (they fetch it directly). The
verification, sampling and commit code is the engine's own, with the generator in the target
actor, so the output equals SpeculativeEngine's token for token, and at T = 0 also step for step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import ray
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import (
    Chunk,
    GenerationResult,
    StepStats,
    as_ids,
    collect,
    default_stop_ids,
    finish_reason,
    pick_token,
    sampling_draws,
    step_stats,
    verify_tree,
)
from taps_ray.decoding.features import agree_aux_layers, aux_layers_for
from taps_ray.decoding.proposer import make_session
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import Strategy, strategy_class
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import DraftTree, tree_attention_mask, tree_position_offsets
from taps_ray.decoding.verify import VerifyResult, clip_at_stop
from taps_ray.distributed.runtime import set_torch_threads
from taps_ray.errors import TapsError

Pairs = tuple[torch.Tensor, torch.Tensor]  # (features [m, d], next tokens [m]) on the CPU


@ray.remote
class TargetActor:
    """The target side of one sequence at a time: prefill, then verify + commit per step."""

    def __init__(self, target, device: str | None = None, dtype: str | None = None,
                 torch_threads: int = 0, aux_layers: tuple[int, ...] = ()):
        set_torch_threads(torch_threads)
        self.target = _load_target(target, device, dtype)
        self.runner = TargetRunner(self.target.model, aux_layers)  # EAGLE-3 heads' layers
        self.sampling, self.draws, self.stops = SamplingParams(), None, set()

    def stop_ids(self) -> set[int]:
        return default_stop_ids(self.target)

    @ray.method(num_returns=2)
    def prefill(self, prompt_ids: list[int], sampling: SamplingParams, seed: int,
                stops: set[int]) -> tuple[int, Pairs]:
        """-> (first token, the prompt's pairs for the drafters)."""
        self.sampling, self.stops = sampling, stops
        self.draws = sampling_draws(seed)
        prompt = as_ids(prompt_ids, self.runner.device)
        feats = self.runner.prefill(prompt)  # [L, d or 4d]
        root = pick_token(self.runner.logits(feats[-1:]), sampling, self.draws)
        nxt = torch.cat([prompt[1:], torch.tensor([root], device=prompt.device)])
        return root, (feats.cpu(), nxt.cpu())

    @ray.method(num_returns=2)
    def step(self, root: int, tree: DraftTree, budget: int
             ) -> tuple[tuple[VerifyResult, list[int], bool], Pairs | None]:
        """Verify `tree` after `root`, commit what is kept -> ((result, committed, finished),
        pairs of the committed positions for the drafters, or None when finished)."""
        past = self.runner.length
        verify_ids = torch.cat([torch.tensor([root]), tree.tokens.cpu()])
        feats = self.runner.verify(verify_ids, tree_position_offsets(tree),
                                   tree_attention_mask(tree))  # [n+1, d or 4d]
        result = verify_tree(tree, self.runner, feats, self.sampling, self.draws)
        committed, finished = clip_at_stop(
            result.accepted_tokens(tree) + [result.bonus_token], self.stops, budget
        )
        if finished:
            return (result, committed, True), None
        keep = torch.tensor([0] + [n + 1 for n in result.accepted_nodes])  # verify offsets kept
        self.runner.commit(past, keep)
        kept = feats[keep.to(feats.device)]  # [m+1, d or 4d]: root + accepted positions
        return (result, committed, False), (kept.cpu(), torch.tensor(committed))


@ray.remote
class DrafterActor:
    """One drafter's session. `drafter`: an EagleDrafter, a drafter folder, or "untrained[:S]";
    `target`: a Target or its name (only its embedding and LM head are kept)."""

    def __init__(self, drafter, target, device: str | None = None, dtype: str | None = None,
                 torch_threads: int = 0):
        set_torch_threads(torch_threads)
        target = _load_target(target, device, dtype)
        drafter = _load_drafter(drafter, target)
        model = target.model
        self.name = drafter.meta.name
        self.aux = aux_layers_for([drafter])
        self.session = make_session(drafter, model.get_input_embeddings(),
                                    model.get_output_embeddings().weight)

    def aux_layers(self) -> tuple[int, ...]:
        """The target hidden states this head reads besides the final one (EAGLE-3)."""
        return self.aux

    def start(self, pairs: Pairs) -> None:
        self.session.reset()
        self.extend(pairs)

    def extend(self, pairs: Pairs) -> None:
        feats, nxt = pairs
        self.session.extend(feats.to(self.session.device), nxt.to(self.session.device))

    def draft(self, tree: TreeConfig) -> DraftTree:
        out = self.session.draft(tree)
        return DraftTree(out.tokens.cpu(), out.parents.cpu(), out.scores.cpu(),
                         out.entropies.cpu())


class RemoteSession:
    """Stands in for a DrafterSession inside a strategy; the drafting runs in a DrafterActor.

    `draft_many` drives sessions as coroutines (yield hidden states [k, d], receive their
    log-probs, return the tree) so it can batch their LM-head calls. Here the coroutine has one
    dummy round: the actor call starts at the first `next`, which `draft_many` sends to every
    session before it waits on any, so all drafter actors draft at the same time.
    """

    def __init__(self, actor):
        self.actor = actor
        self.drafter = SimpleNamespace(draft_vocab=None)  # "full vocabulary": no column mapping
        self.head = torch.zeros(1, 1)  # [V'=1, d=1] dummy head for draft_many's matmul

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:  # [k, 1] -> [k, V'=1] dummy
        return torch.zeros(hidden.shape[0], 1)

    def draft(self, tree: TreeConfig) -> DraftTree:
        return ray.get(self.actor.draft.remote(tree))

    def draft_rounds(self, tree: TreeConfig):
        pending = self.actor.draft.remote(tree)  # started now, collected after the others start
        yield torch.zeros(1, 1)  # [k=1, d=1]
        return ray.get(pending)


def remote_strategy_class(strategy: str, options: dict) -> type[Strategy]:
    """The strategy's class, refused if it needs what drafter actors do not return."""
    kind = strategy_class(strategy, options)
    if kind.reads_hidden_states:
        raise TapsError(f"strategy '{strategy}' reads each head's hidden state, which drafter "
                        "actors do not return; use route-confidence here, or route-learned "
                        "with the in-process engine (generate, bench, serve)")
    return kind


class ActorEngine:
    """SpeculativeEngine's interface (`generate`, `stream`) over a TargetActor and DrafterActors.

    StepStats times are seen from the coordinator: draft_s = the strategy's proposal (remote
    drafts included), verify_s = the target actor's verify + commit round trip, commit_s =
    handing the accepted pairs to the drafter actors (asynchronous).
    """

    def __init__(self, target_actor, drafter_actors: list, tree: TreeConfig,
                 strategy: str = "single", **strategy_options: object):
        kind = remote_strategy_class(strategy, strategy_options)
        self.target = target_actor
        self.drafters = list(drafter_actors)
        self.strategy: Strategy = kind(len(self.drafters), **strategy_options)
        self.sessions = [RemoteSession(a) for a in self.drafters]
        self.tree = tree
        self._stops: set[int] | None = None

    @classmethod
    def create(cls, target, drafters: list, tree: TreeConfig, strategy: str = "single", *,
               target_options: dict | None = None, drafter_options: list[dict] | None = None,
               torch_threads: int = 0, **strategy_options: object) -> ActorEngine:
        """Start the actors. `target`: a Target or its name; `drafters`: EagleDrafters, folders
        or "untrained[:seed]"; *_options: Ray actor options (num_gpus, resources, ...)."""
        kind = remote_strategy_class(strategy, strategy_options)
        if kind.prepare_drafters.__func__ is not Strategy.prepare_drafters.__func__:  # averaging
            if any(isinstance(d, str) for d in drafters):
                raise TapsError(f"strategy '{strategy}' combines drafter weights; pass loaded "
                                "drafters, not folder names")
            drafters = kind.prepare_drafters(list(drafters), **strategy_options)
        shared = target if isinstance(target, str) else ray.put(target)  # shipped once
        per_drafter = drafter_options or [{}] * len(drafters)
        if len(per_drafter) != len(drafters):
            raise TapsError("drafter_options needs one entry per drafter")
        drafter_actors = [
            DrafterActor.options(**_placement(opts)).remote(d, shared,
                                                            torch_threads=torch_threads)
            for d, opts in zip(drafters, per_drafter, strict=True)
        ]
        # the heads are loaded in their actors: they say which aux layers the target returns
        try:
            aux = agree_aux_layers(ray.get([a.aux_layers.remote() for a in drafter_actors]))
        except Exception:
            for actor in drafter_actors:
                ray.kill(actor)
            raise
        target_actor = TargetActor.options(**_placement(target_options)).remote(
            shared, torch_threads=torch_threads, aux_layers=aux)
        return cls(target_actor, drafter_actors, tree, strategy, **strategy_options)

    def close(self) -> None:
        for actor in [self.target, *self.drafters]:
            ray.kill(actor)

    def stop_ids(self) -> set[int]:
        if self._stops is None:
            self._stops = ray.get(self.target.stop_ids.remote())
        return self._stops

    def generate(self, prompt_ids, sampling: SamplingParams, max_new_tokens: int,
                 stop_token_ids: set[int] | None = None, seed: int = 0) -> GenerationResult:
        return collect(self.stream(prompt_ids, sampling, max_new_tokens, stop_token_ids, seed))

    def stream(self, prompt_ids, sampling: SamplingParams, max_new_tokens: int,
               stop_token_ids: set[int] | None = None, seed: int = 0) -> Iterator[Chunk]:
        """The prefill token, then one chunk per step; the last chunk has `finish_reason`."""
        if max_new_tokens <= 0:
            raise ValueError("max_new_tokens must be > 0")
        stops = self.stop_ids() if stop_token_ids is None else set(stop_token_ids)
        ids = as_ids(prompt_ids, torch.device("cpu")).tolist()
        root_ref, pairs = self.target.prefill.remote(ids, sampling, seed, stops)
        for actor in self.drafters:
            actor.start.remote(pairs)  # the drafters fetch the prompt's pairs themselves
        tokens, finished = clip_at_stop([ray.get(root_ref)], stops, max_new_tokens)
        # a copy: `tokens` grows below, and a consumer may keep the chunk
        yield Chunk(list(tokens), None, finish_reason(tokens, stops) if finished else None)
        self.strategy.start()
        while not finished:
            stat, committed, finished = self._step(tokens[-1], max_new_tokens - len(tokens))
            tokens += committed
            yield Chunk(committed, stat, finish_reason(tokens, stops) if finished else None)

    def _step(self, root: int, budget: int) -> tuple[StepStats, list[int], bool]:
        t0 = time.perf_counter()
        proposal = self.strategy.propose(self.sessions, self.tree)
        t1 = time.perf_counter()
        info, pairs = self.target.step.remote(root, proposal.tree, budget)
        result, committed, finished = ray.get(info)
        t2 = time.perf_counter()
        self.strategy.observe(proposal, len(result.accepted_nodes))
        if not finished:
            for actor in self.drafters:
                actor.extend.remote(pairs)  # ordered before this caller's next draft call
        t3 = time.perf_counter()
        stat = step_stats(proposal.tree, result, proposal, len(committed),
                           (t1 - t0, t2 - t1, t3 - t2))
        return stat, committed, finished


def _placement(options: dict | None) -> dict:
    """Actor options; without any, an actor reserves no CPU, so a target and N drafters fit on
    any node (decoding is one sequence at a time: place them, don't pack them)."""
    return dict(options) if options else {"num_cpus": 0}


def _load_target(target, device: str | None, dtype: str | None):
    if not isinstance(target, str):
        return target
    from taps_ray.models.target import load_target

    return load_target(target, device, dtype)


def _load_drafter(drafter, target):
    if not isinstance(drafter, str):
        return drafter
    from taps_ray.models.drafter import load_drafter, untrained_drafter

    if drafter.startswith("untrained"):
        _, _, seed = drafter.partition(":")
        loaded = untrained_drafter(target, seed=int(seed or 0))
        loaded.meta.name, loaded.meta.method = f"untrained{seed or 0}-eagle2", "eagle2"
        return loaded
    return load_drafter(drafter, target)
