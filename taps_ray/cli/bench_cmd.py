"""`taps-ray bench CONFIG [key=value ...] [--ray [--address ADDR]]`: the benchmark matrix."""

from __future__ import annotations

import argparse
import json
import sys

from taps_ray.errors import TapsError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="drafter sets x strategies x benchmarks x temperatures -> result rows"
    )
    bench.add_argument("config", help="bench YAML (see experiments/bench_*.yaml)")
    bench.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seed=1")
    bench.add_argument("--ray", action="store_true",
                       help="spread the work units over a Ray cluster's workers")
    bench.add_argument("--address", default=None,
                       help="with --ray: Ray address (default: RAY_ADDRESS, a running cluster, or "
                            "a new one); a cluster with token auth needs RAY_AUTH_TOKEN or "
                            "~/.ray/auth_token")
    bench.add_argument("--workers", type=int, default=0,
                       help="with --ray: worker actors (default: one per available CPU slot)")
    bench.add_argument("--profile", default=None, metavar="FILE",
                       help="cost profile to rank the replay rows by predicted tokens/s (default: "
                            "this machine's, when `taps-ray calibrate` saved one)")
    bench.add_argument("--json", action="store_true", help="print the pooled tau table as JSON")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from taps_ray.config import BenchConfig, load_config
    from taps_ray.evaluation.bench import load_drafter_set, run_bench
    from taps_ray.evaluation.report import tau_table, to_markdown
    from taps_ray.evaluation.results import read_rows

    if args.address and not args.ray:
        raise TapsError("--address needs --ray (without it the bench runs in this process)")
    cfg = load_config(BenchConfig, args.config, args.overrides)
    if args.ray:
        from taps_ray.distributed.bench import run_bench_ray

        run_id, written = run_bench_ray(cfg, address=args.address, workers=args.workers)
    else:
        from taps_ray.models.target import load_target

        target = load_target(cfg.target.name, cfg.target.device, cfg.target.dtype)
        run_id, written = run_bench(cfg, lambda name: load_drafter_set(cfg, name, target),
                                    target)
    folder = f"{cfg.results_dir.rstrip('/')}/{run_id}"
    df = read_rows([folder])
    tables = {}
    for (temp, mode), part in df.groupby(["temperature", "mode"]):
        tables[f"T={temp:g} {mode}"] = tau_table(part)
    ranking = speed_ranking(df, cfg, args.profile)
    if args.json:
        out = {k: t.round(4).to_dict(orient="index") for k, t in tables.items()}
        if ranking is not None:
            out["predicted_speed"] = ranking.round(4).to_dict(orient="index")
        print(json.dumps(out))
    else:
        for name, table in tables.items():
            print(f"\n### pooled tau, {name}\n\n{to_markdown(table)}")
        if ranking is not None:
            print("\n### ranked by predicted tokens/s on this machine (replay tau / profile step "
                  f"time; plain decoding = 1.00)\n\n{to_markdown(ranking, 2, 'configuration')}")
        print(f"\n{written} new rows ({len(df)} in all) -> {folder}")
    del pd
    return 0


def speed_ranking(rows, cfg, profile_path: str | None):
    """Replay configurations by predicted speedup over plain decoding, or None without a
    profile for this machine (an explicitly named bad profile is an error)."""
    import pandas as pd
    import torch

    from taps_ray.evaluation.speed_select import rank_predicted
    from taps_ray.models.target import default_device, default_dtype, parse_dtype
    from taps_ray.speed.profile import current_key, default_profile_path, load_profile

    if not (rows["mode"] == "replay").any():
        return None
    device = torch.device(cfg.target.device) if cfg.target.device else default_device()
    dtype = parse_dtype(cfg.target.dtype) if cfg.target.dtype else default_dtype(device)
    key = current_key(cfg.target.name, dtype, device, kernels="default")
    path = profile_path or default_profile_path(key)
    if profile_path is None and not path.is_file():
        print(f"(no cost profile for this machine at {path}: `taps-ray calibrate` lets bench "
              "rank configurations by predicted tokens/s)", file=sys.stderr)
        return None
    try:
        ranked = rank_predicted(rows, load_profile(path, expect=key))
    except TapsError as err:
        if profile_path:
            raise
        print(f"(not ranked by predicted tokens/s: {err})", file=sys.stderr)
        return None
    return pd.DataFrame(
        [{"predicted speedup": c.predicted_speedup, "mean tau": c.mean_tau} for c in ranked],
        index=[c.key for c in ranked])
