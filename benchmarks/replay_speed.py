"""Replay evaluation vs live decoding of the same prompts with the same drafter (T = 0).

Replay's cost per drafter is one teacher-forced target pass + the drafter's walk; the greedy
continuation is generated once per prompt and shared by every drafter (reported separately).
Checks on the way that replay tau equals live tau.

    python benchmarks/replay_speed.py --drafter runs/cpu/math-eagle2/drafter --prompts 4
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--drafter", default="untrained", help="drafter folder or 'untrained'")
    parser.add_argument("--benchmark", default="gsm8k")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--tree", default="60/5/10", help="total_tokens/depth/top_k")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from tqdm import tqdm

    from taps_ray.config.schema import TreeConfig
    from taps_ray.data.mixture import benchmark_subset
    from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
    from taps_ray.decoding.sampling import SamplingParams
    from taps_ray.evaluation.replay import ReplayPrompt, continuations, replay, teacher_features
    from taps_ray.models.drafter import load_drafter, untrained_drafter
    from taps_ray.models.target import load_target

    target = load_target(args.target)
    drafter = (untrained_drafter(target) if args.drafter == "untrained"
               else load_drafter(args.drafter, target))
    tree = TreeConfig(*map(int, args.tree.split("/")))
    engine = SpeculativeEngine(target, [drafter], tree)
    records = benchmark_subset(args.benchmark, args.prompts, seed=0)
    prompts = continuations(target, records, args.max_new_tokens)  # warm the shared cache
    live_s = cont_s = replay_s = 0.0
    same = True
    for item in tqdm(prompts, desc="live vs replay", unit="prompt"):
        t0 = time.perf_counter()
        live = engine.generate(item.prompt_ids, SamplingParams(), args.max_new_tokens)
        t1 = time.perf_counter()
        generate_plain(target, item.prompt_ids, SamplingParams(), args.max_new_tokens)
        t2 = time.perf_counter()
        fresh = ReplayPrompt(item.benchmark, item.prompt_id, item.turn, item.prompt_ids,
                             item.continuation)
        result = replay(engine.sessions, engine.strategy, fresh,
                        teacher_features(engine.runner, fresh), tree)
        t3 = time.perf_counter()
        live_s, cont_s, replay_s = live_s + t1 - t0, cont_s + t2 - t1, replay_s + t3 - t2
        same &= result.committed == [s.committed for s in live.steps]
    out = {
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "tree": args.tree,
        "live_s": round(live_s, 2), "replay_s": round(replay_s, 2),
        "continuation_s (once per prompt, shared)": round(cont_s, 2),
        "replay_speedup_per_drafter": round(live_s / replay_s, 2),
        "replay_tau_equals_live": same,
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
