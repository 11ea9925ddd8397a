"""The batch scheduler alone, in-process, on the default target: tokens/s of B sequences decoded
together, plain and speculative (the served config's route-confidence EAGLE-2 pair, tree 20/4/5,
adaptive policy, batch speculation "cost"), without the serving stack around it.

    .venv/bin/python benchmarks/batch_inprocess.py --out docs/bench/batch-inprocess.json

Needs the quickstart's math-eagle2 / chat-eagle2 and this machine's calibrated profile. Timing:
run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.records import Message
from taps_ray.data.render import render_prompt
from taps_ray.decoding.adaptive import make_policy
from taps_ray.decoding.engine import SpeculativeEngine
from taps_ray.decoding.prompt_lookup import load_drafter_spec
from taps_ray.decoding.scheduler import BatchScheduler, BatchSettings, SequenceRequest
from taps_ray.models.target import load_target
from taps_ray.speed.profile import default_profile_path, load_profile, machine_key

QUESTIONS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether?",
    "Write a short, friendly note inviting a neighbour to a picnic on Saturday.",
    "Explain in two sentences why the sky is blue.",
    "A train travels 60 km in 45 minutes. What is its average speed in km/h?",
)


def run(target, drafters, profile, kind: str, rows: int, max_new: int) -> dict:
    scheduler = BatchScheduler(target, BatchSettings(speculation="cost"), profile)
    prompts = [render_prompt(target.tokenizer, [Message("user", q)]) for q in QUESTIONS]
    for i in range(rows):
        engine = None if kind == "plain" else SpeculativeEngine(
            target, drafters, TreeConfig(20, 4, 5), "route-confidence",
            policy=make_policy("adaptive", profile), granularity="step")
        scheduler.submit(SequenceRequest(prompts[i % len(prompts)], max_new_tokens=max_new,
                                         stop_ids=set(), engine=engine))
    start = time.perf_counter()
    while scheduler.snapshot().running or scheduler.snapshot().queue_length:
        scheduler.step()
    wall = time.perf_counter() - start
    snap = scheduler.snapshot()
    return {"kind": kind, "rows": rows, "tokens": snap.tokens, "steps": snap.steps,
            "speculative_steps": snap.speculative_steps, "wall_s": round(wall, 3),
            "tokens_per_s": round(snap.tokens / wall, 2),
            "ms_per_step": round(wall / snap.steps * 1e3, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,8")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--drafters", nargs=2, default=["runs/quickstart/drafters/math-eagle2",
                                                   "runs/quickstart/drafters/chat-eagle2"])
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target("smollm2-135m-instruct")
    profile = load_profile(default_profile_path(machine_key(target)))
    drafters = [load_drafter_spec(d, target) for d in args.drafters]
    run(target, drafters, profile, "plain", 2, 8)  # warm-up
    rows = []
    for b in (int(x) for x in args.rows.split(",")):
        for kind in ("plain", "speculative"):
            rows.append(run(target, drafters, profile, kind, b, args.max_new_tokens))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"command": "benchmarks/batch_inprocess.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "drafters"),
                "threads": args.threads, "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
