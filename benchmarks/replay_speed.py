"""Replay evaluation vs live decoding of the same prompts with the same drafter (T = 0).

The greedy continuation and the target's teacher-forced features are computed once per prompt,
cached on disk and shared by every drafter (reported separately). Replay is timed three ways:
step by step with a fresh target pass (block 0: the live engine's drafting without the
target's verification), batched (trees drafted `--block` positions per call) with a fresh
target pass, and batched with the prompt's features loaded from the cache (the cost of
evaluating one more drafter). Checks on the way that every replay's per-step acceptance
equals live decoding's.

    python benchmarks/replay_speed.py --drafter runs/cpu/math-eagle2/drafter --prompts 4
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--drafter", default="untrained", help="drafter folder or 'untrained'")
    parser.add_argument("--benchmark", default="gsm8k")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--tree", default="60/5/10", help="total_tokens/depth/top_k")
    parser.add_argument("--block", type=int, default=32, help="positions per batched draft")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    from taps_ray.config.schema import TreeConfig
    from taps_ray.data.mixture import benchmark_subset
    from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
    from taps_ray.decoding.sampling import SamplingParams
    from taps_ray.evaluation.replay import continuations, replay, teacher_features
    from taps_ray.models.drafter import load_drafter, untrained_drafter
    from taps_ray.models.target import load_target

    target = load_target(args.target)
    drafter = (untrained_drafter(target) if args.drafter == "untrained"
               else load_drafter(args.drafter, target))
    tree = TreeConfig(*map(int, args.tree.split("/")))
    engine = SpeculativeEngine(target, [drafter], tree)
    records = benchmark_subset(args.benchmark, args.prompts, seed=0)
    prompts = continuations(target, records, args.max_new_tokens)  # warm the shared cache
    seconds = dict.fromkeys(["live", "continuation", "features", "stepwise", "batched",
                             "batched_cached"], 0.0)
    same = {"stepwise": True, "batched": True, "batched_cached": True}
    for item in tqdm(prompts, desc="live vs replay", unit="prompt"):
        t0 = time.perf_counter()
        live = engine.generate(item.prompt_ids, SamplingParams(), args.max_new_tokens)
        t1 = time.perf_counter()
        generate_plain(target, item.prompt_ids, SamplingParams(), args.max_new_tokens)
        seconds["live"] += t1 - t0
        seconds["continuation"] += time.perf_counter() - t1
        # the features cache beside the continuation: computed once per prompt, then shared
        Path(item.features_path).unlink(missing_ok=True)
        t0 = time.perf_counter()
        teacher_features(engine.runner, item)
        seconds["features"] += time.perf_counter() - t0
        uncached = replace(item, features_path=None)
        for mode, block, run in (("stepwise", 0, uncached), ("batched", args.block, uncached),
                                 ("batched_cached", args.block, item)):
            t0 = time.perf_counter()
            result = replay(engine.sessions, engine.strategy, run,
                            teacher_features(engine.runner, run), tree, block=block)
            seconds[mode] += time.perf_counter() - t0
            same[mode] &= result.committed == [s.committed for s in live.steps]
    out = {
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "tree": args.tree,
        "block": args.block, "threads": torch.get_num_threads(),
        **{f"{k}_s": round(v, 2) for k, v in seconds.items()},
        **{f"speedup_{k}": round(seconds["live"] / seconds[k], 2) for k in same},
        **{f"{k}_equals_live": v for k, v in same.items()},
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
