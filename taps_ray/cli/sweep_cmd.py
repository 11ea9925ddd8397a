"""`taps-ray sweep CONFIG [key=value ...] [--smoke-test] [--resume] [--storage-path PATH]`:
a Ray Tune sweep over data mixtures and drafter recipes (taps_ray/distributed/sweep.py)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep", help="Ray Tune sweep: train drafters over mixtures/recipes, pick the best"
    )
    sweep.add_argument("config", help="sweep YAML (see experiments/sweep_*.yaml)")
    sweep.add_argument("overrides", nargs="*",
                       help="dotted overrides, e.g. space.math_fraction=[0,1] base.data.total=200")
    sweep.add_argument("--smoke-test", action="store_true",
                       help="tiny sizes (8 conversations, 2 steps, 2 prompts per benchmark), "
                            "first and last value of each grid: a few minutes on a laptop")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the sweep in storage_path/name; finished trials are kept")
    sweep.add_argument("--storage-path", default=None,
                       help="where trials, checkpoints and results go (folder or s3://...)")
    sweep.add_argument("--address", default=None,
                       help="Ray address (default: RAY_ADDRESS, a running cluster, or a new one); "
                            "a cluster with token auth needs RAY_AUTH_TOKEN or ~/.ray/auth_token")
    sweep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taps_ray.distributed.outputs import table_markdown
    from taps_ray.distributed.sweep import load_sweep_config, run_sweep

    overrides = list(args.overrides)
    if args.storage_path:
        overrides.append(f"storage_path={args.storage_path}")
    cfg = load_sweep_config(args.config, overrides)
    out = run_sweep(cfg, resume=args.resume, smoke_test=args.smoke_test, address=args.address)
    if len(out.table):
        print("\n" + table_markdown(out.table))
        for _, row in out.table[out.table["status"] == "error"].iterrows():
            print(f"trial {row['trial_id']} failed: {row['error']}")
    if out.best is None:
        print(f"\nno trial reported a metric; see the trial logs under {out.path}")
        return 1
    print(f"\nbest {out.best['metric']} = {out.best['value']}: {out.best['drafters'][0]}")
    print(f"results -> {out.path} (sweep_table.md, best_config.yaml)")
    return 0
