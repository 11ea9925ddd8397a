"""Throughput of feature extraction vs raw prefill, and of a short training run.

    python -m taps_ray.training.bench_features [--n 200] [--max-length 512] [--steps 10]

On the same rendered conversations and the same length-sorted batches it times (1) the target's
raw batched prefill (`get_decoder()` forward, nothing kept), (2) building a feature cache (the
forward plus the fp16 cast and shard writes) and (3) EAGLE-2 and HASS training steps from that
cache. Prints one JSON object; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m taps_ray.training.bench_features")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--device", default=None)
    p.add_argument("--source", default="math", help="mixture domain of the conversations")
    p.add_argument("--n", type=int, default=200, help="conversations")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward")
    p.add_argument("--steps", type=int, default=10, help="training steps per method (0: skip)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--draft-vocab", type=int, default=0, help="0: full vocabulary")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--synthetic", default=None, help="config.json: random weights and ids")
    return p.parse_args(argv)


def raw_prefill(target, examples, budget: int) -> dict:
    """Batched decoder forwards over the same batches the cache builder uses; nothing kept."""
    from taps_ray.training.extract import forward_features, length_batches

    decoder = target.model.get_decoder()
    batches = length_batches([len(e.input_ids) for e in examples], budget)
    forward_features(decoder, [examples[batches[-1][0]].input_ids], target.device)  # warm-up
    tokens, padded, began = 0, 0, _now(target)
    for batch in batches:
        ids = [examples[i].input_ids for i in batch]
        forward_features(decoder, ids, target.device)
        tokens += sum(len(x) for x in ids)
        padded += len(ids) * max(len(x) for x in ids)
    seconds = _now(target) - began
    return {"tokens": tokens, "padded_tokens": padded, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "batches": len(batches)}


def cache_build(target, examples, root: Path, args) -> tuple[object, dict]:
    from taps_ray.training.examples import DataSpec
    from taps_ray.training.features import FeatureCache, FeatureSpec

    data = DataSpec(f"{args.source}=1.0", len(examples), 0, args.max_length)
    spec = FeatureSpec.for_target(target, data, "fp16")
    began = time.perf_counter()
    cache = FeatureCache.build(target, examples, spec, root=root, max_batch_tokens=args.budget)
    seconds = time.perf_counter() - began
    disk = sum(p.stat().st_size for p in cache.folder.iterdir())
    return cache, {"tokens_per_s": cache.extract_tokens_per_s, "wall_s": round(seconds, 2),
                   "wall_tokens_per_s": round(cache.manifest["tokens"] / seconds, 1),
                   "disk_mib": round(disk / 2**20, 1)}


def training(target, cache, args, root: Path) -> dict:
    from taps_ray.config.schema import TrainingConfig
    from taps_ray.training.pipeline import draft_vocab_for
    from taps_ray.training.trainer import train_drafter
    from taps_ray.training.trainlog import read_log

    vocab = draft_vocab_for(target, cache, args.draft_vocab)
    cfg = TrainingConfig(epochs=1000, max_steps=args.steps, batch_size=args.batch_size)
    out = {}
    for method in ("eagle2", "hass"):
        # Drop step 1 (allocator warm-up) by timing steps 2..N from the log.
        result = train_drafter(target, cache, cfg, root / method, method=method,
                               draft_vocab=vocab, progress=False)
        rows = read_log(root / method / "train_log.jsonl")
        steps = [r for r in rows if r["event"] == "step"][1:]
        tokens, seconds = sum(r["tokens"] for r in steps), sum(
            r["tokens"] / r["tokens_per_s"] for r in steps)
        out[method] = {"steps": result.state.step, "tokens_per_s": round(tokens / seconds, 1),
                       "s_per_step": round(seconds / max(len(steps), 1), 3),
                       "final_loss": round(steps[-1]["loss"], 3) if steps else None}
    return out


def real_inputs(args) -> tuple[object, list, int]:
    """The named target and `n` rendered conversations of `source`."""
    from taps_ray.data.mixture import build_mixture
    from taps_ray.models.target import load_target
    from taps_ray.training.examples import render_examples

    target = load_target(args.target, device=args.device)
    records = build_mixture(f"{args.source}=1.0", args.n, seed=0).records
    examples, skipped = render_examples(target.tokenizer, records, args.max_length)
    return target, examples, skipped


def synthetic_inputs(args) -> tuple[object, list, int]:
    """A random model of the config's architecture and random conversations (1/3 prompt)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from taps_ray.data.render import RenderedExample
    from taps_ray.models.target import Target, default_device, default_dtype

    device = torch.device(args.device) if args.device else default_device()
    dtype = default_dtype(device)
    config = AutoConfig.from_pretrained(args.synthetic)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(args.n):
        length = int(torch.randint(args.max_length // 4, args.max_length + 1, (1,), generator=gen))
        ids = torch.randint(0, config.vocab_size, (length,), generator=gen).tolist()
        examples.append(RenderedExample(ids, [0] * (length // 3) + [1] * (length - length // 3)))
    target = Target(f"synthetic:{args.synthetic}", model.requires_grad_(False), None, device, dtype)
    return target, examples, 0


def main(argv: list[str] | None = None) -> int:
    from taps_ray.training.extract import default_batch_tokens

    args = parse_args(argv)
    target, examples, skipped = (synthetic_inputs if args.synthetic else real_inputs)(args)
    budget = args.budget = args.batch_tokens or default_batch_tokens(target.device)
    report = {"target": target.name, "device": str(target.device), "dtype": str(target.dtype),
              "threads": torch.get_num_threads(), "conversations": len(examples),
              "skipped": skipped, "max_length": args.max_length, "batch_tokens": budget,
              "load_avg_before": os.getloadavg()}
    report["raw_prefill"] = raw_prefill(target, examples, budget)
    with tempfile.TemporaryDirectory() as tmp:
        cache, report["feature_cache"] = cache_build(target, examples, Path(tmp), args)
        report["extract_vs_raw"] = round(
            report["feature_cache"]["tokens_per_s"] / report["raw_prefill"]["tokens_per_s"], 3)
        if args.steps:
            report["training"] = training(target, cache, args, Path(tmp) / "train")
    report["load_avg_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _now(target) -> float:
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


if __name__ == "__main__":
    sys.exit(main())
