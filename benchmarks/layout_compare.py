"""Drafter layouts side by side (issue 17): the same EAGLE-2 run trained in taps-ray's own layout
('taps': input norm on layer 0 and a final norm) and in the published EAGLE-1/2 layout ('eagle'),
then replayed at T = 0 on the four benchmarks; one run, one JSON.

    python benchmarks/layout_compare.py --out docs/results/layout-compare.json

The recipe is the quickstart's math specialist (`drafter_config(get_profile("default"), "math",
"eagle2", ...)`), so the target features come from the shared cache. Replay: 3 prompts per
benchmark, 64 new tokens, tree 60/5/10 (the default profile's tree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from taps_ray.evaluation.runner import replay_prompts, replay_taus
from taps_ray.models.target import load_target
from taps_ray.study.profiles import get_profile
from taps_ray.study.quickstart import drafter_config
from taps_ray.training.pipeline import train_from_config

LAYOUTS = ("taps", "eagle")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    profile = get_profile("default")
    target = load_target()
    prompts = None
    layouts = {}
    for layout in LAYOUTS:
        cfg = drafter_config(profile, "math", "eagle2", Path(args.runs))
        cfg.drafter.layout = layout
        cfg.drafter.name = f"math-eagle2-{layout}"
        cfg.evaluation.prompts_per_benchmark = args.prompts
        cfg.output_dir = str(Path(args.runs) / layout)
        if prompts is None:  # same prompts, same greedy continuations for both layouts
            prompts = replay_prompts(target, cfg.evaluation, progress=False)
        layouts[layout] = run_layout(cfg, target, prompts)
        print(layout, json.dumps(layouts[layout]["tau"]), flush=True)
    write_json(Path(args.out), report(args, profile, layouts))


def run_layout(cfg, target, prompts) -> dict:
    """Train one layout, then replay it; returns its tau and training summary."""
    start = time.perf_counter()
    result = train_from_config(cfg, target=target, progress=False)
    train_s = time.perf_counter() - start
    taus = replay_taus(target, result.drafter, cfg.tree, prompts)
    s = result.summary
    return {
        "tau": taus,
        "training": {
            "steps": s["steps"], "epochs": s["epochs_done"], "conversations": s["conversations"],
            "tokens": s["tokens"], "final_loss": _round(s["final_loss"]),
            "final_acc": _round(s["final_acc"]), "wall_s": round(train_s, 1),
        },
        "drafter": str(result.path),
    }


def report(args, profile, layouts: dict) -> dict:
    return {
        "what": "EAGLE-2 math drafter trained in both layouts on the same data; T = 0 replay tau",
        "command": "python benchmarks/layout_compare.py --out " + args.out,
        "target": "default (embedded)",
        "recipe": {"profile": profile.name, "domain": "math", "method": "eagle2",
                   "total": profile.total, "epochs": profile.epochs, "lr": profile.lr,
                   "draft_vocab_size": profile.draft_vocab_size},
        "replay": {"prompts_per_benchmark": args.prompts,
                   "max_new_tokens": profile.max_new_tokens,
                   "tree": {"total_tokens": profile.tree.total_tokens,
                            "depth": profile.tree.depth, "top_k": profile.tree.top_k}},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "layouts": layouts,
    }


def write_json(path: Path, data: dict) -> None:
    """Temp then rename: no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results/layout-compare.json")
    p.add_argument("--runs", default="runs/layout-compare", help="training output folders")
    p.add_argument("--prompts", type=int, default=3, help="replay prompts per benchmark")
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    return p.parse_args()


if __name__ == "__main__":
    main()
