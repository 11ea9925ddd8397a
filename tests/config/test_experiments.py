"""Every committed experiment config is valid and follows the drafter naming rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from taps_ray.config import BenchConfig, ExperimentConfig, load_config

ALL = sorted((Path(__file__).parents[2] / "experiments").rglob("*.yaml"))
CONFIGS = [p for p in ALL if not p.name.startswith(("bench_", "sweep_", "study_"))]


@pytest.mark.parametrize("path", [p for p in ALL if p.name.startswith("bench_")],
                         ids=lambda p: p.name)
def test_bench_config_is_valid(path):
    cfg = load_config(BenchConfig, path)
    assert cfg.drafter_sets and cfg.strategies


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_experiment_config_is_valid(path):
    cfg = load_config(ExperimentConfig, path)
    assert cfg.drafter.name.startswith(("math", "chat", "mix"))
    assert cfg.drafter.name.endswith(f"-{cfg.drafter.method}")


def test_paper_configs_use_the_published_recipe():
    paper = [p for p in CONFIGS if "paper" in p.parts]
    assert len(paper) == 8
    for path in paper:
        cfg = load_config(ExperimentConfig, path)
        assert (cfg.training.epochs, cfg.training.lr, cfg.training.batch_size) == (20, 3e-5, 8)
        assert (cfg.tree.total_tokens, cfg.tree.depth, cfg.tree.top_k) == (60, 5, 10)
