"""The benchmark matrix on a pool of workers spread over 2 nodes: exact row counts, no duplicate
rows, and still exact after a worker is killed mid-run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray

from taps_ray.cli import main
from taps_ray.config.schema import BenchConfig, TreeConfig
from taps_ray.data.paths import data_root
from taps_ray.distributed.bench import run_units
from taps_ray.evaluation.bench import plan_units, run_id_for
from taps_ray.evaluation.report import KEY
from taps_ray.evaluation.results import read_rows

pytestmark = pytest.mark.skipif(data_root() is None, reason="shared/data is not present")
BENCHMARKS = ["gsm8k", "svamp"]
SETTINGS = ["tree.total_tokens=10", "tree.depth=3", "tree.top_k=4", "max_new_tokens=8",
            "benchmarks=[gsm8k,svamp]", "strategies=[single,merged/sum]",
            "replay_prompts_per_benchmark=1", "live_prompts_per_benchmark=1",
            "live_temperatures=[0.0]", "drafter_sets={u: [untrained, untrained]}"]


def expected_rows(benchmarks: int) -> int:
    """Per benchmark: replay 2 singles + merged; live the same + the plain baseline (1 turn)."""
    return benchmarks * (3 + 4)


def bench_config(results: Path) -> BenchConfig:
    from taps_ray.config.loader import load_config

    return load_config(BenchConfig, "experiments/bench_smoke.yaml",
                       [*SETTINGS, f"results_dir={results}"])


def test_ray_bench_writes_each_row_once(ray_cluster, tmp_path, capsys):
    args = ["bench", "experiments/bench_smoke.yaml", *SETTINGS, f"results_dir={tmp_path}",
            "--ray", "--workers", "2", "--json"]
    assert main(args) == 0
    cfg = bench_config(tmp_path)
    assert len(plan_units(cfg)) == 4
    rows = read_rows([str(tmp_path / run_id_for(cfg))])
    assert len(rows) == expected_rows(len(BENCHMARKS))
    assert not rows.duplicated([*KEY, "mode"]).any()
    tables = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(tables) == {"T=0 live", "T=0 replay"}
    # A rerun finds every unit's file and does nothing.
    assert run_units(cfg, run_id_for(cfg), workers=2, progress=False).units == 0


def test_killed_worker_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    cfg = bench_config(tmp_path)
    cfg.tree = TreeConfig(total_tokens=12, depth=3, top_k=4)  # another run id than the test above
    run_id = run_id_for(cfg)
    folder = tmp_path / run_id

    def kill_when_first_unit_lands() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(folder.glob("*.parquet")):
            time.sleep(0.2)
        ray.kill(ray.get_actor(f"taps-bench-{run_id}-0"), no_restart=False)  # Ray restarts it

    killer = threading.Thread(target=kill_when_first_unit_lands, daemon=True)
    killer.start()
    summary = run_units(cfg, run_id, workers=2, progress=False)
    killer.join(timeout=5)
    assert len(summary.nodes) == 2  # one worker per node
    assert summary.retries >= 1 and summary.units == 4
    rows = read_rows([str(folder)])
    assert len(rows) == summary.rows == expected_rows(len(BENCHMARKS))
    assert not rows.duplicated([*KEY, "mode"]).any()
