"""Speed policies: tokens/s-optimal tree cuts, the plain-decoding guard, and their losslessness."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.adaptive import (
    AdaptivePolicy,
    GuardSettings,
    OnlineVerifyCost,
    SpeedGuard,
    best_tree_size,
    empty_tree,
)
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.tree import DraftTree
from taps_ray.models.drafter import untrained_drafter
from tests.steady import LosingGuard, SteadyCostPolicy
from tests.tiny import tiny_target

GREEDY = SamplingParams()
TREE = TreeConfig(20, 3, 4)
SEED, PROMPT, NEW = 3, [7, 7, 7, 7], 60  # a tiny target whose greedy text repeats itself


# --- pure pieces ------------------------------------------------------------------------------


def test_best_tree_size_stops_where_a_node_gains_less_than_the_current_rate():
    conf = torch.tensor([0.1, 0.9, 0.5, 0.01])  # any order: ranked inside

    def cost(n: int) -> float:
        return 1.0 + 0.1 * n

    # k = 0: 1 / 1.1 = .909; k = 1: 1.9 / 1.2 = 1.583; k = 2: 2.4 / 1.3 = 1.846;
    # k = 3: 2.5 / 1.4 = 1.786; k = 4: 2.51 / 1.5 = 1.673
    assert best_tree_size(conf, cost, draft_s=0.0) == 2
    # drafting already cost a lot: a node's share of the step shrinks, so keep more (2.5 / 11.4
    # = .2193 beats 2.4 / 11.3 = .2124 and 2.51 / 11.5 = .2183)
    assert best_tree_size(conf, cost, draft_s=10.0) == 3
    # confidences known to be over-stated by 10x: speculation does not pay, verify nothing
    assert best_tree_size(conf, cost, draft_s=0.0, scale=0.1) == 0


def test_online_verify_cost_fits_a_line_and_waits_for_two_sizes():
    fit = OnlineVerifyCost()
    fit.add(1, 0.030)
    assert not fit.ready
    for n in (1, 8, 16, 8):
        fit.add(n, 0.030 + 0.002 * (n - 1))
    assert fit.ready
    assert fit(1) == pytest.approx(0.030) and fit(31) == pytest.approx(0.090)


def drive(guard: SpeedGuard, spec_rate: float, plain_rate: float, steps: int) -> list[bool]:
    """Feed `steps` steps at the given tokens/s (one token per plain step, 3 per spec step)."""
    modes = []
    for _ in range(steps):
        spec = guard.speculate()
        modes.append(spec)
        tokens = 3 if spec else 1
        guard.observe(tokens, tokens / (spec_rate if spec else plain_rate))
    return modes


def test_guard_keeps_speculation_that_measures_faster():
    guard = SpeedGuard(GuardSettings(window=4, plain_probe=2))
    modes = drive(guard, spec_rate=30.0, plain_rate=20.0, steps=40)
    # 1 unmeasured + 4 measured spec steps, 2 plain steps measure plain speed, then spec only
    assert modes[:7] == [True] * 5 + [False] * 2 and all(modes[7:])
    assert guard.switches == 0 and guard.plain_rate == pytest.approx(20.0)


def test_guard_falls_back_to_plain_and_backs_off_exponentially():
    guard = SpeedGuard(GuardSettings(window=2, plain_probe=1, backoff=2, max_backoff=8),
                       plain_rate=20.0)
    modes = drive(guard, spec_rate=10.0, plain_rate=20.0, steps=40)
    runs = _runs(modes)
    # probe (1 unmeasured + 2 measured), then plain 2, 4, 8, 8 ... between 3-step probes
    assert runs[:8] == [(True, 3), (False, 2), (True, 3), (False, 4), (True, 3), (False, 8),
                        (True, 3), (False, 8)]
    assert guard.switches >= 4


@pytest.mark.parametrize(("spec_rate", "stays_on"), [(18.5, True), (20.0, True), (17.5, False)])
def test_guard_tolerates_the_margin_and_falls_back_beyond_it(spec_rate, stays_on):
    guard = SpeedGuard(GuardSettings(window=2, margin=0.1), plain_rate=20.0)
    modes = drive(guard, spec_rate=spec_rate, plain_rate=20.0, steps=6)  # 7.5 % / 0 / 12.5 %
    assert modes[3] is stays_on


def _runs(modes: list[bool]) -> list[tuple[bool, int]]:
    runs: list[tuple[bool, int]] = []
    for m in modes:
        if runs and runs[-1][0] == m:
            runs[-1] = (m, runs[-1][1] + 1)
        else:
            runs.append((m, 1))
    return runs


def test_cut_keeps_a_connected_prefix_by_score():
    tree = DraftTree.make_dummy([-1, -1, 0, 0, 2], scores=[-0.1, -2.0, -0.3, -3.0, -0.5])
    policy = AdaptivePolicy(verify_cost=lambda n: 1.0 + 0.2 * n)
    cut = policy.cut(tree, draft_s=0.0)
    assert 0 < cut.size < tree.size
    assert cut.tokens.tolist() == [1, 3, 5][: cut.size]  # the sure chain, best first
    assert policy.cut(empty_tree(), 0.0).size == 0


# --- lossless decoding under the policy -------------------------------------------------------


def flipping_policy(cost=lambda n: 0.01 + 0.0005 * n) -> AdaptivePolicy:
    """Cuts trees and turns speculation off after every 2-step window, probing again after 2
    plain steps: both kinds of steps in every run, whatever the machine's load."""
    return SteadyCostPolicy(verify_cost=cost, guard=LosingGuard())


@pytest.mark.parametrize("with_eagle", [False, True], ids=["lookup", "merged-lookup-eagle"])
def test_greedy_output_equals_plain_decoding_across_cuts_and_fallbacks(with_eagle):
    target = tiny_target("llama", seed=SEED)
    reference = generate_plain(target, PROMPT, GREEDY, 2 * NEW, set()).tokens
    drafters = [PromptLookupDrafter()]
    if with_eagle:
        drafters.insert(0, untrained_drafter(target, seed=1))
    engine = SpeculativeEngine(target, drafters, TREE, "merged" if with_eagle else "single",
                               policy=flipping_policy())
    result = engine.generate(PROMPT, GREEDY, 2 * NEW, stop_token_ids=set())
    assert result.tokens == reference
    spec = [s for s in result.steps if s.speculative]
    plain = [s for s in result.steps if not s.speculative]
    assert len(plain) >= 4 and all(s.verify_tokens == 1 for s in plain)
    assert sum(s.accepted for s in spec) >= 15  # drafts were accepted, not only bonus tokens
    assert max(s.accepted for s in spec) >= 3
    # the cost model cut trees below what was drafted at least once
    assert min(s.verify_tokens for s in spec) < max(s.verify_tokens for s in spec)


# The law at T > 0 under cuts and plain fallback, over ~1,000 sampled tokens with accepted
# drafts: test_strategies.py (adaptive-cut, fallback-plain).
