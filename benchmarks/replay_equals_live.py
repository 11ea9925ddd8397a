"""Replay equals live for every strategy on the default target with the trained specialists.

For each strategy over the quickstart's two specialists (HASS heads when both have one layout,
else EAGLE-2), every prompt turn is decoded live at T = 0 (`SpeculativeEngine`, fixed policy)
and replayed twice: through the bench's path (`runner.replay_candidates`: shared batched trees,
one row per turn) and through `replay.replay` over the live engine's own sessions (per-step
acceptance). Recorded per strategy: pooled tau live and replay, whether the live tokens equal
plain greedy decoding, whether every step's accepted length (within the token budget) and route
equal live, and the deepest accepted path (within the budget).

    nice -n 10 python benchmarks/replay_equals_live.py --out docs/results/replay-equals-live.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.decoding.engine import SpeculativeEngine
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.errors import TapsError
from taps_ray.evaluation.bench import candidates_for
from taps_ray.evaluation.replay import continuations, replay, teacher_features
from taps_ray.evaluation.report import write_atomic
from taps_ray.evaluation.runner import Candidate, replay_candidates
from taps_ray.models.drafter import load_drafter
from taps_ray.models.target import load_target
from taps_ray.training.averaging import check_same_architecture

STRATEGIES = ["single", "average", "route-confidence/step", "route-confidence/prompt",
              "route-entropy/step", "route-entropy/prompt", "merged/sum", "merged/matched",
              "bandit"]
BENCHMARKS = ["gsm8k", "mt_bench", "math500", "svamp"]
GREEDY = SamplingParams()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.target)
    names, drafters = specialists(Path(args.drafters), target)
    tree = TreeConfig(*map(int, args.tree.split("/")))
    records = [r for b in BENCHMARKS for r in benchmark_subset(b, args.prompts, args.seed)]
    prompts = continuations(target, records, args.max_new_tokens)
    methods = {n: getattr(d.meta, "method", "none") for n, d in drafters.items()}
    wanted = args.only.split(",") if args.only else STRATEGIES
    cands = [c for c in candidates_for(wanted, names, methods)
             if c.label not in finished(args).get("strategies", {})]
    start = time.perf_counter()
    rows = replay_candidates(target, drafters, cands, tree, prompts, progress=False)
    strategies = {}
    for cand in cands:
        if cand.label in finished(args).get("strategies", {}):
            continue  # a parallel run (--only) did it meanwhile
        mine = [r for r in rows if r.strategy == cand.label]
        strategies[cand.label] = compare(target, drafters, cand, tree, prompts, mine,
                                         args.max_new_tokens)
        print(cand.label, json.dumps(strategies[cand.label]), flush=True)
        write(args, names, prompts, strategies, start)
    print("all_equal:", all_equal(strategies), "->", args.out)


def finished(args) -> dict:
    """The output so far when it is of the same settings (a rerun resumes), else {}."""
    path = Path(args.out)
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    same = all(old.get(k) == v for k, v in settings(args).items())
    return old if same else {}


def settings(args) -> dict:
    return {"target": args.target, "tree": args.tree, "prompts_per_benchmark": args.prompts,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed}


def all_equal(strategies: dict) -> bool:
    return all(s["tokens_equal_plain"] and s["steps_equal"] and s["rows_equal"]
               for s in strategies.values())


def write(args, names, prompts, strategies: dict, start: float) -> None:
    """The JSON so far, merged with what is on disk of the same settings (rewritten after each
    strategy, so a stopped run keeps what it did and parallel --only runs add up)."""
    merged = {**finished(args).get("strategies", {}), **strategies}
    labels = [c.label for c in candidates_for(STRATEGIES, names, dict.fromkeys(names, "x"))]
    out = {
        **settings(args), "command": "python benchmarks/replay_equals_live.py "
        + " ".join(a for a in args.argv if not a.startswith("--only")),
        "drafters": {n: str(Path(args.drafters) / n) for n in names},
        "benchmarks": BENCHMARKS, "prompt_turns": len(prompts), "temperature": 0.0,
        "threads": args.threads, "machine": platform.machine(), "torch": torch.__version__,
        "complete": set(labels) <= set(merged), "all_equal": all_equal(merged),
        "strategies": {k: merged[k] for k in labels if k in merged},
    }
    write_atomic(Path(args.out), (json.dumps(out, indent=1) + "\n").encode())


def specialists(folder: Path, target) -> tuple[list[str], dict]:
    """The math and chat specialists: HASS when both are trained in one layout (`average`
    needs the same architecture), else EAGLE-2."""
    for method in ("hass", "eagle2"):
        names = [f"math-{method}", f"chat-{method}"]
        if not all((folder / n / "taps.json").is_file() for n in names):
            continue
        drafters = {n: load_drafter(str(folder / n), target) for n in names}
        try:
            check_same_architecture(list(drafters.values()))
        except TapsError as err:
            print(f"skipping the {method} pair: {err}")
            continue
        return names, drafters
    raise SystemExit(f"no math/chat specialist pair of one layout under {folder}; "
                     "run taps-ray quickstart first")


def compare(target, drafters: dict, cand: Candidate, tree: TreeConfig, prompts, rows,
            max_new: int) -> dict:
    """Live vs replay of one strategy over every prompt turn."""
    chosen = [drafters[n] for n in cand.drafter_names]
    committed = {"live": 0, "replay": 0, "rows": 0}
    steps = {"live": 0, "replay": 0, "rows": 0}
    same_tokens = same_steps = same_rows = True
    deepest = 0
    for item, row in zip(prompts, rows, strict=True):
        engine = SpeculativeEngine(target, chosen, tree, cand.strategy, **(cand.options or {}))
        live = engine.generate(item.prompt_ids, GREEDY, max_new)
        result = replay(engine.sessions, engine.strategy, item,
                        teacher_features(engine.runner, item), tree)
        live_accepted = within_budget([s.accepted for s in live.steps],
                                      [s.committed for s in live.steps])
        same_tokens &= live.tokens == item.continuation
        same_steps &= (within_budget(result.accepted, result.committed) == live_accepted
                       and result.committed == [s.committed for s in live.steps]
                       and result.routes == [s.route for s in live.steps])
        same_rows &= row.steps == len(live.steps) and abs(row.tau - live.tau) < 1e-12
        deepest = max([deepest, *live_accepted])
        for key, n, k in (("live", sum(s.committed for s in live.steps), len(live.steps)),
                          ("replay", sum(result.committed), result.steps),
                          ("rows", round(row.tau * row.steps), row.steps)):
            committed[key] += n
            steps[key] += k
    return {
        "tau_live": round(committed["live"] / steps["live"], 4),
        "tau_replay": round(committed["replay"] / steps["replay"], 4),
        "tau_replay_bench": round(committed["rows"] / steps["rows"], 4),
        "steps": steps["live"], "tokens_equal_plain": same_tokens,
        "steps_equal": same_steps, "rows_equal": same_rows, "max_accepted_depth": deepest,
    }


def within_budget(accepted: list[int], committed: list[int]) -> list[int]:
    """Accepted lengths as far as the token budget lets them count: on the last step live
    verification may accept draft tokens past max_new_tokens (then cut), which replay, walking
    a continuation of exactly that length, never sees."""
    return [min(a, c) for a, c in zip(accepted, committed, strict=True)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--drafters", default="runs/quickstart/drafters")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--tree", default="60/5/10", help="total_tokens/depth/top_k")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default="docs/results/replay-equals-live.json")
    parser.add_argument("--only", default="", help="comma-separated strategies of STRATEGIES "
                        "(a parallel or partial run; results merge into --out)")
    args = parser.parse_args()
    import sys

    args.argv = sys.argv[1:]
    return args


if __name__ == "__main__":
    main()
