"""Training batches: conversations -> right-padded drafter pairs, and the seeded epoch order.

A conversation of T tokens gives P = T - 1 pairs. Pair t = (f_t, x_{t+1}) predicts f_{t+1}
(regression target) and, through the LM head, x_{t+2}; it carries loss only when x_{t+2} is an
assistant token, so the last pair (no x_{T}) never does.

EAGLE-3 rows are [T, 4d] = [final | aux...]: its pair t reads the aux columns of f_t (the head's
`fc` fuses them) and its target is the final columns of f_{t+1} (`collate_pairs(..., final=d)`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taps_ray.training.extract import ConversationFeatures

GROUP = 16  # batches per length-sorted group: less padding, order still shuffled


@dataclass
class PairBatch:
    """B conversations as drafter pairs, right-padded to P = max(T_i) - 1."""

    features: torch.Tensor  # [B, P, d] fp32 f_t, the drafter's feature input ([B, P, 3d] aux_t
    # for EAGLE-3)
    next_ids: torch.Tensor  # [B, P] long x_{t+1}, the drafter's token input
    target_features: torch.Tensor  # [B, P, d] fp32 f_{t+1} (final columns)
    loss_mask: torch.Tensor  # [B, P] bool, x_{t+2} is an assistant token
    valid: torch.Tensor  # [B, P] bool, a real pair (not padding)

    @property
    def tokens(self) -> int:
        return int(self.valid.sum())

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(*(t.to(device, non_blocking=True) for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.features, self.next_ids, self.target_features, self.loss_mask, self.valid)


def collate_pairs(items: Sequence[ConversationFeatures], final: int | None = None) -> PairBatch:
    """Right-pad B conversations (each >= 2 tokens) into one PairBatch on CPU.

    `final`: None = rows are plain features (input and target alike); d = EAGLE-3 rows, whose
    columns [:d] are the target and [d:] the input."""
    pairs = max(len(item) for item in items) - 1
    width = items[0].features.shape[-1]
    split = final or 0  # input columns start here; target columns end at `final or width`
    out = PairBatch(
        features=torch.zeros(len(items), pairs, width - split),
        next_ids=torch.zeros(len(items), pairs, dtype=torch.long),
        target_features=torch.zeros(len(items), pairs, final or width),
        loss_mask=torch.zeros(len(items), pairs, dtype=torch.bool),
        valid=torch.zeros(len(items), pairs, dtype=torch.bool),
    )
    for row, item in enumerate(items):
        p = len(item) - 1
        feats = item.features  # [T, d | 4d]
        out.features[row, :p] = feats[:-1, split:].float()
        out.target_features[row, :p] = feats[1:, : final or width].float()
        out.next_ids[row, :p] = item.input_ids[1:].long()
        out.loss_mask[row, : p - 1] = item.loss_mask[2:].bool()
        out.valid[row, :p] = True
    return out


def epoch_batches(
    indices: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Batches of `indices` for one epoch; the same (seed, epoch) always gives the same list.

    Shuffle, sort each group of GROUP batches by length (less padding), split, shuffle batches.
    """
    rng = random.Random(f"{seed}/{epoch}")  # string seeds hash the same in every process
    order = list(indices)
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * GROUP
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def batches_per_epoch(n: int, batch_size: int) -> int:
    """len(epoch_batches(...)) for n indices, without building it."""
    span = batch_size * GROUP
    full, rest = divmod(n, span)
    return full * GROUP + -(-rest // batch_size)
