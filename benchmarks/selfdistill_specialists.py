"""Self-distilled specialists (issue 18, deliverable 2): a math and a chat head trained on the
target's own answers for as long as their validation loss keeps falling.

The background regeneration (`benchmarks/selfdistill_regen.py`) answers MathInstruct
questions and ShareGPT first turns greedily (<= 192 tokens, resumable shards of 64); this trains
one head per domain on the first N finished conversations with a seeded 5 % held out, up to
`--epochs` epochs, stopping after `--patience` epochs without a lower validation loss and
keeping the best epoch (`training.holdout`, `training.patience`). Heads land in
`runs/selfdistill/<domain>-<method>-<N>/drafter`; the study bench evaluates them
(`experiments/bench_study_selfdistill.yaml`).

    python benchmarks/selfdistill_specialists.py --domain chat --size 512 [--method hass]
        [--epochs 8] [--holdout 0.05] [--patience 1]

`--init-from DRAFTER --name NAME [--lr 2.5e-4]` continues a finished head on the same data with
a fresh warmup and cosine (`training.init_from`) when its validation loss was still falling;
the head lands in `runs/selfdistill/NAME/drafter`. `--category gsm8k` keeps only the
regenerated questions of one MathInstruct sub-source (a task specialist, e.g. GSM8K train).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import (  # noqa: E402
    REGEN,
    category_prefix,
    features_for,
    regenerated_prefix,
    train,
)

DOMAINS = {
    "math": REGEN,
    "chat": {"mixture": "chat=1.0", "total": 2400, "seed": 0, "max_length": 384, "max_new": 192,
             "max_turns": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", choices=sorted(DOMAINS), required=True)
    parser.add_argument("--size", type=int, required=True, help="regenerated conversations")
    parser.add_argument("--method", default="hass", choices=["eagle2", "hass", "eagle3"])
    parser.add_argument("--epochs", type=int, default=8, help="at most this many")
    parser.add_argument("--holdout", type=float, default=0.05)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--runs", default="runs/selfdistill")
    parser.add_argument("--init-from", default="", help="a saved head to continue")
    parser.add_argument("--name", default="", help="head and folder name (with --init-from)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    parser.add_argument("--category", default="", help="one sub-source only, e.g. gsm8k")
    parser.add_argument("--extra-after", type=int, default=-1,
                        help="with --category: add that sub-source's answers regenerated after "
                             "this many records (selfdistill_regen.py --category --after)")
    args = parser.parse_args()
    if args.init_from and not args.name:
        sys.exit("--init-from needs --name for the continued head (e.g. chat2400-hass-e4)")
    import torch

    from taps_ray.models.target import load_target

    torch.set_num_threads(2)
    regen = DOMAINS[args.domain]
    target = load_target("smollm2-135m-instruct")
    records = regenerated_prefix(target, args.size, regen)
    if len(records) < args.size:
        sys.exit(f"only {len(records)} regenerated {args.domain} answers are cached, {args.size} "
                 "needed; let the regeneration run longer or pass a smaller --size")
    start = time.time()
    extra = category_prefix(target, regen, args.category, args.extra_after) \
        if args.category and args.extra_after >= 0 else None
    source = features_for(target, records, args.size, args.method, regen, args.category, extra)
    folder = Path(args.runs) / (args.name or f"{args.domain}-{args.method}-{args.size}")
    drafter = train(target, source, args.method, args.size, args.epochs, folder, regen,
                    name=args.name, holdout=args.holdout, patience=args.patience, lr=args.lr,
                    init_from=args.init_from)
    training = json.loads((drafter / "taps.json").read_text())["extra"]["training"]
    losses = [round(r["val_loss"], 4) for r in training["epoch_metrics"] if "val_loss" in r]
    print(f"{drafter}: {training['epochs_done']} epochs, validation loss by epoch {losses}, "
          f"kept {training['validation']} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
