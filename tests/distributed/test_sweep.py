"""Ray Tune sweeps on a 2-node cluster: the real pipeline end to end (smoke sizes, default
target), and resume after a crashed trial and an interrupted driver (tiny target)."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pandas as pd
import pytest
import yaml
from ray import tune

from taps_ray.cli import main
from taps_ray.config.loader import from_dict
from taps_ray.config.schema import ExperimentConfig, TrainingConfig, TreeConfig
from taps_ray.data.paths import data_root
from taps_ray.distributed.sweep import SearchSpace, SweepConfig, run_sweep
from taps_ray.models.drafter import load_drafter
from taps_ray.serving.config import BestConfig
from tests.distributed.tiny_trials import tiny_trial


@pytest.mark.skipif(data_root() is None, reason="shared/data (offline datasets) is not present")
def test_smoke_sweep_trains_reports_and_picks_specialists(ray_cluster, tmp_path, capsys):
    args = ["sweep", "experiments/sweep_mixture.yaml", "base.evaluation.max_new_tokens=8",
            "base.evaluation.benchmarks=[gsm8k,mt_bench]", "--smoke-test",
            "--storage-path", str(tmp_path)]
    assert main(args) == 0
    out = tmp_path / "mixture-smoke"
    table = pd.read_parquet(out / "sweep_table.parquet")
    assert sorted(table["math_fraction"]) == [0.0, 1.0]  # smoke: first and last fraction
    assert set(table["drafter"]) == {"chat-eagle2", "math-eagle2"}
    assert (table["status"] == "ok").all() and table["mean_tau"].ge(1).all()
    assert (out / "sweep_table.md").read_text().count("\n") == 2 + len(table)
    assert (out / "tau_vs_math_fraction.png").stat().st_size > 1000
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["metric"] == "mean_tau" and best["value"] == pytest.approx(table["mean_tau"].max(),
                                                                           abs=1e-4)
    assert best["strategy"] == "route-confidence"  # a math-heavy and a chat-heavy drafter
    served = from_dict(BestConfig, {k: v for k, v in best.items() if k not in ("metric", "value")})
    assert served.tree == TreeConfig(total_tokens=20, depth=3, top_k=5)
    from taps_ray.models.target import load_target

    target = load_target()
    names = {load_drafter(path, target).meta.name for path in served.drafters}
    assert names == {"chat-eagle2", "math-eagle2"}
    assert "best mean_tau" in capsys.readouterr().out


class InterruptAfterFirstTrial(tune.Callback):
    """Ctrl+C for Tune (SIGUSR1) once the first trial has finished: the driver saves the
    experiment state and stops, as when a user interrupts a sweep."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGUSR1)


def test_resume_keeps_finished_trials_and_restarts_crashed_ones(ray_cluster, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "crash-once").touch()
    base = ExperimentConfig(training=TrainingConfig(epochs=2, batch_size=4, lr=3e-3),
                            tree=TreeConfig(total_tokens=8, depth=3, top_k=3),
                            output_dir=str(shared))
    base.evaluation.benchmarks = ["gsm8k"]
    cfg = SweepConfig(name="tiny", base=base, space=SearchSpace(lr=[3e-3, 1e-2]),
                      max_concurrent_trials=1, storage_path=str(tmp_path / "store"))
    first = run_sweep(cfg, trainable=tiny_trial,
                      callbacks=[InterruptAfterFirstTrial(str(shared / "interrupted"))])
    done = first.table[first.table["epochs_done"] == 2]
    assert len(done) == 1  # interrupted right after the first trial finished
    finished = done["trial_id"].iloc[0]

    out = run_sweep(cfg, trainable=tiny_trial, resume=True)
    starts = [line.split() for line in (shared / "starts.log").read_text().splitlines()]
    per_trial = Counter(trial for trial, _ in starts)
    # The finished trial ran once and crashed once: started fresh, then from its checkpoint.
    assert [r for t, r in starts if t == finished] == ["0", "1"]
    assert per_trial[finished] == 2 and len(per_trial) == 2
    assert len(out.table) == 2 and (out.table["epochs_done"] == 2).all()
    assert (out.table["status"] == "ok").all()
    assert out.best["strategy"] == "single" and len(out.best["drafters"]) == 1
