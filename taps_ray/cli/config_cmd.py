"""`taps-ray config show CONFIG [key=value ...]`: validate a run config and print it resolved."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("config", help="validate and print run configs")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="validate CONFIG (+ overrides) and print the resolved YAML")
    show.add_argument("config", nargs="?", default=None, help="YAML file (default: all defaults)")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.lr=3e-5")
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from taps_ray.config import ExperimentConfig, load_config, to_dict

    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path and not Path(path).exists():
        path, overrides = None, [path, *overrides]  # only overrides were given
    config = load_config(ExperimentConfig, path, overrides)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    return 0
