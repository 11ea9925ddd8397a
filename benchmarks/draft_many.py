"""Drafting N trees: lockstep `draft_many` (one LM-head matmul per round) vs N separate drafts.

    python benchmarks/draft_many.py --drafters 2 --repeats 10 [--draft-vocab 0]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--drafters", type=int, default=2)
    parser.add_argument("--draft-vocab", type=int, default=0, help="0 = full vocabulary")
    parser.add_argument("--tree", default="60/5/10")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import torch

    from taps_ray.config.schema import TreeConfig
    from taps_ray.decoding.proposer import DrafterSession, draft_many
    from taps_ray.decoding.target_runner import TargetRunner
    from taps_ray.models.drafter import untrained_drafter
    from taps_ray.models.target import load_target

    target = load_target(args.target)
    tree = TreeConfig(*map(int, args.tree.split("/")))
    runner = TargetRunner(target.model)
    prompt = torch.arange(100, 400)
    feats = runner.prefill(prompt)
    sessions = []
    for k in range(args.drafters):
        drafter = untrained_drafter(target, seed=k, draft_vocab_size=args.draft_vocab)
        if args.draft_vocab:  # distinct vocabularies, as specialists trained on other data have
            drafter.draft_vocab = torch.randperm(49152)[: args.draft_vocab].sort().values
        session = DrafterSession(drafter, runner.embed, runner.lm_head.weight)
        session.reset()
        session.extend(feats, torch.cat([prompt[1:], prompt[-1:]]))
        sessions.append(session)

    def separate() -> None:
        for s in sessions:
            s.draft(tree)

    def lockstep() -> None:
        draft_many(sessions, tree)

    timings = {}
    for name, fn in (("separate", separate), ("lockstep", lockstep)) * 2:  # interleaved, warm
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        timings[name] = (time.perf_counter() - start) / args.repeats * 1000
    out = {"drafters": args.drafters, "draft_vocab": args.draft_vocab or "full", "tree": args.tree,
           "threads": torch.get_num_threads(), "separate_ms": round(timings["separate"], 1),
           "lockstep_ms": round(timings["lockstep"], 1),
           "speedup": round(timings["separate"] / timings["lockstep"], 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
