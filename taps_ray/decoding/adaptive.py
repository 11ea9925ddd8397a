"""Speed policies: per step, whether to speculate at all and how much of the draft tree to verify.

A policy sits between the strategy's proposal and verification. It never changes which tokens
the target accepts (verification does that), only how many draft nodes are shown to it, so every
policy is as lossless as the engine: a plain step is a verification of the empty tree.

- `FixedPolicy`: verify the drafted tree as is, every step (the study's setting).
- `AdaptivePolicy`: (a) cut each tree to the size that maximises expected tokens per second,
  E[tokens](n) / (draft + Tv(n + 1)), where E[tokens](n) = 1 + c * sum of the n best nodes'
  path confidences exp(score), c a running calibration of those confidences against what was
  really accepted, and Tv the verify cost (from a calibrated profile, else fitted online from
  the engine's own steps); (b) a guard that decodes plainly when speculation measured over a
  window of steps is slower than plain steps, then probes again after a back-off that doubles
  on every failed probe (hysteresis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from taps_ray.decoding.tree import DraftTree
from taps_ray.errors import TapsError

VerifyCost = Callable[[int], float]  # tokens fed to the target (root included) -> seconds


def empty_tree(device: torch.device | str = "cpu") -> DraftTree:
    """The tree of a plain step: the root alone, whose verification is one decoding step."""
    long, flt = torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)
    return DraftTree(long, long.clone(), flt, flt.clone())


class FixedPolicy:
    """Always speculate; verify the tree the strategy proposed."""

    name = "fixed"

    def speculate(self) -> bool:
        return True

    def cut(self, tree: DraftTree, draft_s: float) -> DraftTree:
        return tree

    def observe(self, verify_tokens: int, accepted: int, committed: int, predicted: float,
                verify_s: float, step_s: float) -> None:
        """Feedback after each step (nothing to learn for a fixed tree)."""

    def observe_acceptance(self, verify_tokens: int, accepted: int, predicted: float) -> None:
        """Feedback of a step verified in a batch, whose times are not this sequence's."""


def best_tree_size(
    confidences: torch.Tensor,  # [n] path confidences of the tree's nodes, any order
    verify_s: VerifyCost,
    draft_s: float,
    scale: float = 1.0,
) -> int:
    """Number of best nodes to keep: argmax over k of (1 + scale * top-k confidence sum) /
    (draft_s + verify_s(k + 1)). Keeping the k best by score keeps a connected tree."""
    ranked = torch.sort(confidences.float().cpu(), descending=True).values
    gains = torch.cat([torch.zeros(1), ranked.cumsum(0)])  # [n + 1] expected accepted
    best, best_rate = 0, -1.0
    for k, gain in enumerate(gains.tolist()):
        rate = (1.0 + scale * gain) / (draft_s + verify_s(k + 1))
        if rate > best_rate:
            best, best_rate = k, rate
    return best


class OnlineVerifyCost:
    """Tv(n) ~ a + b * n, least squares over the engine's own (n, verify seconds) with
    exponential forgetting; usable once two distinct sizes were seen."""

    def __init__(self, decay: float = 0.97):
        self.decay = decay
        self.sums = [0.0] * 5  # weight, sum n, sum n^2, sum t, sum n*t
        self.sizes: set[int] = set()

    def add(self, n: int, seconds: float) -> None:
        self.sums = [s * self.decay for s in self.sums]
        for i, v in enumerate((1.0, n, n * n, seconds, n * seconds)):
            self.sums[i] += v
        self.sizes.add(n)

    @property
    def ready(self) -> bool:
        return len(self.sizes) >= 2

    def __call__(self, n: int) -> float:
        w, sn, snn, st, snt = self.sums
        denom = w * snn - sn * sn
        slope = max((w * snt - sn * st) / denom, 0.0) if denom > 1e-12 else 0.0
        return max((st - slope * sn) / w + slope * n, 1e-6)


@dataclass
class GuardSettings:
    window: int = 8  # speculative steps per measurement
    plain_probe: int = 4  # plain steps that measure plain speed when it is not known yet
    # speculation goes off when it measures this share slower than plain: a tie keeps it on,
    # since a near-free drafter with no draft costs what a plain step costs
    margin: float = 0.02
    backoff: int = 16  # plain steps after a failed probe; doubles per failure, up to max
    max_backoff: int = 256

    def __post_init__(self) -> None:
        if min(self.window, self.plain_probe, self.backoff, self.max_backoff) < 1:
            raise ValueError("guard window, plain_probe, backoff and max_backoff must be >= 1")


class SpeedGuard:
    """Speculate while it measures faster than plain decoding; else decode plainly for a while.

    Rates are tokens per second of whole steps (draft + verify + commit). The first speculative
    step of a phase is not measured: it includes the drafters' catch-up on the tokens committed
    while they sat out, a one-off cost.
    """

    def __init__(self, settings: GuardSettings | None = None, plain_rate: float | None = None):
        self.settings = settings or GuardSettings()
        self.plain_rate = plain_rate  # tokens/s of plain steps (prior from a profile, or None)
        self.spec_rate: float | None = None
        self.backoff = self.settings.backoff
        self.mode, self.left = "spec", self.settings.window + 1
        self._tokens, self._seconds, self._skip = 0, 0.0, True  # first step: drafter prefill
        self.switches = 0  # times speculation was turned off (for metrics)

    def speculate(self) -> bool:
        return self.mode == "spec"

    def observe(self, committed: int, seconds: float) -> None:
        if self._skip:
            self._skip = False
        else:
            self._tokens, self._seconds = self._tokens + committed, self._seconds + seconds
        self.left -= 1
        if self.left > 0:
            return
        rate = self._tokens / self._seconds if self._seconds > 0 else 0.0
        self._tokens, self._seconds = 0, 0.0
        if self.mode == "spec":
            self.spec_rate = rate
        else:  # "plain" (back-off) and "measure" steps both time plain decoding
            self.plain_rate = rate
        self._decide()

    def _decide(self) -> None:
        s = self.settings
        if self.mode == "plain":
            self._enter("spec", s.window)  # back-off over: probe speculation again
        elif self.plain_rate is None:
            self._enter("measure", s.plain_probe)
        elif self.spec_rate is not None and self.spec_rate >= self.plain_rate * (1 - s.margin):
            self.backoff = s.backoff
            self._enter("spec", s.window)
        else:
            self.switches += 1
            self._enter("plain", self.backoff)
            self.backoff = min(self.backoff * 2, s.max_backoff)

    def _enter(self, mode: str, steps: int) -> None:
        self._skip = mode == "spec" and self.mode != "spec"
        self.mode, self.left = mode, steps + self._skip


class AdaptivePolicy:
    """Trees cut to the tokens/s-optimal size, with a guard that falls back to plain decoding."""

    name = "adaptive"

    def __init__(self, verify_cost: VerifyCost | None = None, guard: SpeedGuard | None = None,
                 cut: bool = True):
        self.verify_cost = verify_cost
        self.online = OnlineVerifyCost()
        self.guard = guard
        self.cut_trees = cut
        self.scale = 1.0  # realised accepted / predicted confidence sum, running
        self._pred, self._real = 1.0, 1.0  # prior: confidences taken at face value

    def speculate(self) -> bool:
        return self.guard is None or self.guard.speculate()

    def cost(self) -> VerifyCost | None:
        """This run's own measurements once they span two tree sizes, else the profile's."""
        return self.online if self.online.ready else self.verify_cost

    def cut(self, tree: DraftTree, draft_s: float) -> DraftTree:
        cost = self.cost()
        if not self.cut_trees or cost is None or tree.size == 0:
            return tree
        return tree.top(best_tree_size(tree.scores.exp(), cost, draft_s, self.scale))

    def observe(self, verify_tokens: int, accepted: int, committed: int, predicted: float,
                verify_s: float, step_s: float) -> None:
        self.online.add(verify_tokens, verify_s)
        self.observe_acceptance(verify_tokens, accepted, predicted)
        if self.guard is not None:
            self.guard.observe(committed, step_s)

    def observe_acceptance(self, verify_tokens: int, accepted: int, predicted: float) -> None:
        """Calibrate the confidences against what was accepted (batched steps too)."""
        if verify_tokens > 1:
            self._pred = 0.95 * self._pred + predicted
            self._real = 0.95 * self._real + accepted
            self.scale = min(max(self._real / max(self._pred, 1e-6), 0.05), 2.0)


POLICIES = ("adaptive", "fixed")


def make_policy(mode: str = "adaptive", profile=None) -> FixedPolicy | AdaptivePolicy:
    """A fresh policy per engine. `profile` (taps_ray.speed.CostProfile of this machine, or None)
    gives the adaptive policy its first Tv(n) and plain-speed estimates before it has measured
    its own."""
    if mode == "fixed":
        return FixedPolicy()
    if mode != "adaptive":
        raise TapsError(f"speed policy '{mode}' is unknown; use one of {', '.join(POLICIES)}")
    if profile is None:
        return AdaptivePolicy(None, SpeedGuard())
    return AdaptivePolicy(profile.tv, SpeedGuard(plain_rate=1.0 / profile.t1_s))
