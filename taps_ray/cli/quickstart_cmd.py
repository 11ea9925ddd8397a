"""`taps-ray quickstart [--profile smoke|default] --out DIR`: the study end to end on the
embedded default target (taps_ray/study/quickstart.py)."""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    quick = subparsers.add_parser(
        "quickstart", help="train specialists, compare strategies, sweep, report: the whole study")
    quick.add_argument("--profile", default="default", choices=["smoke", "default"],
                       help="smoke: <= 10 min on 2 CPU cores; default: <= 60 min")
    quick.add_argument("--out", default="runs/quickstart", metavar="DIR",
                       help="drafters/, results/, report/, sweep/, best_config.yaml go here")
    quick.add_argument("--no-sweep", action="store_true", help="skip the Ray Tune mixture sweep")
    quick.add_argument("--choose-by", default="speed", choices=["speed", "tau"],
                       help="best_config.yaml: fastest live on this machine (plain decoding "
                            "when nothing beats it), or highest mean tau at T = 0 (the study)")
    quick.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taps_ray.evaluation.report import temp_key, to_markdown
    from taps_ray.study.profiles import get_profile
    from taps_ray.study.quickstart import describe_best, paper_order, run_quickstart

    profile = get_profile(args.profile)
    start = time.perf_counter()
    result = run_quickstart(profile, args.out, with_sweep=not args.no_sweep,
                            choose_by=args.choose_by)
    for temp, per in result.tables.items():
        mode = "replay" if float(temp) == 0 else "live"
        tau = per["pooled-tau"]
        print(f"\n### pooled tau, T={temp_key(temp)} ({mode})\n\n"
              f"{to_markdown(tau.loc[paper_order(tau.index)])}")
    for table in result.speed:
        print(f"\n### {table.title}, T={temp_key(table.temperature)}\n\n"
              f"{to_markdown(table.table, 2)}")
    if result.sweep_best:
        print(f"\nsweep best ({result.sweep_best['metric']} {result.sweep_best['value']}): "
              f"{', '.join(result.sweep_best['drafters'])}")
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items())
    print(f"\nchosen: {describe_best(result.best)}")
    print(f"\nquickstart ({profile.name}) done in {time.perf_counter() - start:.0f} s ({stages})")
    print(f"report: {result.out / 'report' / 'report.html'}\n"
          f"serve it: taps-ray serve {result.out / 'best_config.yaml'}")
    return 0
