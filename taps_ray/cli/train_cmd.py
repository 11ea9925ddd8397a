"""`taps-ray train CONFIG [key=value ...]` -> a drafter folder, evaluated by replay tau per epoch;
`taps-ray replay CONFIG [key=value ...]` -> result rows and a tau table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train",
                                  help="train a drafter (EAGLE-2, HASS or EAGLE-3) on a mixture")
    train.add_argument("config", help="experiment YAML (see experiments/)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.epochs=1")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--online", action="store_true",
                       help="compute target features on the fly instead of caching them")
    train.add_argument("--no-eval", action="store_true", help="skip replay tau after each epoch")
    train.set_defaults(func=run_train)
    replay = subparsers.add_parser("replay", help="replay tau of drafters on benchmarks (T=0)")
    replay.add_argument("config", help="experiment YAML; evaluation.drafters lists the folders")
    replay.add_argument("overrides", nargs="*")
    replay.set_defaults(func=run_replay)


def run_train(args: argparse.Namespace) -> int:
    from taps_ray.config import ExperimentConfig, load_config, save_config
    from taps_ray.models.target import load_target
    from taps_ray.training.pipeline import train_from_config

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    target = load_target(cfg.target.name, cfg.target.device, cfg.target.dtype)
    hook = None if args.no_eval else _epoch_eval(cfg, target)
    result = train_from_config(cfg, target=target, resume=args.resume, online=args.online,
                               on_epoch_end=hook)
    print(json.dumps({"drafter": str(result.path), **_short(result.summary)}))
    return 0


def _epoch_eval(cfg, target):
    """Replay tau on held-out benchmark prompts after each epoch (logged with the epoch)."""
    from taps_ray.training.epoch_eval import replay_evaluator

    evaluate = replay_evaluator(target, cfg)

    def hook(epoch: int, drafter) -> dict:
        taus = {f"tau_{k}": v for k, v in evaluate(drafter).items()}
        print(f"epoch {epoch}: " + ", ".join(f"{k}={v}" for k, v in taus.items()))
        return taus

    return hook


def run_replay(args: argparse.Namespace) -> int:
    import pandas as pd

    from taps_ray.config import ExperimentConfig, load_config
    from taps_ray.evaluation.report import tau_table, to_markdown
    from taps_ray.evaluation.results import write_rows
    from taps_ray.evaluation.runner import Candidate, replay_candidates, replay_prompts
    from taps_ray.models.target import load_target

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    target = load_target(cfg.target.name, cfg.target.device, cfg.target.dtype)
    drafters = _load_drafters(cfg, target)
    candidates = [Candidate(name, "single", [name], method=d.meta.method)
                  for name, d in drafters.items()]
    rows = replay_candidates(target, drafters, candidates, cfg.tree,
                             replay_prompts(target, cfg.evaluation))
    results = cfg.evaluation.results_dir or str(Path(cfg.output_dir) / "results")
    path = write_rows(rows, results, rows[0].run_id, writer="replay")
    print(to_markdown(tau_table(pd.DataFrame([r.__dict__ for r in rows]))))
    print(f"\n{len(rows)} result rows -> {path}")
    return 0


def _load_drafters(cfg, target) -> dict:
    from taps_ray.errors import TapsError
    from taps_ray.models.drafter import load_drafter, untrained_drafter

    paths = cfg.evaluation.drafters or [str(Path(cfg.output_dir) / "drafter")]
    drafters = {}
    for spec in paths:
        drafter = untrained_drafter(target) if spec == "untrained" else load_drafter(spec, target)
        name = drafter.meta.name
        if name in drafters:
            raise TapsError(f"two drafters in evaluation.drafters are named '{name}'; "
                            "give each its own drafter.name when training")
        drafters[name] = drafter
    return drafters


def _short(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
