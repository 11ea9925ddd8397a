"""Self-distillation data (issue 18, deliverable 2): the target answers MathInstruct questions and
ShareGPT first turns greedily (<= 192 tokens), in resumable shards of 64, then the feature cache
of each whole set is built. Run it in the background at low priority; training scripts read
the finished shards of a run still going (`training.regenerate.cached_prefix`).

    nohup nice -n 10 python benchmarks/selfdistill_regen.py [--domains chat,math] &

`--category gsm8k --after 1472 [--limit 640]` answers only the math draw's GSM8K-train questions
after its first 1,472 records (its own resumable run; no feature cache), for a GSM8K specialist
(`selfdistill_specialists.py --category gsm8k --extra-after 1472`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import category_draw, regen_config  # noqa: E402
from selfdistill_specialists import DOMAINS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="chat,math", help="in this order")
    parser.add_argument("--category", default="", help="math sub-source only, e.g. gsm8k")
    parser.add_argument("--after", type=int, default=0, help="skip the draw's first N records")
    parser.add_argument("--limit", type=int, default=0, help="at most N questions (0: all)")
    args = parser.parse_args()
    import torch

    from taps_ray.models.target import load_target
    from taps_ray.training.pipeline import prepare_features

    torch.set_num_threads(2)
    target = load_target("smollm2-135m-instruct")
    if args.category:
        from taps_ray.training.regenerate import regenerate_records

        regen = DOMAINS["math"]
        chosen, key = category_draw(regen, args.category, args.after)
        chosen = chosen[:args.limit or None]
        regenerate_records(target, chosen, key, regen["max_new"], batch_size=32,
                           max_prompt_tokens=regen["max_length"])
        print(f"{args.category}: {len(chosen)} questions after {args.after} answered")
        return
    for domain in args.domains.split(","):
        start = time.time()
        _, counts = prepare_features(target, regen_config(DOMAINS[domain]), "fp16",
                                     progress=True)
        print(f"{domain}: {counts} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
