"""Self-distillation data (issue 18, deliverable 2): the target answers MathInstruct questions and
ShareGPT first turns greedily (<= 192 tokens), in resumable shards of 64, then the feature cache
of each whole set is built. Run it in the background at low priority; training scripts read
the finished shards of a run still going (`training.regenerate.cached_prefix`).

    nohup nice -n 10 python benchmarks/selfdistill_regen.py [--domains chat,math] &
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import regen_config  # noqa: E402
from selfdistill_specialists import DOMAINS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="chat,math", help="in this order")
    args = parser.parse_args()
    import torch

    from taps_ray.models.target import load_target
    from taps_ray.training.pipeline import prepare_features

    torch.set_num_threads(2)
    target = load_target("smollm2-135m-instruct")
    for domain in args.domains.split(","):
        start = time.time()
        _, counts = prepare_features(target, regen_config(DOMAINS[domain]), "fp16",
                                     progress=True)
        print(f"{domain}: {counts} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
