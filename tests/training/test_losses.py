"""Loss functions on hand-made distributions, and the HASS alignment mask on a small case."""

from __future__ import annotations

import math

import torch

from taps_ray.training.alignment import alignment_mask
from taps_ray.training.losses import (
    LossWeights,
    drafter_losses,
    soft_cross_entropy,
    target_side,
    topk_cross_entropy,
)


def test_soft_cross_entropy_by_hand():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    logq = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    assert math.isclose(float(soft_cross_entropy(logq, p)), math.log(4), rel_tol=1e-6)


def test_topk_loss_covers_only_the_target_top_k():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    logq = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    top2 = torch.tensor([[0, 1]])
    want = -(0.6 * math.log(0.2) + 0.3 * math.log(0.3))
    assert math.isclose(float(topk_cross_entropy(logq, p, top2)), want, rel_tol=1e-6)
    full = torch.tensor([[0, 1, 2]])
    assert torch.isclose(topk_cross_entropy(logq, p, full), soft_cross_entropy(logq, p))


def test_reduced_vocab_target_is_restricted_and_renormalised():
    torch.manual_seed(0)
    head, feats = torch.randn(10, 4), torch.randn(3, 4)
    rows = torch.tensor([1, 4, 7])
    full = torch.softmax(feats @ head.T, -1)[:, rows]
    side = target_side(feats, head[rows], topk=2)
    torch.testing.assert_close(side.probs, full / full.sum(-1, keepdim=True))
    assert side.topk_ids.shape == (3, 2)


def test_perfect_prediction_has_zero_feature_loss_and_full_agreement():
    torch.manual_seed(0)
    head, feats = torch.randn(10, 4), torch.randn(5, 4)
    side = target_side(feats, head, topk=3)
    parts = drafter_losses(feats.clone(), side, head, LossWeights(1.0, 0.1, 1.0, 3))
    assert float(parts["feature"]) == 0.0 and float(parts["acc"]) == 1.0
    entropy = -(side.probs * side.probs.log()).sum(-1).mean()
    torch.testing.assert_close(parts["ce"], entropy)  # CE of p with itself = its entropy


def test_no_loss_positions_give_a_zero_loss_that_backprops():
    pred = torch.randn(0, 4, requires_grad=True)
    side = target_side(torch.zeros(0, 4), torch.randn(6, 4))
    parts = drafter_losses(pred, side, torch.randn(6, 4), LossWeights())
    parts["loss"].backward()
    assert float(parts["loss"].detach()) == 0.0


def test_alignment_mask_pass_one_and_two():
    # Pass 1, query t: pass-0 keys s <= t-1 and its own key t.
    m1 = alignment_mask(4, 1, torch.device("cpu")).int()
    assert m1[:, :4].tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert m1[:, 4:].tolist() == torch.eye(4, dtype=torch.int).tolist()
    # Pass 2, query 3: pass-0 keys 0..1, pass-1 key 2, pass-2 key 3.
    m2 = alignment_mask(4, 2, torch.device("cpu")).int()
    assert m2[3].tolist() == [1, 1, 0, 0] + [0, 0, 1, 0] + [0, 0, 0, 1]
    assert m2[0].tolist() == [0, 0, 0, 0] + [0, 0, 0, 0] + [1, 0, 0, 0]
