"""Speed policies for tests whose choices must not depend on how fast the machine runs (CI
shares two cores with other jobs): costs come from the test, never from measured times."""

from __future__ import annotations

from taps_ray.decoding.adaptive import AdaptivePolicy, GuardSettings, SpeedGuard, VerifyCost
from taps_ray.decoding.tree import DraftTree

DRAFT_S = 0.002  # the draft time every cut assumes


class LosingGuard(SpeedGuard):
    """Plain decoding always measures faster: speculation goes off after every 2-step window
    and is probed again after 2 plain steps."""

    def __init__(self):
        super().__init__(GuardSettings(window=2, plain_probe=1, backoff=2, max_backoff=2),
                         plain_rate=1e9)

    def observe(self, committed: int, seconds: float) -> None:
        super().observe(committed, seconds)
        self.plain_rate = 1e9


class SteadyCostPolicy(AdaptivePolicy):
    """Cuts trees with the given verify cost and a fixed draft time: the online fit of measured
    verify times, and measured draft times, would make the cuts depend on the machine's load."""

    def cost(self) -> VerifyCost | None:
        return self.verify_cost

    def cut(self, tree: DraftTree, draft_s: float) -> DraftTree:
        return super().cut(tree, DRAFT_S)
