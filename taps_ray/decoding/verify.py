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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taps_ray.decoding.sampling import sample_token
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
    target_probs: torch.Tensor,  # [n+1, V] on the generator's device; row k+1: after node k
    generator: torch.Generator,
) -> VerifyResult:
    """Lossless multi-candidate rejection sampling down the tree (see the module docstring)."""
    _check_rows(tree, target_probs)
    children, tokens = children_lists(tree), tree.tokens.tolist()
    node, accepted = -1, []
    while True:
        residual = _checked_row(target_probs, node + 1)  # [V] float64 copy
        child = _try_children(residual, children[node + 1], tokens, generator)
        if child is None:
            return VerifyResult(accepted, sample_token(residual, generator))
        node = child
        accepted.append(child)


def _try_children(
    residual: torch.Tensor,  # [V] float64, modified in place: rejected tokens are zeroed
    kids: list[int],
    tokens: list[int],
    generator: torch.Generator,
) -> int | None:
    """Try each distinct child token in turn; return the accepted child, or None.

    Why the residual never runs empty: x is rejected only when u >= p(x) / mass with u < 1, so
    p(x) < mass, so some other token still has positive probability. (If x holds all the
    remaining mass, the float sum equals p(x) exactly, the ratio is exactly 1 and x is always
    accepted.) So the residual is non-empty whenever the row was, and `_checked_row` rejects
    empty or non-finite rows up front; no fallback distribution is needed.
    """
    tried: set[int] = set()
    for kid in kids:
        x = tokens[kid]
        if x in tried:  # a duplicate sibling token was already judged (and zeroed)
            continue
        tried.add(x)
        u = torch.rand((), dtype=torch.float64, device=generator.device, generator=generator)
        if float(u) < float(residual[x]) / float(residual.sum()):
            return kid
        residual[x] = 0.0
    return None


def _checked_row(target_probs: torch.Tensor, row: int) -> torch.Tensor:  # -> [V] float64 copy
    p = target_probs[row].to(torch.float64, copy=True)
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
