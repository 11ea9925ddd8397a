"""EAGLE-2 and HASS training losses: pure functions over the N loss positions of a batch.

Position t of a conversation is drafter pair (f_t, x_{t+1}); it predicts f_{t+1}, whose logits
propose x_{t+2}. The caller selects the positions whose x_{t+2} is an assistant token, so every
tensor here is [N, ...] over exactly those positions.

    feature = SmoothL1(f^_{t+1}, f_{t+1})                       (mean over d, then over N)
    ce      = -sum_v p(v) log q(v)                              p = softmax(lm_head(f_{t+1}))
    topk    = -sum_{v in topK(p)} p(v) log q(v)                 HASS harmonized distillation
    loss    = w_feature * feature + w_ce * ce + w_topk * topk   (w_topk = 0 for EAGLE-2)

With a reduced draft vocabulary both p and q live on its V' rows: p is the target distribution
restricted to them and renormalised (softmax over the restricted logits does exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    w_feature: float = 1.0
    w_ce: float = 0.1
    w_topk: float = 0.0  # 0 disables the top-K term (EAGLE-2)
    topk: int = 10

    @classmethod
    def from_config(cls, cfg: object, method: str) -> LossWeights:
        """From a TrainingConfig; the top-K term only for HASS."""
        w_topk = cfg.w_topk if method == "hass" else 0.0
        return cls(cfg.w_feature, cfg.w_ce, w_topk, cfg.topk)


@dataclass(frozen=True)
class TargetSide:
    """What the target says at the N loss positions (computed once, shared by HASS steps)."""

    features: torch.Tensor  # [N, d] f_{t+1}, fp32
    probs: torch.Tensor  # [N, V'] fp32, softmax of the target logits on the draft vocab
    topk_ids: torch.Tensor | None  # [N, K] draft-vocab indices of p's top K, None = unused


@torch.no_grad()
def target_side(
    features: torch.Tensor,  # [N, d] target features f_{t+1}
    head: torch.Tensor,  # [V', d] LM-head rows of the draft vocabulary
    topk: int = 0,
) -> TargetSide:
    features = features.float()
    probs = torch.softmax(features @ head.float().T, dim=-1)  # [N, V']
    ids = probs.topk(min(topk, probs.shape[-1]), dim=-1).indices if topk > 0 else None
    return TargetSide(features, probs, ids)


def feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # [N, d] x2 -> []
    return F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1).mean()


def soft_cross_entropy(logq: torch.Tensor, p: torch.Tensor) -> torch.Tensor:  # [N, V'] x2 -> []
    return -(p * logq).sum(-1).mean()


def topk_cross_entropy(
    logq: torch.Tensor,  # [N, V'] draft log-probabilities
    p: torch.Tensor,  # [N, V'] target probabilities
    topk_ids: torch.Tensor,  # [N, K] indices of the target's top K
) -> torch.Tensor:  # []
    return -(p.gather(-1, topk_ids) * logq.gather(-1, topk_ids)).sum(-1).mean()


def top1_agreement(logq: torch.Tensor, p: torch.Tensor) -> torch.Tensor:  # [N, V'] x2 -> []
    """Share of positions where the draft's argmax equals the target's."""
    return (logq.argmax(-1) == p.argmax(-1)).float().mean()


def drafter_losses(
    pred: torch.Tensor,  # [N, d] predicted features f^_{t+1}
    target: TargetSide,
    head: torch.Tensor,  # [V', d] LM-head rows of the draft vocabulary
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """The weighted loss and its parts (scalars; `acc` carries no gradient)."""
    if pred.shape[0] == 0:  # no assistant position in this batch: a zero loss that backprops
        zero = pred.sum() * 0.0
        return {"loss": zero, "feature": zero, "ce": zero, "topk": zero, "acc": zero.detach()}
    logq = torch.log_softmax((pred @ head.T).float(), dim=-1)  # [N, V']
    parts = {
        "feature": feature_loss(pred, target.features),
        "ce": soft_cross_entropy(logq, target.probs),
    }
    parts["topk"] = (
        topk_cross_entropy(logq, target.probs, target.topk_ids)
        if weights.w_topk and target.topk_ids is not None
        else torch.zeros((), device=pred.device)
    )
    parts["loss"] = (
        weights.w_feature * parts["feature"]
        + weights.w_ce * parts["ce"]
        + weights.w_topk * parts["topk"]
    )
    parts["acc"] = top1_agreement(logq.detach(), target.probs)
    return parts
