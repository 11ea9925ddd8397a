"""`taps-ray quickstart --profile smoke` end to end on the default target (what CI runs first).

One module-scoped run is interrupted (Ctrl-C) in the middle of the benchmark stage, then rerun
to completion; the tests check what it left: every result row exactly once, the report, the
sweep and a best configuration the Serve app accepts. A third run must reuse everything.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import yaml

import taps_ray.evaluation.bench as bench_module
from taps_ray.cli import main
from taps_ray.evaluation.results import read_rows
from taps_ray.study.profiles import PROFILES, STRATEGIES

SMOKE = PROFILES["smoke"]
SETS = ("eagle2", "hass")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    calls = {"n": 0}
    real_run_unit = bench_module.run_unit

    def interrupted(*args, **kwargs):  # Ctrl-C while the third bench unit runs
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run_unit(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(bench_module, "run_unit", interrupted)
    try:
        first = main(["quickstart", "--profile", "smoke", "--out", str(out)])
    finally:
        mp.undo()
    best_after_interrupt = (out / "best_config.yaml").exists()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        second = main(["quickstart", "--profile", "smoke", "--out", str(out)])
    return out, (first, best_after_interrupt, second), printed.getvalue()


def test_ctrl_c_exits_130_and_rerun_completes(quickstart):
    _, (first, best_after_interrupt, second), printed = quickstart
    assert first == 130 and not best_after_interrupt
    assert second == 0
    assert "pooled tau, T=0 (replay)" in printed and "pooled tau, T=1 (live)" in printed
    for label in ("math-eagle2", "chat-hass", "mix-eagle2", "merged/sum (eagle2)",
                  "route-confidence/step (hass)", "bandit (hass)", "plain"):
        assert f"| {label} |" in printed


def test_every_row_exactly_once(quickstart):
    out = quickstart[0]
    rows = read_rows([str(out / "results")])
    key = ["run_id", "strategy", "benchmark", "prompt_id", "turn", "temperature"]
    assert not rows.duplicated(key).any()
    turns = SMOKE.replay_prompts * (2 + 1 + 1 + 1)  # MT-Bench has two turns
    replay = rows[rows["run_id"] == "replay-t0"]
    per_set = 2 + len(STRATEGIES) - 1  # `single` is one row per drafter
    assert len(replay) == len(SETS) * per_set * turns
    assert len(rows[rows["run_id"] == "replay-t0-mixed"]) == 2 * turns
    live = rows[rows["run_id"] == "live-t1"]
    live_rows = len(SMOKE.live_methods) * (len(SMOKE.live_strategies) + 1) + 1  # + plain
    assert len(live) == live_rows * SMOKE.live_prompts and set(live["temperature"]) == {1.0}
    speed = rows[rows["run_id"] == "speed-live-t0"]  # plain + the top predicted, interleaved
    assert len(speed) == (1 + SMOKE.speed_top) * len(SMOKE.benchmarks) * SMOKE.live_prompts
    assert set(speed["mode"]) == {"live"} and set(speed["temperature"]) == {0.0}


def test_report_sweep_and_best_config(quickstart):
    from taps_ray.serving.config import ServeConfig, resolve_config

    out = quickstart[0]
    report = out / "report"
    for name in ("tables.md", "tables.csv", "report.html"):
        assert (report / name).stat().st_size > 0
    assert list(report.glob("*.png"))
    assert "merged/matched (hass)" in (report / "tables.md").read_text()
    sweep = out / "sweep" / "mixture"
    assert (sweep / "sweep_table.md").exists() and (sweep / "best_config.yaml").exists()
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["metric"] == "live_speedup" and "profile" in best["reason"]
    # the choice is what the live rows say: the fastest if it beats plain, else plain
    rows = read_rows([str(out / "results" / "speed-live-t0")])
    speed = rows.groupby(["strategy", "benchmark"]).apply(
        lambda g: g["new_tokens"].sum() / g["wall_s"].sum(), include_groups=False).unstack()
    ratio = (speed.drop(index="plain") / speed.loc["plain"])
    eligible = ratio[ratio.min(axis=1) >= 1.0].mean(axis=1)
    if eligible.empty or eligible.max() < 1.05:
        assert best["strategy"] == "plain" and not best["drafters"]
    else:
        assert best["value"] == pytest.approx(eligible.max(), abs=1e-3)
        served = resolve_config(ServeConfig(best_config=str(out / "best_config.yaml")))
        assert served.drafters
        assert all(d.startswith(str(out / "drafters")) or d == "prompt-lookup"
                   for d in served.drafters)
    assert "At a glance" in (report / "tables.md").read_text()


def test_third_run_reuses_everything(quickstart, capsys):
    out = quickstart[0]
    before = sorted(p.name for p in (out / "results").rglob("*.parquet"))
    assert main(["quickstart", "--profile", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("trained already, reused") == 6
    assert printed.count(": 0 new rows") == 3 and "sweep finished already" in printed
    assert "cost profile reused" in printed and "live speed rows measured already" in printed
    assert sorted(p.name for p in (out / "results").rglob("*.parquet")) == before
