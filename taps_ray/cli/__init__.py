"""`taps-ray` command line: one subcommand module per concern, each adding its own parser."""

from __future__ import annotations

import argparse
import importlib
import sys

from taps_ray.errors import TapsError

# Subcommand modules, imported lazily so `taps-ray --help` stays fast.
_COMMANDS = (
    "taps_ray.cli.bench_cmd",
    "taps_ray.cli.calibrate_cmd",
    "taps_ray.cli.config_cmd",
    "taps_ray.cli.data_cmd",
    "taps_ray.cli.drafter_cmd",
    "taps_ray.cli.generate_cmd",
    "taps_ray.cli.plan_cmd",
    "taps_ray.cli.quickstart_cmd",
    "taps_ray.cli.report_cmd",
    "taps_ray.cli.serve_cmd",
    "taps_ray.cli.sweep_cmd",
    "taps_ray.cli.train_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taps-ray",
        description="Task-aware speculative decoding: train, combine, sweep, serve.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2; no tracebacks for bad input."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after --options (argparse stops the positional list)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
        "=" in e and not e.startswith("-") for e in extra
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TapsError as err:
        print(f"taps-ray: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("taps-ray: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
