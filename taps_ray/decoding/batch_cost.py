"""Speculation under batching: per step, does the batch verify trees or decode plainly, and
how large are the trees?

A batched forward pads every row to the widest one, so its cost is Tb(B, q) with q the largest
row (root included). Predicted batch tokens per second:

    plain        B / Tb(B, 1)
    speculative  sum_i E_i / (sum_i draft_i + Tb(B, q))

Before drafting, E_i is the sequence's measured tokens per speculative step (tau); when plain is
predicted to win nobody drafts (the drafters catch up on the committed tokens later, as after
any plain step), and speculation is probed again after a back-off that doubles per failed
probe. After drafting, the trees are cut to one common size cap n maximising
sum_i (1 + s_i * top-n confidence sum_i) / (draft + Tb(B, max_i min(n, size_i) + 1)), with s_i
each sequence's AdaptivePolicy calibration: best_tree_size over the batch's marginal cost.
A sequence alone is left to its own policy (adaptive cut + guard), exactly as unbatched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from taps_ray.decoding.adaptive import AdaptivePolicy, OnlineVerifyCost

BatchCost = Callable[[int, int], float]  # (rows B, tokens per row q) -> seconds


class BatchVerifyCost:
    """Tb(B, q): the profile's batched table when it has one, else a least-squares fit of this
    run's own forwards over B * q tokens, else the profile's single-row Tv(B * q)."""

    def __init__(self, profile=None):
        self.profile = profile
        self.online = OnlineVerifyCost()

    def add(self, rows: int, q: int, seconds: float) -> None:
        self.online.add(rows * q, seconds)

    @property
    def ready(self) -> bool:
        return self.profile is not None or self.online.ready

    def __call__(self, rows: int, q: int) -> float:
        if self.profile is not None and self.profile.batch_verify_s:
            return self.profile.tb(rows, q)
        if self.online.ready or self.profile is None:
            return self.online(rows * q)
        return self.profile.tv(rows * q)


@dataclass
class SequenceSpeed:
    """One sequence's speculative record, as the batch's choice reads it."""

    tau: float | None = None  # running tokens committed per speculative step (None: unknown)
    draft_s: float = 0.0  # running seconds of one draft
    verify_tokens: float = 1.0  # running tokens fed per speculative step
    decay: float = 0.7

    def observe(self, plan, committed: int) -> None:
        """After a step of this sequence (an engine.StepPlan); steps that verified no draft
        token teach nothing."""
        q = plan.tokens.numel()
        if q == 1:
            return
        if self.tau is None:
            self.tau, self.draft_s, self.verify_tokens = float(committed), plan.draft_s, q
            return
        d = self.decay
        self.tau = d * self.tau + (1 - d) * committed
        self.draft_s = d * self.draft_s + (1 - d) * plan.draft_s
        self.verify_tokens = d * self.verify_tokens + (1 - d) * q


def speculation_pays(speeds: Sequence[SequenceSpeed | None], cost: BatchCost,
                     margin: float = 0.02) -> bool:
    """Predicted speculative tokens/s >= plain tokens/s (less `margin`) for this batch.
    `speeds[i]` None: a row that decodes plainly anyway (one token, no draft)."""
    rows = len(speeds)
    spec = [s for s in speeds if s is not None]
    gain = sum(s.tau for s in spec) + (rows - len(spec))
    q = max(round(s.verify_tokens) for s in spec)
    spec_rate = gain / (sum(s.draft_s for s in spec) + cost(rows, q))
    return spec_rate >= rows / cost(rows, 1) * (1 - margin)


def best_batch_cap(
    confidences: Sequence[torch.Tensor | None],  # per row: [n_i] path confidences, None = fixed
    scales: Sequence[float],  # per row: calibration of confidences against acceptance
    fixed: Sequence[int],  # per row: tokens fed when the row is not cut (None confidences)
    cost: BatchCost,
    draft_s: float,  # seconds all rows spent drafting this step
) -> int:
    """The common cap n on draft nodes per row maximising the batch's expected tokens/s."""
    rows = len(confidences)
    gains = [None if c is None else
             torch.cat([torch.zeros(1), torch.sort(c.float().cpu(), descending=True).values
                        .cumsum(0)]).tolist() for c in confidences]
    widest = max((len(g) - 1 for g in gains if g is not None), default=0)
    floor = max(fixed, default=1)
    best, best_rate = widest, -1.0
    for n in range(widest + 1):
        expected, q = 0.0, floor
        for g, s in zip(gains, scales, strict=True):
            if g is not None:
                k = min(n, len(g) - 1)
                expected, q = expected + 1.0 + s * g[k], max(q, k + 1)
        expected += sum(1.0 for g in gains if g is None)  # fixed rows: counted as 1 each
        rate = expected / (draft_s + cost(rows, q))
        if rate > best_rate:
            best, best_rate = n, rate
    return best


class BatchSpeedChooser:
    """The batch's per-step decision: who drafts, and the common tree cap."""

    def __init__(self, profile=None, margin: float = 0.02, backoff: int = 16,
                 max_backoff: int = 256):
        self.cost = BatchVerifyCost(profile)
        self.margin, self.base_backoff, self.max_backoff = margin, backoff, max_backoff
        self.backoff, self.plain_left = backoff, 0
        self.plain_steps = 0  # steps the batch decoded plainly by this choice (metrics)
        # every sequence's speculative steps pooled: the prior of a sequence that has none yet,
        # so a newcomer does not force the whole batch into a measuring step
        self.pooled = SequenceSpeed(decay=0.9)

    def modes(self, speeds: Sequence[SequenceSpeed], speculative: Sequence[bool],
              speculation: str) -> list[bool | None]:
        """Per row, engine.begin_step's `speculate`: None (its policy decides), False (plain)
        or True (draft the whole tree; `cut` sizes it)."""
        rows = len(speeds)
        if speculation == "off":
            return [False] * rows
        if speculation == "sequence" or rows == 1 or not any(speculative):
            return [None] * rows
        if not self._speculate([s if ok else None for s, ok in zip(speeds, speculative,
                                                                   strict=True)]):
            self.plain_steps += 1
            return [False] * rows
        return list(speculative)

    def _speculate(self, speeds: list[SequenceSpeed | None]) -> bool:
        if self.plain_left > 0:
            self.plain_left -= 1
            return False
        if self.pooled.tau is not None:
            speeds = [s if s is None or s.tau is not None else self.pooled for s in speeds]
        known = [s for s in speeds if s is not None]
        if not self.cost.ready or any(s.tau is None for s in known):
            return True  # nothing to predict from yet: measure
        if speculation_pays(speeds, self.cost, self.margin):
            self.backoff = self.base_backoff
            return True
        self._back_off()
        return False

    def _back_off(self) -> None:
        """Plain for the next `backoff` steps; the next failed probe waits twice as long."""
        self.plain_left = self.backoff
        self.backoff = min(self.backoff * 2, self.max_backoff)

    def cut(self, plans: list, engines: Sequence) -> list:
        """Cut the drafted trees (engine.StepPlan) to the batch's best common cap."""
        confs, scales, fixed = [], [], []
        for plan, engine in zip(plans, engines, strict=True):
            policy = None if engine is None else engine.policy
            cuttable = isinstance(policy, AdaptivePolicy) and policy.cut_trees
            if cuttable and plan.proposal.drafted:
                confs.append(plan.tree.scores.exp())
                scales.append(policy.scale)
                fixed.append(1)
            else:
                confs.append(None)
                scales.append(1.0)
                fixed.append(plan.tokens.numel())
        if all(c is None for c in confs):
            return plans
        if not self.cost.ready:  # no batch costs yet: each policy cuts as if alone
            return [p.cut(e.policy.cut(p.tree, p.draft_s).size) if c is not None else p
                    for p, e, c in zip(plans, engines, confs, strict=True)]
        cap = best_batch_cap(confs, scales, fixed, self.cost,
                             sum(p.draft_s for p in plans))
        drafted = any(c is not None and c.numel() for c in confs)
        if cap == 0 and drafted:  # not even the best node pays: as a lost prediction
            self._back_off()
        return [p.cut(cap) if c is not None else p for p, c in zip(plans, confs, strict=True)]

    def observe(self, rows: int, q: int, forward_s: float) -> None:
        self.cost.add(rows, q, forward_s)

    def observe_sequence(self, plan, committed: int) -> None:
        """One sequence's step, pooled over the batch (see `pooled`)."""
        self.pooled.observe(plan, committed)
