"""Choosing by speed: the tree grid, predicted ranking from a profile, and the live decision."""

from __future__ import annotations

import pandas as pd
import pytest

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.evaluation.speed_select import (
    Choice,
    chain,
    choose_fastest,
    engine_strategy,
    rank_predicted,
    tree_grid,
    tree_tag,
)
from tests.evaluation.test_report_speed import live, profile, replay


def test_the_grid_has_chains_small_trees_and_the_published_tree_once():
    grid = tree_grid()
    assert grid[:6] == [chain(d) for d in range(1, 7)]
    assert all(t.top_k == 1 and t.total_tokens == d for d, t in enumerate(grid[:6], 1))
    assert grid[-1] == TreeConfig(60, 5, 10) and len({tree_tag(t) for t in grid}) == len(grid)
    assert tree_grid(TreeConfig(8, 3, 2)) == grid[:-1]  # a run tree equal to a small one


def test_rank_predicted_by_hand():
    # profile: T1 50 ms (plain 20/s); Tv(n) = 45 + 5 n ms; draft round 2 ms (w1), 4 ms (w2);
    # step overhead 1 ms. Tree 8/2/2 -> draft 2 + 2 * 4 = 10 ms.
    # math-hass tau 3, 9 verify tokens: 10 + 90 + 1 + (3 - 1) * 0 = 101 ms -> 29.7/s = 1.485x
    # chat-hass tau 1.2: same time -> 11.9/s = 0.594x
    rows = [replay("math-hass", b, "p1", 3.0, steps=10, new_tokens=30,
                   verify_tokens_per_step=9.0, drafters=["math-hass"]) for b in ("gsm8k", "svamp")]
    rows += [replay("chat-hass", b, "p1", 1.2, steps=10, new_tokens=12,
                    verify_tokens_per_step=9.0, drafters=["chat-hass"]) for b in ("gsm8k", "svamp")]
    ranked = rank_predicted(pd.DataFrame([r.__dict__ for r in rows]), profile())
    assert [c.label for c in ranked] == ["math-hass", "chat-hass"]
    assert ranked[0].predicted_speedup == pytest.approx(3 / 0.101 / 20, rel=1e-3)
    assert ranked[1].predicted_speedup == pytest.approx(1.2 / 0.101 / 20, rel=1e-3)
    assert ranked[0].mean_tau == pytest.approx(3.0) and ranked[0].strategy == "single"
    assert ranked[0].tree == TreeConfig(8, 2, 2)
    live_only = pd.DataFrame([live("plain", "gsm8k", "p1", 10, 1.0).__dict__])
    with pytest.raises(TapsError, match="no replay rows"):
        rank_predicted(live_only, profile())


A = Choice("math-hass", ("math-hass",), "single", TreeConfig(4, 2, 2))
B = Choice("merged/sum (x)", ("math-hass", "prompt-lookup"), "merged/sum", chain(3))


def decided(speeds: dict[str, dict[str, float]]):
    """Live rows at the given tokens/s (10 tokens each) -> choose_fastest over A and B."""
    rows = [live(label, bench, "p1", 10, 10 / tps) for label, per in speeds.items()
            for bench, tps in per.items()]
    return choose_fastest([A, B], rows)


def test_the_fastest_live_choice_wins_when_it_beats_plain_everywhere():
    best, summary = decided({"plain": {"gsm8k": 20, "mt_bench": 20},
                             A.key: {"gsm8k": 30, "mt_bench": 21},
                             B.key: {"gsm8k": 40, "mt_bench": 19}})  # B is slower on mt_bench
    assert best == A and summary["live_speedup"][A.key] == pytest.approx(1.275)
    assert "fastest live" in summary["reason"]


def test_plain_decoding_is_served_when_nothing_beats_it_by_five_percent():
    best, summary = decided({"plain": {"gsm8k": 20}, A.key: {"gsm8k": 20.8},
                             B.key: {"gsm8k": 15}})
    assert best is None and "serving plain decoding" in summary["reason"]


def test_engine_strategy_reads_bench_labels():
    assert engine_strategy(A) == ("single", {})
    assert engine_strategy(B) == ("merged", {"budget": "sum"})


def test_labels_with_a_tree_read_as_their_configuration():
    from taps_ray.evaluation.speed_columns import base_label, strategy_name

    assert base_label(A.key) == "math-hass" and base_label(B.key) == "merged/sum"
    assert strategy_name(A.key, ["math-hass"]) == "single"
    assert strategy_name(B.key, ["math-hass", "prompt-lookup"]) == "merged/sum"


def test_a_sweep_trial_is_priced_as_a_calibrated_head():
    from taps_ray.evaluation.speed_select import predicted_speedup
    from taps_ray.training.epoch_eval import epoch_metrics

    rows = pd.DataFrame([replay("drafter", b, "p1", 3.0, steps=10, new_tokens=30,
                               verify_tokens_per_step=9.0, drafters=["drafter"]).__dict__
                         for b in ("gsm8k", "svamp")])
    # priced as math-hass (see test_rank_predicted_by_hand): 3 / 0.101 s / 20 per s
    assert predicted_speedup(rows, profile(), "math-hass") == pytest.approx(1.485, rel=1e-3)
    metrics = epoch_metrics(rows, (profile(), "math-hass"))
    assert metrics["mean"] == pytest.approx(3.0) and metrics["predicted_speedup"] == 1.4851
    assert "predicted_speedup" not in epoch_metrics(rows, None)
    with pytest.raises(TapsError, match="speed_cost_as 'nope'"):
        predicted_speedup(rows, profile(), "nope")


def test_a_sweep_ranks_by_predicted_speedup_only_with_a_profile():
    from taps_ray.distributed.sweep import SweepConfig

    with pytest.raises(ValueError, match="metric 'predicted_speedup' is not reported"):
        SweepConfig(metric="predicted_speedup")
    with pytest.raises(ValueError, match="go together"):
        SweepConfig(speed_profile="p.json")
    cfg = SweepConfig(metric="predicted_speedup", speed_profile="p.json", speed_cost_as="x")
    assert cfg.metric == "predicted_speedup"
