"""`taps-ray report PATH... --out DIR [--profile FILE] [--best-config FILE] [--json]`.

Result rows -> tables, plots and report.html. PATH may be a result file or folder, local or any
URI pyarrow understands (s3://, gs://, ...); diagnostics-*.parquet files found there add
accepted-vs-rejected confidence/entropy. The report opens with the chosen configuration
(best_config.yaml in or beside the first PATH unless --best-config names one), its live
speedup over plain decoding, the best tau per benchmark and, with --profile, the machine's
T1 and Tv(n)/T1 (replay rows are then priced as predicted tokens/s, labelled as predicted).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="aggregate result rows into tau/speed tables, plots and an offline page")
    report.add_argument("paths", nargs="+", metavar="PATH",
                        help="result files or folders (local paths or URIs)")
    report.add_argument("--out", required=True, metavar="DIR",
                        help="folder for tables.md, tables.csv, speed.csv, *.png and report.html")
    report.add_argument("--profile", metavar="FILE", default=None,
                        help="a cost profile (taps-ray calibrate): predicted tokens/s of replay "
                             "rows and the hardware summary")
    report.add_argument("--best-config", metavar="FILE", default=None,
                        help="the chosen configuration to summarise (default: best_config.yaml "
                             "in or beside the first PATH, when there is one)")
    report.add_argument("--json", action="store_true",
                        help="print the pooled tau tables as JSON: {T: {label: {benchmark: tau}}}")
    report.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from taps_ray.evaluation.report import (
        build_report,
        tables_json,
        temp_key,
        to_markdown,
        write_report,
    )
    from taps_ray.evaluation.summary import find_best_config, overview_markdown

    best = args.best_config or find_best_config(args.paths)
    report = build_report(args.paths, best_config=best, profile=args.profile)
    for note in report.notes:
        print(f"taps-ray: warning: {note}", file=sys.stderr)
    written = write_report(report, args.out)
    if args.json:
        print(json.dumps(tables_json(report.tables), indent=2))
        return 0
    print(overview_markdown(report.overview).strip() + "\n")
    for temp, per in report.tables.items():
        print(f"pooled tau, T={temp_key(temp)}\n{to_markdown(per['pooled-tau'])}\n")
    print(f"{len(written)} files -> {written[-1].parent} (open report.html)")
    return 0
