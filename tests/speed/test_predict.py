"""Predicted speed from a hand-made profile: every number checked by hand."""

from __future__ import annotations

import pytest

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.speed.predict import (
    SpeedCandidate,
    draft_seconds,
    plain_tokens_per_s,
    predicted_tokens_per_s,
    rank_by_speed,
    step_seconds,
)

TREE = TreeConfig(60, 5, 10)
DRAFT_A, DRAFT_B = 0.002 + 5 * 0.004, 0.004 + 5 * 0.008
TV8 = 0.07  # at the reference kv 200, halfway between 0.06 (kv 100) and 0.08 (kv 300)


def test_plain(profile):
    assert plain_tokens_per_s(profile) == pytest.approx(20.0)


def test_single_step_and_tokens_per_s(profile):
    # draft + Tv(8) + 2 extra LM-head rows (tau 3) + step bookkeeping
    expected = DRAFT_A + TV8 + 2 * 0.003 + 0.001
    assert step_seconds(profile, ["a"], "single", TREE, 8, tau=3) == pytest.approx(expected)
    assert predicted_tokens_per_s(profile, 3.0, ["a"], "single", TREE, 8) == pytest.approx(
        3 / expected)
    assert 3 / expected == pytest.approx(30.303, abs=1e-3)  # 3 tokens / 0.099 s


@pytest.mark.parametrize("strategy, drafting, extra", [
    ("merged/sum", DRAFT_A + DRAFT_B, 2 * 0.002),
    ("merged/matched", DRAFT_A + DRAFT_B, 2 * 0.002),
    ("route-confidence/step", DRAFT_A + DRAFT_B, 2 * 0.001),
    ("route-entropy", DRAFT_A + DRAFT_B, 2 * 0.001),  # granularity defaults to step
    ("route-confidence/prompt", (DRAFT_A + DRAFT_B) / 2, 0.0),
    ("bandit", (DRAFT_A + DRAFT_B) / 2, 0.0),
    ("average@0.25", (DRAFT_A + DRAFT_B) / 2, 0.0),
])
def test_who_drafts_and_overheads(profile, strategy, drafting, extra):
    assert draft_seconds(profile, ["a", "b"], strategy, TREE) == pytest.approx(drafting)
    step = step_seconds(profile, ["a", "b"], strategy, TREE, 8)
    assert step == pytest.approx(drafting + TV8 + extra + 0.001)


def test_prompt_lookup_costs_its_call_only(profile):
    step = step_seconds(profile, ["prompt-lookup"], "single", TREE, 8)
    assert step == pytest.approx(0.0005 + TV8 + 0.001)


def test_rank_includes_plain_and_sorts(profile):
    slow = SpeedCandidate("slow", ("a",), "single", TREE, 8, 1.0)
    fast = SpeedCandidate("fast", ("a",), "single", TREE, 8, 3.0)
    ranked = rank_by_speed(profile, [slow, fast])
    assert [label for label, _ in ranked] == ["fast", "plain", "slow"]
    assert ranked[1][1] == pytest.approx(20.0)


@pytest.mark.parametrize("call, message", [
    (lambda p: rank_by_speed(p, []), "no candidate configurations"),
    (lambda p: step_seconds(p, [], "single", TREE, 8), "at least one drafter"),
    (lambda p: step_seconds(p, ["a"], "speculate", TREE, 8), "unknown strategy 'speculate'"),
    (lambda p: step_seconds(p, ["a"], "merged/half", TREE, 8), "takes /sum or /matched"),
    (lambda p: step_seconds(p, ["a"], "single", TREE, 0), "verify_tokens must be >= 1"),
    (lambda p: predicted_tokens_per_s(p, 0.5, ["a"], "single", TREE, 8), "tau must be >= 1"),
])
def test_bad_input_is_one_sentence(profile, call, message):
    with pytest.raises(TapsError, match=message):
        call(profile)
