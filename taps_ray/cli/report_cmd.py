"""`taps-ray report PATH... --out DIR [--json]`: result rows -> tables, plots and report.html.

PATH may be a result file or folder, local or any URI pyarrow understands (s3://, gs://, ...);
diagnostics-*.parquet files found there add accepted-vs-rejected confidence/entropy.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="aggregate result rows into tau tables, plots and an offline HTML page")
    report.add_argument("paths", nargs="+", metavar="PATH",
                        help="result files or folders (local paths or URIs)")
    report.add_argument("--out", required=True, metavar="DIR",
                        help="folder for tables.md, tables.csv, *.png and report.html")
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

    report = build_report(args.paths)
    for note in report.notes:
        print(f"taps-ray: warning: {note}", file=sys.stderr)
    written = write_report(report, args.out)
    if args.json:
        print(json.dumps(tables_json(report.tables), indent=2))
        return 0
    for temp, per in report.tables.items():
        print(f"pooled tau, T={temp_key(temp)}\n{to_markdown(per['pooled-tau'])}\n")
    print(f"{len(written)} files -> {written[-1].parent} (open report.html)")
    return 0
