"""Per-step overhead of decoding over Ray actors (taps_ray.distributed.actors) against the
in-process engine, with 1, 2 and 3 drafters, on one machine, one run.

    python benchmarks/actors.py --max-new-tokens 32 --threads 1 [--json out.json]

Untrained drafters (tau ~ 1: every step is a full draft + verify round) make the per-step cost
comparable across configurations. Both paths decode the same prompts with the same torch thread
count; the actor output is checked to equal the in-process output. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import ray
import torch

from taps_ray.config.schema import DEFAULT_TARGET, TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.data.records import turn_messages
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import SpeculativeEngine
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.distributed.actors import ActorEngine
from taps_ray.models.drafter import untrained_drafter
from taps_ray.models.target import load_target

CONFIGS = [(1, "single", {}), (2, "route-confidence", {"granularity": "step"}),
           (2, "merged", {"budget": "sum"}), (3, "route-confidence", {"granularity": "step"}),
           (3, "merged", {"budget": "sum"})]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.target)
    prompts = [render_prompt(target.tokenizer, turn_messages(r, 0, []))
               for r in benchmark_subset("gsm8k", args.prompts, 0)]
    tree = TreeConfig(*[int(x) for x in args.tree.split("/")])
    drafters = [untrained_drafter(target, seed=k) for k in range(3)]
    ray.init(num_cpus=args.cpus or None, include_dashboard=False, log_to_driver=False)
    rows = []
    for n, strategy, options in CONFIGS:
        local = SpeculativeEngine(target, drafters[:n], tree, strategy, **options)
        remote = ActorEngine.create(target.name, [f"untrained:{k}" for k in range(n)], tree,
                                    strategy, torch_threads=args.threads, **options)
        remote.generate(prompts[0], SamplingParams(), 2)  # actors loaded and warm
        rows.append(compare(local, remote, prompts, args.max_new_tokens, n, strategy, options))
        remote.close()
        print_row(rows[-1])
    ray.shutdown()
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "tree": args.tree, "max_new_tokens": args.max_new_tokens, "rows": rows}
    print("\n" + markdown(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


def compare(local, remote, prompts, max_new: int, n: int, strategy: str, options: dict) -> dict:
    """ms per step (median over prompts), tokens/s (all prompts) of both engines, and whether
    their outputs agree."""
    per_step = {"in_process": [], "actors": []}
    tokens = {"in_process": 0, "actors": 0}
    seconds = {"in_process": 0.0, "actors": 0.0}
    same = True
    for prompt in prompts:
        outs = {}
        for name, engine in (("in_process", local), ("actors", remote)):
            start = time.perf_counter()
            outs[name] = engine.generate(prompt, SamplingParams(), max_new)
            elapsed = time.perf_counter() - start
            steps = max(len(outs[name].steps), 1)
            per_step[name].append(1000 * elapsed / steps)
            tokens[name] += len(outs[name].tokens)
            seconds[name] += elapsed
        same &= outs["in_process"].tokens == outs["actors"].tokens
    local_ms, actor_ms = (statistics.median(per_step[k]) for k in ("in_process", "actors"))
    label = strategy + ("/" + next(iter(options.values())) if options else "")
    return {"drafters": n, "strategy": label, "in_process_ms": round(local_ms, 1),
            "actors_ms": round(actor_ms, 1), "overhead_ms": round(actor_ms - local_ms, 1),
            "ratio": round(actor_ms / local_ms, 2),
            "in_process_tok_s": round(tokens["in_process"] / seconds["in_process"], 2),
            "actors_tok_s": round(tokens["actors"] / seconds["actors"], 2), "same_tokens": same}


def markdown(rows: list[dict]) -> str:
    head = ("| drafters | strategy | in-process ms/step | actors ms/step | overhead ms/step "
            "| ratio | in-process tokens/s | actors tokens/s | same tokens |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        lines.append(f"| {r['drafters']} | {r['strategy']} | {r['in_process_ms']} | "
                     f"{r['actors_ms']} | {r['overhead_ms']} | {r['ratio']} | "
                     f"{r['in_process_tok_s']} | {r['actors_tok_s']} | {r['same_tokens']} |")
    return "\n".join(lines)


def print_row(row: dict) -> None:
    print(json.dumps(row), flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--prompts", type=int, default=2, help="GSM8K prompts decoded per config")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--tree", default="20/4/5", help="total_tokens/depth/top_k")
    p.add_argument("--threads", type=int, default=1, help="torch threads, in process and per actor")
    p.add_argument("--cpus", type=int, default=0, help="num_cpus for ray.init (0: all)")
    p.add_argument("--json", default="", help="also write the figures to this file")
    return p.parse_args()


if __name__ == "__main__":
    main()
