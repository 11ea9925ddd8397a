"""Where one verify forward's time goes on this machine (issue 14, item 7), and what the kernel
and cache-compaction variants change.

For n = 1, 4, 16, 60 tokens after a 256-token prefix: wall time of `TargetRunner.verify`, a
torch.profiler split (matmuls, attention, cache copies, mask building, other ops; the rest of the
wall time is Python), the same with oneDNN prepacked linears, and the per-step cost of the old
cache compaction (re-concatenating the prefix in every layer) against the in-place one.

    python benchmarks/verify_profile.py --out docs/bench/verify-profile.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from taps_ray.decoding.kv import compact_cache, prefix_tree_mask
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.models.target import load_target, prepack_linears

SIZES = (1, 4, 16, 60)
CATEGORIES = {  # profiler op name fragment -> category
    "addmm": "matmul", "aten::mm": "matmul", "matmul": "matmul", "linear": "matmul",
    "mkldnn_linear": "matmul", "scaled_dot_product": "attention", "aten::cat": "cache copy",
    "index": "cache copy", "masked_fill": "mask", "zeros": "mask",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="docs/bench/verify-profile.json")
    args = p.parse_args()
    torch.manual_seed(0)
    target = load_target()
    packed = copy.deepcopy(target.model)
    prepack_linears(packed.get_decoder())
    prefix = torch.randint(100, 40000, (args.prefix,))
    report = {"prefix": args.prefix, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "verify_ms": {}, "split_ms": {}, "mask_ms": {}}
    for n in SIZES:  # interleaved: default, prepacked, default, prepacked ...
        times = {"default": [], "prepacked": []}
        for _ in range(args.repeats):
            times["default"].append(verify_once(target.model, prefix, n))
            times["prepacked"].append(verify_once(packed, prefix, n))
        report["verify_ms"][n] = {k: statistics.median(v[2:]) * 1000 for k, v in times.items()}
        report["split_ms"][n] = profile_split(target.model, prefix, n,
                                              report["verify_ms"][n]["default"])
        report["mask_ms"][n] = mask_ms(args.prefix, n)
    t1 = report["verify_ms"][1]["default"]
    report["tv_over_t1"] = {n: v["default"] / t1 for n, v in report["verify_ms"].items()}
    report["compaction_ms"] = compaction_ms(target.model, prefix)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(report, indent=2))
    out.with_suffix(".tmp").rename(out)
    print(markdown(report))


def runner_at(model, prefix) -> TargetRunner:
    runner = TargetRunner(model)
    runner.prefill(prefix)
    return runner


def verify_once(model, prefix, n: int) -> float:
    runner = runner_at(model, prefix)
    ids = torch.randint(100, 40000, (n,))
    tri = torch.ones(n, n, dtype=torch.bool).tril()
    start = time.perf_counter()
    runner.verify(ids, torch.arange(n), tri)
    return time.perf_counter() - start


def profile_split(model, prefix, n: int, wall_ms: float, repeats: int = 5) -> dict:
    """Self CPU time of the ops by category (profiled); the rest of the unprofiled wall time
    `wall_ms` is Python and dispatch (the profiler's own overhead is not in it)."""
    from torch.profiler import ProfilerActivity, profile

    runner = runner_at(model, prefix)
    ids, tri = torch.randint(100, 40000, (n,)), torch.ones(n, n, dtype=torch.bool).tril()
    runner.verify(ids, torch.arange(n), tri)  # warm-up
    runner.commit(len(prefix), torch.arange(0))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            runner.verify(ids, torch.arange(n), tri)
            runner.commit(len(prefix), torch.arange(0))
    split = {"matmul": 0.0, "attention": 0.0, "cache copy": 0.0, "mask": 0.0, "other ops": 0.0}
    for event in prof.key_averages():
        kind = next((c for frag, c in CATEGORIES.items() if frag in event.key), "other ops")
        split[kind] += event.self_cpu_time_total / 1000 / repeats
    split["python and dispatch (wall - ops)"] = wall_ms - sum(split.values())
    return split


def mask_ms(prefix: int, n: int, repeats: int = 50) -> float:
    tri = torch.ones(n, n, dtype=torch.bool).tril()
    start = time.perf_counter()
    for _ in range(repeats):
        prefix_tree_mask(prefix, tri, torch.float32)
    return (time.perf_counter() - start) / repeats * 1000


def old_compact(cache, past_len: int, keep: torch.Tensor) -> None:
    """The compaction before this change: the prefix re-concatenated in every layer."""
    for layer in cache.layers:
        idx = keep + past_len
        layer.keys = torch.cat([layer.keys[..., :past_len, :], layer.keys[..., idx, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :past_len, :], layer.values[..., idx, :]],
                                 dim=-2)


def compaction_ms(model, prefix, repeats: int = 15) -> dict:
    keep = torch.tensor([0, 2, 5])  # a tree path: entries move
    out = {}
    for name, fn in (("old (cat prefix)", old_compact), ("in place", compact_cache)):
        times = []
        for _ in range(repeats):
            runner = runner_at(model, prefix)
            runner.verify(torch.randint(100, 40000, (8,)), torch.arange(8),
                          torch.ones(8, 8, dtype=torch.bool).tril())
            start = time.perf_counter()
            with torch.inference_mode():
                fn(runner.cache, len(prefix), keep)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1000
    return out


def markdown(r: dict) -> str:
    lines = ["| n | Tv default ms | Tv prepacked ms | Tv/T1 default | matmul | attention | "
             "cache copy | mask | other ops | python + dispatch |", "| --- |" + " --- |" * 9]
    for n in SIZES:
        v, s = r["verify_ms"][n], r["split_ms"][n]
        lines.append(f"| {n} | {v['default']:.1f} | {v['prepacked']:.1f} | "
                     f"{r['tv_over_t1'][n]:.2f} | {s['matmul']:.1f} | {s['attention']:.1f} | "
                     f"{s['cache copy']:.1f} | {s['mask']:.1f} | {s['other ops']:.1f} | "
                     f"{s['python and dispatch (wall - ops)']:.1f} |")
    c = r["compaction_ms"]
    lines.append(f"\ncache compaction per step (kv {r['prefix']} + 8, keep 3): "
                 + ", ".join(f"{k} {v:.2f} ms" for k, v in c.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
