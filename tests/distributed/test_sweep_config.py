"""The sweep's config and pure helpers (no Ray): strict loading, trial configs, distinct data
specs, smoke sizes, and which trials become the best configuration."""

from __future__ import annotations

import pandas as pd
import pytest

from taps_ray.cli import main
from taps_ray.config.schema import ExperimentConfig
from taps_ray.distributed.outputs import choose_trials, table_markdown
from taps_ray.distributed.sweep import (
    SweepConfig,
    data_specs,
    drafter_name_for,
    load_sweep_config,
    mixture_for,
    smoke_config,
    trial_config,
)
from taps_ray.errors import TapsError


@pytest.mark.parametrize("path", ["experiments/sweep_mixture.yaml",
                                  "experiments/sweep_paper.yaml"])
def test_committed_sweeps_load(path):
    cfg = load_sweep_config(path)
    assert cfg.space.math_fraction == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(data_specs(cfg)) == 5  # one feature cache per fraction, shared by methods


def test_paper_sweep_uses_one_gpu_per_trial():
    cfg = load_sweep_config("experiments/sweep_paper.yaml")
    assert cfg.resources_per_trial["GPU"] == 1 and cfg.space.method == ["hass", "eagle2"]
    assert cfg.base.target.name == "meta-llama/Meta-Llama-3-8B-Instruct"


@pytest.mark.parametrize(("override", "match"), [
    ("space.fraction=[1]", "unknown config key 'space.fraction'"),
    ("metric=tau_foo", "metric 'tau_foo'"),
    ("space.lr={normal: [1, 2]}", "loguniform"),
    ("space.lr={loguniform: [0, 1]}", "0 < low < high"),
    ("space.math_fraction=[1.5]", r"\[0, 1\]"),
    ("space.method=[medusa]", "eagle2, hass"),
    ("scheduler=hyperband", "none, asha"),
])
def test_bad_sweep_configs_are_user_errors(override, match):
    with pytest.raises(TapsError, match=match):
        load_sweep_config("experiments/sweep_mixture.yaml", [override])


def test_lr_distribution_yaml_strings_become_floats():
    cfg = load_sweep_config(None, ["space.lr={loguniform: [1e-5, 1e-3]}"])
    assert cfg.space.lr == {"loguniform": [1e-5, 1e-3]}
    assert cfg.space.swept() == ["lr"]


@pytest.mark.parametrize(("fraction", "mixture", "name"), [
    (1.0, "math=1.0", "math-eagle2"), (0.0, "chat=1.0", "chat-eagle2"),
    (0.75, "math=0.75,chat=0.25", "math75-eagle2"), (0.25, "math=0.25,chat=0.75", "chat75-eagle2"),
    (0.5, "math=0.5,chat=0.5", "mix50-eagle2"),
])
def test_math_fraction_sets_mixture_and_name(fraction, mixture, name):
    assert mixture_for(fraction) == mixture and drafter_name_for(fraction, "eagle2") == name
    cfg = trial_config(ExperimentConfig(), {"math_fraction": fraction, "lr": 1e-3, "total": 64})
    assert (cfg.data.mixture, cfg.drafter.name) == (mixture, name)
    assert cfg.training.lr == 1e-3 and cfg.data.total == 64


def test_distinct_data_specs_cross_fractions_and_totals():
    cfg = load_sweep_config(None, ["space.math_fraction=[0, 1]", "space.total=[8, 16]",
                                   "space.method=[eagle2, hass]"])
    assert {(s.data.mixture, s.data.total) for s in data_specs(cfg)} == {
        ("chat=1.0", 8), ("chat=1.0", 16), ("math=1.0", 8), ("math=1.0", 16)}
    assert len(data_specs(cfg)) == 4  # EAGLE-2 and HASS share one cache per mixture and total


def test_eagle3_trials_get_their_own_feature_caches():
    cfg = load_sweep_config(None, ["space.math_fraction=[0, 1]",
                                   "space.method=[eagle2, hass, eagle3]"])
    specs = data_specs(cfg)
    assert sorted((s.data.mixture, s.drafter.method == "eagle3") for s in specs) == [
        ("chat=1.0", False), ("chat=1.0", True), ("math=1.0", False), ("math=1.0", True)]


def test_smoke_keeps_grid_ends_and_tiny_sizes():
    cfg = smoke_config(load_sweep_config("experiments/sweep_paper.yaml"))
    assert cfg.name == "paper-llama3-8b-smoke" and cfg.space.math_fraction == [0.0, 1.0]
    assert cfg.base.data.total == 8 and cfg.base.training.max_steps == 2
    assert cfg.base.evaluation.prompts_per_benchmark == 2 and cfg.base.tree.depth == 3


def table(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"status": ["ok"] * n, "checkpoint": ["/c"] * n}
    return pd.DataFrame({**base, **columns})


def test_best_config_adds_the_best_math_and_chat_heavy_specialists():
    rows = table(trial_id=list("abcd"), math_fraction=[0.5, 0.75, 1.0, 0.0],
                 drafter=["mix50", "math75", "math", "chat"], mean_tau=[3.0, 2.9, 2.8, 2.0],
                 tau_gsm8k=[3.0, 2.9, 3.5, 1.0], tau_mt_bench=[3.0, 2.9, 2.1, 3.9])
    cfg = SweepConfig()
    chosen = choose_trials(rows, cfg)
    assert [r["trial_id"] for r in chosen] == ["a", "c", "d"]  # best, math-heavy, chat-heavy
    assert "| trial_id |" in table_markdown(rows)


def test_errored_and_unreported_trials_are_never_chosen():
    rows = table(trial_id=["a", "b"], drafter=["x", "y"], mean_tau=[None, 2.0])
    rows.loc[1, "status"] = "error"
    assert choose_trials(rows, SweepConfig()) == []


def test_resume_without_a_sweep_is_a_user_error(tmp_path, capsys):
    args = ["sweep", "experiments/sweep_mixture.yaml", "--resume", "--storage-path", str(tmp_path)]
    assert main(args) == 2
    assert "no sweep to resume" in capsys.readouterr().err
