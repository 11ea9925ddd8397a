"""Benchmark matrix: labels, planning, exact row counts and resume on the default target."""

from __future__ import annotations

import json

import pytest

from taps_ray.cli import main
from taps_ray.config import BenchConfig
from taps_ray.errors import TapsError
from taps_ray.evaluation.bench import candidates_for, plan_units
from taps_ray.evaluation.results import read_rows

METHODS = {"math-eagle2": "eagle2", "chat-eagle2": "eagle2"}
NAMES = list(METHODS)


def test_labels_expand_to_candidates():
    cands = candidates_for(["single", "merged/matched", "route-entropy/prompt", "average@0.25",
                            "bandit"], NAMES, METHODS)
    assert [c.label for c in cands] == ["math-eagle2", "chat-eagle2", "merged/matched",
                                        "route-entropy/prompt", "average@0.25", "bandit"]
    assert cands[2].options == {"budget": "matched"} and cands[2].budget_mode == "matched"
    assert cands[3].options == {"granularity": "prompt"}
    assert cands[4].options == {"weights": [0.25, 0.75]}
    assert all(c.method == "eagle2" for c in cands)


@pytest.mark.parametrize(
    ("label", "match"),
    [("merged/", "malformed"), ("bandit/step", "suffix"), ("average@2", r"\[0, 1\]"),
     ("merged@0.5", "average")],
)
def test_bad_labels_are_user_errors(label, match):
    with pytest.raises(TapsError, match=match):
        candidates_for([label], NAMES, METHODS)


def test_combining_one_drafter_is_a_user_error():
    with pytest.raises(TapsError, match="2 or more"):
        candidates_for(["merged/sum"], NAMES[:1], METHODS)


def test_plan_has_one_unit_per_set_mode_temperature_benchmark():
    cfg = BenchConfig(drafter_sets={"a": ["x"], "b": ["y"]}, benchmarks=["gsm8k", "svamp"],
                      live_temperatures=[0.0, 1.0])
    units = plan_units(cfg)
    assert len(units) == 2 * 2 * (1 + 2)
    assert len({u.key for u in units}) == len(units)


def test_bench_cli_writes_exact_rows_and_resumes(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["bench", "experiments/bench_smoke.yaml", f"results_dir={out}",
            "benchmarks=[gsm8k]", "max_new_tokens=6", "replay_prompts_per_benchmark=2",
            "live_prompts_per_benchmark=1", "live_temperatures=[1.0]",
            "strategies=[single,merged/matched,route-confidence/prompt]", "run_id=smoke", "--json"]
    assert main(args) == 0
    tables = json.loads(capsys.readouterr().out)
    assert set(tables) == {"T=0 replay", "T=1 live"}
    rows = read_rows([str(out)])
    labels = ["untrained0-eagle2", "untrained1-eagle2", "merged/matched (untrained)",
              "route-confidence/prompt (untrained)"]
    # replay: 4 labels x 2 prompts; live: (4 labels + plain) x 1 prompt
    assert len(rows) == 4 * 2 + 5
    assert set(rows["strategy"]) == {*labels, "plain"}
    assert not rows.duplicated(["strategy", "mode", "prompt_id", "turn"]).any()
    files = sorted(p.name for p in out.rglob("*.parquet"))
    assert main(args) == 0  # resume: every unit is finished, nothing reruns
    assert sorted(p.name for p in out.rglob("*.parquet")) == files
    assert len(read_rows([str(out)])) == len(rows)
    capsys.readouterr()
    # the named run again with another drafter set under the old name: refused, nothing written
    assert main([*args, "drafter_sets={untrained: [untrained]}", "strategies=[single]"]) != 0
    err = capsys.readouterr().err
    assert "drafter set 'untrained' of run" in err and "was ['untrained', 'untrained'] when " \
        "its rows were written and is ['untrained'] now" in err
    assert len(read_rows([str(out)])) == len(rows)
    # with this machine's cost profile the replay rows are ranked by predicted tokens/s
    assert main([*args, "--profile", str(hand_profile(tmp_path, ["untrained0-eagle2",
                                                                 "untrained1-eagle2"]))]) == 0
    ranked = json.loads(capsys.readouterr().out)["predicted_speed"]
    assert set(ranked) == {f"{label} @ 20-3-6" for label in labels}
    speedups = [v["predicted speedup"] for v in ranked.values()]
    assert speedups == sorted(speedups, reverse=True) and all(s > 0 for s in speedups)


def hand_profile(folder, drafters: list[str]):
    """A profile keyed to this machine and the default target (T1 40 ms, Tv 40 + 2n ms)."""
    import torch

    from taps_ray.speed.profile import CostProfile, current_key, save_profile

    key = current_key("smollm2-135m-instruct", torch.float32, torch.device("cpu"))
    rounds = {d: {1: 0.002, 6: 0.004} for d in drafters}
    profile = CostProfile(key, 0.04, {256: {1: 0.042, 64: 0.168}}, rounds,
                          {"step": 0.001, "merge": 0.0001, "route": 0.0001}, "now", "test")
    path = folder / "profile.json"
    save_profile(profile, path)
    return path
