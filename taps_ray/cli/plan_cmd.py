"""`taps-ray plan CONFIG [key=value ...] [--json]`: validate a study, training, bench or sweep
config and print the planned trainings, evaluations, GPU-hours and storage; runs nothing."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    plan = subparsers.add_parser(
        "plan", help="validate a config; print planned runs, GPU-hours and storage (no work)")
    plan.add_argument("config", help="study, experiment, bench or sweep YAML")
    plan.add_argument("overrides", nargs="*", help="dotted overrides, e.g. methods=[hass]")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taps_ray.study.plan import make_plan, plan_json, render_plan

    plan = make_plan(args.config, args.overrides)
    print(json.dumps(plan_json(plan), indent=2) if args.json else render_plan(plan))
    return 0
