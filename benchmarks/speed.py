"""Decoding speed on one machine, one run: transformers generate() vs our plain loop vs
speculative decoding, plus the per-step time split and the verify cost of tree sizes.

    python benchmarks/speed.py --drafter untrained --prompts 2 --max-new-tokens 64 --out docs/bench

Prints a Markdown report and writes `speed.json` under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from taps_ray.cli.generate_cmd import parse_tree
from taps_ray.config.schema import DEFAULT_TARGET, TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.data.records import turn_messages
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.tree import DraftTree, tree_attention_mask, tree_position_offsets
from taps_ray.models.drafter import load_drafter, untrained_drafter
from taps_ray.models.target import load_target

BENCHMARKS = ("mt_bench", "gsm8k", "math500", "svamp")


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    target = random_target(args) if args.random_init else load_target(args.target, args.device)
    prompts = load_prompts(target, args.prompts)
    drafter = (
        untrained_drafter(target, draft_vocab_size=args.draft_vocab)
        if args.drafter == "untrained"
        else load_drafter(args.drafter, target)
    )
    tree = parse_tree(args.tree)
    report = {
        "machine": machine(target),
        "setup": vars(args) | {"num_prompts": len(prompts)},
        "hf_generate": run_hf(target, prompts, args.max_new_tokens),
        "plain": run_plain(target, prompts, args.max_new_tokens),
        "speculative": run_spec(target, drafter, tree, prompts, args.max_new_tokens),
        "verify_cost": verify_cost(target, [8, 16, 32, 60]),
    }
    report["summary"] = summarize(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--drafter", default="untrained")
    p.add_argument("--draft-vocab", type=int, default=0, help="untrained drafter's draft vocab")
    p.add_argument("--tree", default="60/5/10")
    p.add_argument("--prompts", type=int, default=2, help="prompts per benchmark (4 benchmarks)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="docs/bench")
    p.add_argument("--random-init", action="store_true",
                   help="random weights of the target's architecture (timings only)")
    p.add_argument("--config-override", nargs="*", default=[],
                   help="with --random-init: config fields, e.g. num_hidden_layers=32")
    return p.parse_args()


def random_target(args):
    """A target of the folder's architecture (config + tokenizer) with random weights, built on
    the device: per-step timings without the weights (e.g. an 8B shape on a lent GPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from taps_ray.models.target import Target, default_device, default_dtype

    device = torch.device(args.device) if args.device else default_device()
    dtype = default_dtype(device)
    config = AutoConfig.from_pretrained(args.target)
    for override in args.config_override:
        key, _, value = override.partition("=")
        setattr(config, key, type(getattr(config, key))(value))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    return Target(f"random:{args.target}", model, tokenizer, device, dtype)


def load_prompts(target, per_benchmark: int) -> list[list[int]]:
    return [
        render_prompt(target.tokenizer, turn_messages(r, 0, []))
        for name in BENCHMARKS
        for r in benchmark_subset(name, per_benchmark, seed=1)
    ]


def machine(target) -> dict:
    dev = str(target.device)
    name = torch.cuda.get_device_name() if target.device.type == "cuda" else platform.processor()
    return {
        "device": dev,
        "name": name or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(target.dtype),
    }


def _sync(target) -> None:
    if target.device.type == "cuda":
        torch.cuda.synchronize()


def run_hf(target, prompts, max_new) -> dict:
    tokens, wall = 0, 0.0
    for prompt in prompts:
        ids = torch.tensor([prompt], device=target.device)
        _sync(target)
        start = time.perf_counter()
        out = target.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False
        )
        _sync(target)
        wall += time.perf_counter() - start
        tokens += out.shape[1] - len(prompt)
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def run_plain(target, prompts, max_new) -> dict:
    results = [generate_plain(target, p, SamplingParams(), max_new) for p in prompts]
    tokens = sum(r.new_tokens for r in results)
    wall = sum(r.wall_s for r in results)
    decode = sum(r.wall_s - r.prefill_s for r in results)
    return {
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "step_s": decode / max(sum(r.new_tokens - 1 for r in results), 1),
    }


def run_spec(target, drafter, tree: TreeConfig, prompts, max_new) -> dict:
    engine = SpeculativeEngine(target, [drafter], tree)
    results = [engine.generate(p, SamplingParams(), max_new) for p in prompts]
    steps = [s for r in results for s in r.steps]
    tokens = sum(r.new_tokens for r in results)
    wall = sum(r.wall_s for r in results)
    split = {
        k: sum(getattr(s, f"{k}_s") for s in steps) / len(steps)
        for k in ("draft", "verify", "commit")
    }
    return {
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "steps": len(steps),
        "tau": sum(s.committed for s in steps) / len(steps),
        "step_s": sum(split.values()),
        "step_split_s": split,
        "verify_tokens_per_step": statistics.mean(s.verify_tokens for s in steps),
    }


def verify_cost(target, sizes: list[int], prefix: int = 256, repeats: int = 5) -> dict:
    """Median seconds of one verify forward of a chain of n draft tokens (+ root) vs one token."""
    runner = TargetRunner(target.model)
    runner.prefill(torch.randint(100, 1000, (prefix,)))
    out = {"1": _median_verify(runner, DraftTree.chain([]), prefix, repeats, target)}
    for n in sizes:
        out[str(n)] = _median_verify(
            runner, DraftTree.chain(list(range(1, n + 1))), prefix, repeats, target
        )
    return out


def _median_verify(runner, tree, prefix, repeats, target) -> float:
    ids = torch.cat([torch.tensor([7]), tree.tokens])
    times = []
    for _ in range(repeats):
        _sync(target)
        start = time.perf_counter()
        feats = runner.verify(ids, tree_position_offsets(tree), tree_attention_mask(tree))
        runner.logits(feats)
        _sync(target)
        times.append(time.perf_counter() - start)
        runner.commit(prefix, torch.tensor([], dtype=torch.long))
    return statistics.median(times)


def summarize(r: dict) -> dict:
    spec, plain, hf = r["speculative"], r["plain"], r["hf_generate"]
    speedup = spec["tokens_per_s"] / plain["tokens_per_s"]
    ideal = spec["tau"] * plain["step_s"] / spec["step_s"]
    return {
        "plain_vs_generate": plain["tokens_per_s"] / hf["tokens_per_s"],
        "speedup_vs_plain": speedup,
        "speedup_vs_generate": spec["tokens_per_s"] / hf["tokens_per_s"],
        "step_overhead_vs_plain": spec["step_s"] / plain["step_s"],
        "efficiency": speedup / ideal,
    }


def markdown(r: dict) -> str:
    s, sp, pl, hf = r["summary"], r["speculative"], r["plain"], r["hf_generate"]
    split = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in sp["step_split_s"].items())
    cost = ", ".join(f"{k}: {v * 1000:.1f} ms" for k, v in r["verify_cost"].items())
    return "\n".join(
        [
            f"machine: {r['machine']}",
            f"setup: {r['setup']}",
            "",
            "| decoder | tokens | tokens/s | vs generate() |",
            "| --- | --- | --- | --- |",
            f"| transformers generate() | {hf['tokens']} | {hf['tokens_per_s']:.2f} | 1.00 |",
            f"| plain loop (ours) | {pl['tokens']} | {pl['tokens_per_s']:.2f} | "
            f"{s['plain_vs_generate']:.2f} |",
            f"| speculative ({r['setup']['tree']}, tau {sp['tau']:.2f}) | {sp['tokens']} | "
            f"{sp['tokens_per_s']:.2f} | {s['speedup_vs_generate']:.2f} |",
            "",
            f"plain step {pl['step_s'] * 1000:.1f} ms; "
            f"speculative step {sp['step_s'] * 1000:.1f} ms "
            f"({split}); overhead x{s['step_overhead_vs_plain']:.2f} of a plain step",
            f"speedup vs plain loop {s['speedup_vs_plain']:.2f}; efficiency {s['efficiency']:.2f}",
            f"verify forward + logits by draft tokens (chain, 256-token prefix): {cost}",
        ]
    )


if __name__ == "__main__":
    main()
