"""A drafter's per-sequence state and its EAGLE-2 dynamic tree construction.

Pair t of the drafter's input is (f_t, x_{t+1}): the target feature at t and the next token. The
output at pair t predicts f_{t+1}, whose logits propose x_{t+2}. With a committed sequence of S
tokens (x_{S-1} = root, not yet verified), the drafter's cache holds pairs 0..S-2.

Every drafter kind runs over a sequence through the `Session` protocol (reset / extend / draft);
`make_session` builds the right one for a drafter: an EAGLE-2 / HASS head reads the final
features [:d], an EAGLE-3 head (`Eagle3Session`) fuses the aux columns [d:] with its `fc` and
scores its own LM head. Sessions that also offer lockstep `draft_rounds` (`LockstepSession`)
share LM-head matmuls in `draft_many` when their heads are one matrix.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.features import aux_features, final_features
from taps_ray.decoding.kv import additive_mask, causal_mask, crop_cache
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter, PromptLookupSession
from taps_ray.decoding.tree import DraftTree, select_tree
from taps_ray.errors import TapsError


@runtime_checkable
class Session(Protocol):
    """One drafter over one sequence, as strategies, the engine and replay drive it."""

    def reset(self, first_token: int | None = None) -> None:
        """Start a new sequence whose first token is x_0 (no pair carries x_0 as next token;
        sessions that read tokens alone need it, feature-driven ones ignore it)."""

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Append committed pairs: features [m, d] (or [m, 4d] with aux layers, see
        features.py) at t, next_tokens [m] = x_{t+1}."""

    def draft(self, tree: TreeConfig) -> DraftTree:
        """The draft tree under the root x_{S-1} (size 0 when there is nothing to propose)."""


@runtime_checkable
class LockstepSession(Protocol):
    """A session whose drafting can run in lockstep with others (see `draft_many`).

    `head` [V', d]: the LM-head rows its log-probs score; `drafter.draft_vocab` [V'] their
    target ids (None: the full vocabulary) and `drafter.kind` group sessions sharing one head
    matmul (`_shares_head`); `log_probs` is the group's one call.
    """

    head: torch.Tensor
    drafter: Any

    def draft(self, tree: TreeConfig) -> DraftTree: ...

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor: ...  # [k, d] -> [k, V'] fp32

    def draft_rounds(self, tree: TreeConfig) -> Generator[torch.Tensor, torch.Tensor, DraftTree]:
        ...


def make_session(drafter: Any, embed: torch.nn.Module, lm_head_weight: torch.Tensor) -> Session:
    """The session that runs `drafter` over one sequence: an EAGLE-2 / HASS head gets a
    DrafterSession (embedding and LM head are the target's), an EAGLE-3 head an Eagle3Session
    (the target's embedding, its own LM head), prompt lookup its n-gram session."""
    if isinstance(drafter, PromptLookupDrafter):
        return PromptLookupSession(drafter, lm_head_weight.device)
    kind = getattr(drafter, "kind", "eagle2")
    if kind not in _SESSIONS:
        raise TapsError(f"drafter kind '{kind}' has no session; known: {', '.join(_SESSIONS)}")
    return _SESSIONS[kind](drafter, embed, lm_head_weight)


@dataclass
class CandidateLayer:
    """One expansion round's candidates, all children of the previous frontier."""

    tokens: torch.Tensor  # [m] target token ids
    parents: torch.Tensor  # [m] candidate index of parent, -1 = root
    scores: torch.Tensor  # [m] cumulative log-prob
    entropies: torch.Tensor  # [m] entropy of the parent's draft distribution


class DrafterSession:
    """Runs one EagleDrafter over one sequence: extend with committed pairs, draft trees."""

    def __init__(
        self, drafter: torch.nn.Module, embed: torch.nn.Module, lm_head_weight: torch.Tensor
    ):
        self.drafter = drafter
        self.embed = embed
        self.head = self.scoring_head(drafter, lm_head_weight)  # [V', d]
        self.dtype = self.head.dtype
        self.device = self.head.device
        self.hidden_size = self.head.shape[1]  # d
        self.cache = None
        self.length = 0  # pairs in the drafter cache
        self.last_hidden = None  # [d] output at the newest pair: the parent feature of depth 1
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # queued committed pairs

    @staticmethod
    def scoring_head(drafter: torch.nn.Module, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """[V', d] the rows of the target's LM head [V, d] the head scores (a view unless the
        draft vocabulary is reduced)."""
        return drafter.head_weight(lm_head_weight)

    def reset(self, first_token: int | None = None) -> None:
        """New sequence; x_0 (`first_token`) reaches the head only as a feature, so it is unused."""
        self.cache = self.new_cache()
        self.length = 0
        self.pending = []

    def new_cache(self) -> object:
        """An empty cache of the head's one decoder layer."""
        from transformers import DynamicCache

        return DynamicCache(config=self.drafter.decoder.config)

    def pair_inputs(self, features: torch.Tensor) -> torch.Tensor:  # [m, d or 4d] -> [m, d]
        """The head's hidden input at committed pairs: the target's final features."""
        return final_features(features, self.hidden_size)

    def extend(self, features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Append committed pairs: features [m, d] at t, next_tokens [m] = x_{t+1}.

        Pairs are queued and run at the next `draft`, so a drafter that sits out steps (prompt
        routing, bandit) catches up in one batched call when it drafts again.
        """
        self.pending.append((features, next_tokens))

    @torch.inference_mode()
    def flush(self) -> None:
        """Run the queued pairs through the drafter (one call for all of them)."""
        if not self.pending:
            return
        if len(self.pending) == 1:
            features, next_tokens = self.pending[0]
        else:
            features = torch.cat([f for f, _ in self.pending])
            next_tokens = torch.cat([t.to(features.device) for _, t in self.pending])
        self.pending = []
        m = next_tokens.numel()
        pos = torch.arange(self.length, self.length + m, device=self.device)
        mask = causal_mask(self.length, m, self.dtype, self.device)
        hidden = self._run(self.pair_inputs(features), next_tokens, pos, mask)
        self.length += m
        self.last_hidden = hidden[-1]

    def draft(self, tree: TreeConfig) -> DraftTree:
        """EAGLE-2: top-k children of the root, then `depth` rounds expanding the best k nodes."""
        rounds = self.draft_rounds(tree)
        hidden = next(rounds)
        try:
            while True:
                hidden = rounds.send(self.log_probs(hidden))
        except StopIteration as done:
            return done.value

    @torch.inference_mode()
    def draft_rounds(self, tree: TreeConfig) -> Generator[torch.Tensor, torch.Tensor, DraftTree]:
        """`draft` as a coroutine: yields hidden states [k, d], receives their log-probs [k, V'].

        Driving several sessions in lockstep lets their LM-head calls (the memory-bound part of
        drafting) be batched into one matmul: see `draft_many`.
        """
        self.flush()
        logp = yield self.last_hidden[None]  # [1, V']
        layer = self._children(
            logp, torch.zeros(1, device=self.device), torch.tensor([-1]), tree.top_k
        )
        layers, frontier_hidden = [layer], self.last_hidden[None].expand(layer.tokens.numel(), -1)
        offset, processed = 0, []  # processed: candidate index of each expanded cache entry
        for depth in range(1, tree.depth + 1):
            k = min(tree.top_k, layer.tokens.numel())
            best = layer.scores.topk(k).indices  # frontier = the k best of the newest layer
            frontier = offset + best
            hidden = self._expand(
                layers, processed, frontier, layer.tokens[best], frontier_hidden[best], depth
            )
            processed += frontier.tolist()
            offset += layer.tokens.numel()
            logp = yield hidden
            layer = self._children(logp, layer.scores[best], frontier, tree.top_k)
            layers.append(layer)
            frontier_hidden = hidden.repeat_interleave(tree.top_k, dim=0)
        crop_cache(self.cache, self.length)
        fields = CandidateLayer.__dataclass_fields__
        cat = [torch.cat([getattr(lay, f) for lay in layers]) for f in fields]
        return select_tree(*cat, total_tokens=tree.total_tokens)

    def _expand(self, layers, processed, frontier, tokens, parent_hidden, depth) -> torch.Tensor:
        """Run the frontier nodes [k] as drafter pairs under tree attention; -> hidden [k, d]."""
        parents = torch.cat([lay.parents for lay in layers]).tolist()
        allowed = torch.zeros(
            len(frontier),
            self.length + len(processed) + len(frontier),
            dtype=torch.bool,
            device=self.device,
        )
        allowed[:, : self.length] = True
        for row, node in enumerate(frontier.tolist()):
            ancestors = _ancestors(node, parents)
            for col, done in enumerate(processed):
                allowed[row, self.length + col] = done in ancestors
            allowed[row, self.length + len(processed) + row] = True
        pos = torch.full((len(frontier),), self.length + depth - 1, device=self.device)
        return self._run(parent_hidden, tokens, pos, additive_mask(allowed, self.dtype))

    def _children(self, logp, parent_scores, parent_ids, top_k) -> CandidateLayer:
        """logp [k, V'] -> the top_k children of each of the k parents as one candidate layer."""
        entropy = -(logp.exp() * logp).sum(-1)  # [k]
        top = logp.topk(top_k, dim=-1)  # [k, top_k]
        return CandidateLayer(
            tokens=self.drafter.to_target_ids(top.indices).flatten(),
            parents=parent_ids.to(self.device).repeat_interleave(top_k),
            scores=(parent_scores[:, None] + top.values).flatten(),
            entropies=entropy.repeat_interleave(top_k),
        )

    @torch.inference_mode()
    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:  # [k, d] -> [k, V'] fp32
        return torch.log_softmax((hidden @ self.head.T).float(), dim=-1)

    def _run(self, features, tokens, pos, mask) -> torch.Tensor:
        return self.run_pairs(features, tokens, pos, mask, self.cache)

    def run_pairs(
        self,
        hidden: torch.Tensor,  # [m, d] the head's input at t: pair_inputs(target features),
        # or the head's own output at the parent (a drafted node)
        tokens: torch.Tensor,  # [m] x_{t+1}
        pos: torch.Tensor,  # [m] position ids
        mask: torch.Tensor,  # [1, 1, m, past + m] additive
        cache: object,  # a drafter cache; the m new entries are appended to it
    ) -> torch.Tensor:  # [m, d] the drafter's output at each pair
        embeds = self.embed(tokens.to(self.device))
        out = self.drafter(hidden[None].to(self.dtype), embeds[None], mask, pos[None], cache)
        return out[0]


class Eagle3Session(DrafterSession):
    """Runs one Eagle3Drafter over one sequence: EAGLE-2's dynamic tree over its own head.

    A committed pair feeds g_t = fc(aux_t) (the target's aux columns, features.py); a drafted
    node feeds its parent's output h; log-probs are the head's own (norm + lm_head over V',
    mapped to target ids through d2t). The target's LM head is not used.
    """

    @staticmethod
    def scoring_head(drafter: torch.nn.Module, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """[V', d] the head's own LM head (the target's [V, d] only fixes d)."""
        head = drafter.lm_head.weight
        if lm_head_weight.shape[1] != head.shape[1]:
            raise TapsError(f"EAGLE-3 head of hidden size {head.shape[1]} does not fit a "
                            f"target of hidden size {lm_head_weight.shape[1]}")
        return head

    def new_cache(self) -> object:
        return self.drafter.new_cache()

    def pair_inputs(self, features: torch.Tensor) -> torch.Tensor:  # [m, 4d] -> [m, d]
        """g_t = fc(aux_t): the head's hidden input at committed pairs."""
        return self.drafter.project(aux_features(features, self.hidden_size).to(self.dtype))

    @torch.inference_mode()
    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:  # [k, d] -> [k, V'] fp32
        return torch.log_softmax(self.drafter.logits(hidden).float(), dim=-1)


_SESSIONS = {"eagle2": DrafterSession, "eagle3": Eagle3Session}


def _ancestors(node: int, parents: list[int]) -> set[int]:
    out = set()
    while node >= 0:
        out.add(node)
        node = parents[node]
    return out


@torch.inference_mode()
def draft_many(sessions: Sequence[Session], tree: TreeConfig) -> list[DraftTree]:
    """Trees of several drafters; lockstep sessions run together so each round's LM-head calls
    are batched.

    The drafters' decoder layers differ and run one after another, but drafters that score
    the same rows of the target's frozen LM head (full vocabulary, or the same reduced one)
    share one [sum k, d] x [d, V'] matmul per round (an EAGLE-3 head has its own norm and LM
    head: it shares only with sessions of the very same head): memory-bound at large
    vocabularies, it costs about what one drafter's call costs. Drafters with different
    reduced vocabularies keep their own (already small) head calls: a union head measured
    slower on CPU (benchmarks/draft_many.py). Other sessions (prompt lookup, replay's known
    trees) draft on their own. Output equals separate `draft` calls up to summation order.
    """
    lockstep = [i for i, s in enumerate(sessions) if isinstance(s, LockstepSession)]
    if len(lockstep) < 2:
        return [s.draft(tree) for s in sessions]
    trees = dict(zip(lockstep, _lockstep([sessions[i] for i in lockstep], tree), strict=True))
    return [trees[i] if i in trees else s.draft(tree) for i, s in enumerate(sessions)]


def _lockstep(sessions: Sequence[LockstepSession], tree: TreeConfig) -> list[DraftTree]:
    groups = _head_groups(sessions)
    rounds = [s.draft_rounds(tree) for s in sessions]
    hidden: list[torch.Tensor | None] = [next(r) for r in rounds]
    trees: list[DraftTree | None] = [None] * len(sessions)
    while any(h is not None for h in hidden):
        logps: dict[int, torch.Tensor] = {}
        for group in groups:
            live = [i for i in group if hidden[i] is not None]
            if not live:
                continue
            logp = sessions[live[0]].log_probs(torch.cat([hidden[i] for i in live]))
            parts = logp.split([hidden[i].shape[0] for i in live])  # [sum k, V'] per session
            logps.update(zip(live, parts, strict=True))
        for i, logp in logps.items():
            try:
                hidden[i] = rounds[i].send(logp)
            except StopIteration as done:
                hidden[i], trees[i] = None, done.value
    return trees


def _head_groups(sessions: Sequence[LockstepSession]) -> list[list[int]]:
    """Session indices grouped by the head their log-probs come from (`_shares_head`)."""
    groups: list[list[int]] = []
    for i, s in enumerate(sessions):
        for group in groups:
            if _shares_head(s, sessions[group[0]]):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _shares_head(a: LockstepSession, b: LockstepSession) -> bool:
    """True when one `log_probs` call serves both: EAGLE-2 heads scoring the same rows of the
    target's LM head (same draft vocabulary); an EAGLE-3 head (its own norm and LM head) only
    with the same head."""
    kinds = {getattr(s.drafter, "kind", "eagle2") for s in (a, b)}
    if kinds != {"eagle2"}:
        return a.drafter is b.drafter
    mine, other = a.drafter.draft_vocab, b.drafter.draft_vocab
    if mine is None or other is None:
        return mine is None and other is None
    return mine.shape == other.shape and bool(torch.equal(mine, other))
