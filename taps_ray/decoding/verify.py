"""Verification of a draft tree against one target forward: pure functions over tensors.

Glossary
    root             the last committed token; row 0 of the target outputs predicts what follows
                     it, row k + 1 what follows draft node k.
    accepted tokens  the draft tokens along one root-to-node path that the target agrees with.
    bonus token      the one token the target emits after the last accepted position (sampled
                     or argmax); every step commits accepted + bonus, so at least one token.
    tau              acceptance length: mean over steps of (accepted + 1).

Greedy (T = 0): accept the longest path whose tokens equal the target argmax at each step.
Stochastic (T > 0): multi-candidate rejection sampling with deterministic draft proposals
(proposal probability 1): at each accepted node try its distinct child tokens in children order;
accept x with probability p(x) / (remaining mass), otherwise zero p(x) and try the next; when
all are rejected the bonus is drawn from the residual p. The emitted tokens are distributed
exactly as the target's own samples.

It is realised with one position-keyed uniform per depth (sampling.PositionDraws): y = the
target's inverse-CDF token at that uniform; the child whose token is y is accepted, and y is
the bonus when no child has it. The law is the procedure's above: the first child is accepted
with probability p(x1); given it was not, y follows p with x1 zeroed and renormalised, which is
the residual the next child is tried against; given every child was rejected, y follows the
final residual. And y does not depend on the drafts, so a seeded request emits the same tokens
with any tree (or none) as plain sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taps_ray.decoding.sampling import PositionDraws, inverse_cdf
from taps_ray.decoding.tree import DraftTree, children_lists


@dataclass(frozen=True)
class VerifyResult:
    accepted_nodes: list[int]  # node indices along the accepted path (root excluded), in order
    bonus_token: int  # the target's token after the last accepted position

    def accepted_tokens(self, tree: DraftTree) -> list[int]:
        tokens = tree.tokens.tolist()
        return [tokens[k] for k in self.accepted_nodes]


def verify_greedy(
    tree: DraftTree,
    target_logits: torch.Tensor,  # [n+1, V] row 0: after the root, row k+1: after node k
) -> VerifyResult:  # target_logits may be any row-indexable [n+1, V], e.g. LazyRows
    """Walk down from the root while some child's token equals the target argmax."""
    _check_rows(tree, target_logits)
    children, tokens = children_lists(tree), tree.tokens.tolist()
    node, accepted = -1, []
    best = int(target_logits[0].argmax())  # rows are read only along the walk (see LazyRows)
    while (child := _matching_child(children[node + 1], tokens, best)) is not None:
        node = child
        accepted.append(child)
        best = int(target_logits[node + 1].argmax())
    return VerifyResult(accepted, best)


def _matching_child(kids: list[int], tokens: list[int], target_token: int) -> int | None:
    return next((k for k in kids if tokens[k] == target_token), None)


def verify_stochastic(
    tree: DraftTree,
    target_probs: torch.Tensor,  # [n+1, V]; row k+1: after node k
    draws: PositionDraws,  # the request's draws, at the root's next position; advanced here
) -> VerifyResult:
    """Lossless multi-candidate rejection sampling down the tree (see the module docstring)."""
    _check_rows(tree, target_probs)
    children, tokens = children_lists(tree), tree.tokens.tolist()
    node, accepted = -1, []
    while True:
        y = inverse_cdf(_checked_row(target_probs, node + 1), draws.uniform(len(accepted)))
        child = next((k for k in children[node + 1] if tokens[k] == y), None)
        if child is None:
            draws.advance(len(accepted) + 1)
            return VerifyResult(accepted, y)
        node = child
        accepted.append(child)


def _checked_row(target_probs: torch.Tensor, row: int) -> torch.Tensor:  # -> [V] float64
    p = target_probs[row].to(torch.float64)
    mass = float(p.sum())
    if not (mass > 0 and mass < float("inf")) or bool((p < 0).any()):
        raise ValueError(
            f"target_probs row {row} is not a distribution (sum {mass}); pass softmax outputs"
        )
    return p


def _check_rows(tree: DraftTree, target: torch.Tensor) -> None:  # target [n+1, V]
    if len(target.shape) != 2 or target.shape[0] != tree.size + 1:
        raise ValueError(
            f"target outputs must be [n+1, V] = [{tree.size + 1}, V] (root + one row per node), "
            f"got {tuple(target.shape)}"
        )


def clip_at_stop(
    tokens: list[int], stop_token_ids: set[int], max_new: int
) -> tuple[list[int], bool]:
    """The tokens to commit this step: cut after the first stop token (kept) and to at most
    `max_new` tokens. Returns (kept, finished); finished when a stop token was kept or the
    budget `max_new` is used up."""
    if max_new < 0:
        raise ValueError(f"max_new must be >= 0, got {max_new}")
    kept = tokens[:max_new]
    for i, token in enumerate(kept):
        if token in stop_token_ids:
            return kept[: i + 1], True
    return kept, len(kept) >= max_new
