"""Wall time of a smoke sweep on Ray Tune against the same trials run one after another without
Ray, on one machine, in one run.

    python benchmarks/sweep_overhead.py experiments/sweep_mixture.yaml [--json out.json]

Both sides train the trials of `taps-ray sweep CONFIG --smoke-test` (same configs, same epoch
hooks: replay tau after each epoch) from the same warm feature and continuation caches, which are
built first and not timed. The Ray side includes starting Ray, Tune's bookkeeping, checkpoint
reporting and the sweep's outputs (table, plot, best configuration); it runs as many trials at
once as `resources_per_trial` allows, the sequential side gives each trial every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace

import torch

from taps_ray.distributed.sweep import (
    data_specs,
    grid_params,
    load_sweep_config,
    run_sweep,
    smoke_config,
    trial_config,
)


def main() -> None:
    args = parse_args()
    cfg = smoke_config(load_sweep_config(args.config))
    trials = grid_params(cfg.space)
    warm_caches(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for k, params in enumerate(trials):
            run_plain_trial(trial_config(cfg.base, params), f"{tmp}/seq/{k}")
        sequential = time.perf_counter() - start

        import ray

        cfg_ray = replace(cfg, storage_path=f"{tmp}/ray", name="overhead")
        start = time.perf_counter()
        out = run_sweep(cfg_ray)
        ray.shutdown()
        on_ray = time.perf_counter() - start
        ok = int((out.table["status"] == "ok").sum())
    result = {
        "config": args.config, "trials": len(trials), "trials_ok_on_ray": ok,
        "sequential_s": round(sequential, 1), "ray_tune_s": round(on_ray, 1),
        "ray_over_sequential": round(on_ray / sequential, 3),
        "resources_per_trial": dict(cfg.resources_per_trial),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
    }
    print(f"| trials | sequential, no Ray | Ray Tune sweep | ratio |\n| --- | --- | --- | --- |\n"
          f"| {len(trials)} | {sequential:.1f} s | {on_ray:.1f} s | "
          f"{on_ray / sequential:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result))


def warm_caches(cfg) -> None:
    from taps_ray.evaluation.runner import replay_prompts
    from taps_ray.models.target import load_target
    from taps_ray.training.pipeline import prepare_features

    target = load_target(cfg.base.target.name)
    replay_prompts(target, cfg.base.evaluation, progress=False)
    for spec in data_specs(cfg):
        prepare_features(target, spec.data, spec.training.feature_dtype, progress=False)


def run_plain_trial(cfg, out: str) -> None:
    """One trial as the sweep trains it, without Ray: its own target load, training, replay tau
    after each epoch."""
    from taps_ray.distributed.trial import replay_taus
    from taps_ray.evaluation.runner import replay_prompts
    from taps_ray.models.target import load_target
    from taps_ray.training.pipeline import train_from_config

    target = load_target(cfg.target.name)
    prompts = replay_prompts(target, cfg.evaluation, progress=False)
    train_from_config(cfg, target=target, out_dir=out, progress=False,
                      on_epoch_end=lambda epoch, d: replay_taus(target, d, cfg.tree, prompts))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="sweep YAML (its --smoke-test sizes are used)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    return parser.parse_args()


if __name__ == "__main__":
    main()
