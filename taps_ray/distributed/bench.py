"""The benchmark matrix on a Ray cluster (`taps-ray bench CONFIG --ray`).

A pool of `BenchWorker` actors, spread over the nodes by resources (one GPU each when the
cluster has GPUs, else one CPU), each loading the target once and caching the drafter sets it
has used. The driver keeps a queue of the units whose exact-named result file does not exist
yet and hands one unit to each idle worker. Workers write their own files to
`cfg.results_dir` (shared storage on a multi-node cluster: a shared mount or s3://...).
A worker that dies is restarted by Ray (`max_restarts`) and its unit goes back in the queue
(resubmitted by the driver, so retries are counted and bounded per unit); the rerun replaces
the unit's own file, so no row is lost or duplicated.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from taps_ray.config.loader import from_dict, to_dict
from taps_ray.config.schema import BenchConfig
from taps_ray.distributed.runtime import connect, get, set_torch_threads
from taps_ray.errors import TapsError
from taps_ray.evaluation.bench import (
    BenchUnit,
    load_drafter_set,
    run_id_for,
    run_unit,
    unfinished_units,
    write_unit,
)

MAX_RESTARTS = 3  # per worker: Ray restarts a dead worker this often before it is dropped
MAX_ATTEMPTS = 3  # per unit: a unit that kills this many workers is an error, not bad luck


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0)
class BenchWorker:
    """Runs work units against one loaded target; writes each unit's file itself."""

    def __init__(self, cfg: dict, torch_threads: int = 0):
        from taps_ray.models.target import load_target

        set_torch_threads(torch_threads)
        self.cfg = from_dict(BenchConfig, cfg)
        target = self.cfg.target
        self.target = load_target(target.name, target.device, target.dtype)
        self.sets: dict[str, dict] = {}  # drafter set name -> {drafter name: drafter}

    def run(self, unit: BenchUnit, run_id: str) -> int:
        """Rows written for `unit` (its file replaces any earlier attempt's)."""
        if unit.drafter_set not in self.sets:
            self.sets[unit.drafter_set] = load_drafter_set(self.cfg, unit.drafter_set,
                                                           self.target)
        rows, diags = run_unit(unit, self.cfg, self.target, self.sets[unit.drafter_set], run_id,
                               progress=False)
        write_unit(self.cfg, unit, run_id, rows, diags)
        return len(rows)

    @ray.method(max_task_retries=-1)  # waits while Ray restarts a dead worker
    def ready(self) -> bool:
        return True

    def where(self) -> tuple[str, int]:
        """(Ray node id, process id): tests and logs check the placement with it."""
        return ray.get_runtime_context().get_node_id(), os.getpid()


@dataclass
class PoolSummary:
    rows: int = 0  # rows written by this run
    units: int = 0  # units finished by this run
    retries: int = 0  # units resubmitted after their worker died
    nodes: set[str] = field(default_factory=set)  # Ray nodes the workers started on


def run_bench_ray(cfg: BenchConfig, address: str | None, workers: int) -> tuple[str, int]:
    """Run every unfinished unit on a pool of workers; returns (run_id, rows written)."""
    connect(address)
    run_id = run_id_for(cfg)
    summary = run_units(cfg, run_id, workers)
    print(f"bench: {summary.units} units, {summary.rows} rows on {len(summary.nodes)} node(s), "
          f"{summary.retries} unit(s) retried after a worker died")
    return run_id, summary.rows


def run_units(cfg: BenchConfig, run_id: str, workers: int = 0, progress: bool = True,
              worker_options: dict | None = None, torch_threads: int = 0) -> PoolSummary:
    """The pool loop. `worker_options`: Ray actor options of each worker (default: one GPU
    per worker on a GPU cluster, else one CPU); `workers` 0: one per such slot."""
    from tqdm import tqdm

    units = deque(unfinished_units(cfg, run_id))
    summary = PoolSummary()
    if not units:
        return summary
    options = worker_options or _default_worker_options()
    count = min(len(units), workers or _slots(options))
    pool = [BenchWorker.options(name=f"taps-bench-{run_id}-{i}", scheduling_strategy="SPREAD",
                                **options).remote(to_dict(cfg), torch_threads)
            for i in range(count)]
    summary.nodes = {node for node, _ in ray.get([w.where.remote() for w in pool])}
    try:
        with tqdm(total=len(units), desc="bench units", unit="unit", disable=not progress) as bar:
            _drain(units, pool, run_id, summary, bar)
    finally:
        for worker in pool:
            ray.kill(worker, no_restart=True)
    return summary


def _drain(units: deque, pool: list, run_id: str, summary: PoolSummary, bar) -> None:
    """Hand units to idle workers until every unit has its file.

    A worker that dies mid-unit puts the unit back in the queue and is pinged (`ready`, which
    waits out Ray's restart); it takes units again once the ping answers, and leaves the pool
    when it cannot be restarted any more.
    """
    idle, pending = list(pool), {}  # pending: ref -> (unit, worker); unit None = a ping
    attempts: Counter = Counter()
    while units or any(unit for unit, _ in pending.values()):
        while units and idle:
            worker, unit = idle.pop(), units.popleft()
            pending[worker.run.remote(unit, run_id)] = (unit, worker)
        if not pending:
            raise TapsError("every bench worker died and none could be restarted; see the Ray "
                            "logs (out of memory?)")
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        unit, worker = pending.pop(ref)
        try:
            result = get(ref)
        except RayActorError:
            if unit is None:
                continue  # restarts used up: the worker leaves the pool
            _requeue(unit, units, attempts, summary)
            pending[worker.ready.remote()] = (None, worker)
            continue
        if unit is not None:
            summary.rows += result
            summary.units += 1
            bar.update(1)
        idle.append(worker)


def _requeue(unit: BenchUnit, units: deque, attempts: Counter, summary: PoolSummary) -> None:
    attempts[unit] += 1
    if attempts[unit] >= MAX_ATTEMPTS:
        raise TapsError(f"bench unit '{unit.key}' killed its worker {MAX_ATTEMPTS} times; "
                        "see the Ray logs (out of memory?)")
    units.appendleft(unit)
    summary.retries += 1


def _default_worker_options() -> dict:
    return {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}


def _slots(options: dict) -> int:
    """How many workers with `options` the cluster holds at once."""
    total = ray.cluster_resources()
    needs = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0),
             **options.get("resources", {})}
    fits = [int(total.get(name, 0) // amount) for name, amount in needs.items() if amount]
    return max(1, min(fits, default=1))
