"""Learned routing scores: which of several heads to verify, fitted for the decision itself.

A per-head calibration (decoding/calibration.py) maps a head's confidence to its own acceptance
probability; it does not rank two heads at one position, and between two specialists half or
more of the positions are ties (both trees accepted to the same depth), where any routing rule
is as good as another (measured in docs/results.md). A routing score is fitted jointly over the
heads meant to be routed together, on held-out replay where every head drafted at every
position (evaluation/routing_fit.py):

    score_k = bias_k + confidence_weight_k * log(mean node confidence of head k's tree)
              + w_k . h_k

with h_k head k's hidden state at the tree's root (the feature a context calibration reads).
The weights minimise the expected number of accepted tokens lost to the best head (a softmax
router's regret), so ties cost nothing and decisive positions weigh by what they cost; the
hidden-state term learns which text each head is worth trusting on. The score of each head is
separable, so each head's part lives in its own taps.json under extra["routing_score"], with
the names of the heads it was fitted with and a fit id: strategy `route-learned` verifies the
tree with the highest score and refuses heads not fitted together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from taps_ray.errors import TapsError

META_KEY = "routing_score"  # where a head's part lives in DrafterMeta.extra


@dataclass(frozen=True)
class RoutingScore:
    """One head's part of a jointly fitted router."""

    fit_id: str  # shared by the heads fitted together
    heads: tuple[str, ...]  # their names, in fitting order
    bias: float = 0.0
    confidence_weight: float = 0.0
    weights: tuple[float, ...] = ()  # one per hidden unit of the head
    fitted_on: dict = field(default_factory=dict, compare=False)  # data and held-out metrics

    def __post_init__(self) -> None:
        if not self.fit_id or len(self.heads) < 2:
            raise TapsError("a routing score needs a fit id and the names of the two or more "
                            "heads it was fitted with; rerun taps-ray drafter fit-router")
        values = (self.bias, self.confidence_weight, *self.weights)
        if not self.weights or not all(math.isfinite(v) for v in values):
            raise TapsError("a routing score needs finite weights, one per hidden unit; rerun "
                            "taps-ray drafter fit-router")

    def score(self, scores: torch.Tensor, hidden: torch.Tensor | None) -> float:
        """The score of one tree: `scores` [n] its nodes' cumulative draft log-probs, `hidden`
        [d] the head's hidden state at the tree's root."""
        if hidden is None:
            raise TapsError("route-learned needs each head's hidden state; this session has "
                            "none (prompt lookup?): route it with route-confidence")
        if hidden.shape[-1] != len(self.weights):
            raise TapsError(f"routing score has {len(self.weights)} weights but the head's "
                            f"hidden state has {hidden.shape[-1]} units; rerun taps-ray drafter "
                            "fit-router on these heads")
        w = torch.tensor(self.weights, dtype=torch.float64, device=hidden.device)
        return (self.bias + self.confidence_weight * log_mean_confidence(scores)
                + float(hidden.double() @ w))

    def to_dict(self) -> dict[str, Any]:
        return {"fit_id": self.fit_id, "heads": list(self.heads), "bias": self.bias,
                "confidence_weight": self.confidence_weight, "weights": list(self.weights),
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, raw: object) -> RoutingScore:
        if not isinstance(raw, dict):
            raise TapsError(f"drafter {META_KEY} must be a mapping, got {type(raw).__name__}; "
                            "rerun taps-ray drafter fit-router")
        try:
            return cls(fit_id=str(raw["fit_id"]), heads=tuple(str(h) for h in raw["heads"]),
                       bias=float(raw.get("bias", 0.0)),
                       confidence_weight=float(raw.get("confidence_weight", 0.0)),
                       weights=tuple(float(v) for v in raw["weights"]),
                       fitted_on=dict(raw.get("fitted_on") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise TapsError(f"drafter {META_KEY} is damaged ({err!r}); rerun taps-ray drafter "
                            "fit-router") from None


def log_mean_confidence(scores: torch.Tensor) -> float:
    """log of the mean node confidence exp(s) of a tree (-inf guarded: an empty tree is -30)."""
    if not scores.numel():
        return -30.0
    return max(float(torch.logsumexp(scores.double(), 0)) - math.log(scores.numel()), -30.0)


def routing_score_of(meta: object) -> RoutingScore | None:
    """The routing score recorded in a DrafterMeta (None: the head was never fitted)."""
    raw = (getattr(meta, "extra", None) or {}).get(META_KEY)
    return None if raw is None else RoutingScore.from_dict(raw)


def drafter_routing_score(drafter: object) -> tuple[str, RoutingScore | None]:
    """(name, routing score) of a drafter (a session's `drafter`; '?' and None without meta)."""
    meta = getattr(drafter, "meta", None)
    return str(getattr(meta, "name", "") or "?"), routing_score_of(meta)


def check_fitted_together(named: list[tuple[str, RoutingScore | None]]) -> list[RoutingScore]:
    """The scores of heads routed together, after checking one fit covers exactly them."""
    names = [n for n, _ in named]
    fix = f"run taps-ray drafter fit-router on {' '.join(names)}"
    missing = [n for n, s in named if s is None]
    if missing:
        raise TapsError(f"drafter '{missing[0]}' has no routing score for route-learned; {fix}")
    scores = [s for _, s in named if s is not None]
    if len({s.fit_id for s in scores}) != 1 or sorted(scores[0].heads) != sorted(names):
        raise TapsError(f"drafters {', '.join(names)} were not fitted together for "
                        f"route-learned (their scores were fitted with "
                        f"{', '.join(scores[0].heads)}); {fix}")
    return scores
