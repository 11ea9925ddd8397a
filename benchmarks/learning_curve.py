"""Learning curve (issue 18, deliverable 3): replay tau on the four benchmarks vs training tokens.

Heads are trained on nested prefixes (roughly doubling) of the target's own regenerated answers
(self-distillation: `runs/selfdistill/regen.py` fills the cache), one head per method and size,
all with the same recipe; each is replayed at T = 0 on the same benchmark prompts. A log-linear
fit tau = a + b * log2(tokens) per method and benchmark gives the tau a larger recipe would
reach, estimated rather than guessed. Every stage resumes: features, heads and evaluations
already on disk are reused.

    python benchmarks/learning_curve.py [--sizes 150,300,600,1200] [--methods eagle2,hass]
        [--epochs 2] [--runs runs/learning-curve] [--out docs/results/learning-curve]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

BENCHES = ["mt_bench", "gsm8k", "math500", "svamp"]
REGEN = {"mixture": "math=1.0", "total": 4800, "seed": 0, "max_length": 384, "max_new": 192}


def regen_config(regen: dict = REGEN):
    """The DataConfig of the background regeneration run `regen` (its cache keys)."""
    from taps_ray.config.schema import DataConfig

    return DataConfig(mixture=regen["mixture"], total=regen["total"], seed=regen["seed"],
                      max_length=regen["max_length"], regenerate=True,
                      regenerate_max_new_tokens=regen["max_new"], regenerate_batch_size=32,
                      max_turns=regen.get("max_turns", 0))


def regenerated_prefix(target, limit: int, regen: dict = REGEN) -> list:
    """The first `limit` records of the background regeneration run `regen` whose answers are
    cached (finished shards only: the run may still be going)."""
    from taps_ray.training.examples import DataSpec
    from taps_ray.training.regenerate import cached_prefix

    spec = DataSpec.from_config(regen_config(regen))
    records, _ = spec.draw()
    done = cached_prefix(target, records, spec.as_dict(), regen["max_new"])
    return done[:limit]


def category_draw(regen: dict, category: str, after: int) -> tuple[list, dict]:
    """The records of one sub-source (e.g. gsm8k) in the regeneration run `regen`'s draw after
    its first `after` records (those the run itself answers first), and the cache key of their
    own regeneration run."""
    from taps_ray.training.examples import DataSpec

    spec = DataSpec.from_config(regen_config(regen))
    records, _ = spec.draw()
    chosen = [r for r in records[after:] if r.category == category]
    return chosen, {**spec.as_dict(), "category": category, "after": after}


def category_prefix(target, regen: dict, category: str, after: int) -> list:
    """The answered records of the `category` run after `after` (finished shards only)."""
    from taps_ray.training.regenerate import cached_prefix

    chosen, key = category_draw(regen, category, after)
    return cached_prefix(target, chosen, key, regen["max_new"])


def features_for(target, records: list, size: int, method: str, regen: dict = REGEN,
                 category: str = "", extra: list | None = None):
    """The feature cache of the first `size` regenerated conversations (built once; with the
    aux layers for EAGLE-3); `category`: only those of one sub-source (e.g. gsm8k); `extra`:
    more regenerated records of that sub-source from later in the draw (`category_prefix`)."""
    from taps_ray.training.examples import DataSpec, render_examples
    from taps_ray.training.features import FeatureCache, FeatureSpec
    from taps_ray.training.pipeline import method_aux_layers

    chosen = [r for r in records[:size] if not category or r.category == category]
    label = f"{regen['mixture']} regenerated, first {size} of {regen['total']}"
    if category:
        label += f", {category} only ({len(chosen)})"
    if extra:
        chosen += extra
        label += f" + the next {len(extra)} {category} questions of the draw"
    examples, _ = render_examples(target.tokenizer, chosen, regen["max_length"])
    spec = DataSpec(label, size, regen["seed"], regen["max_length"], True, regen["max_new"],
                    regen.get("max_turns", 0))
    aux = method_aux_layers(target, method)
    return FeatureCache.build(target, examples, FeatureSpec.for_target(target, spec, "fp16", aux))


def loss_tokens(source) -> int:
    return sum(int(mask.sum()) for _, mask in source.token_arrays())


def train(target, source, method: str, size: int, epochs: int, folder: Path,
          regen: dict = REGEN, name: str = "", **training):
    """One head (resumed from its checkpoint when interrupted); returns its folder.
    `training`: more TrainingConfig fields (e.g. holdout, patience, lr, init_from); `name`: the
    head's name (default <domain><size>-<method>)."""
    from taps_ray.config.schema import TrainingConfig
    from taps_ray.models.drafter import DrafterMeta, tokenizer_fingerprint
    from taps_ray.training.pipeline import draft_vocab_for
    from taps_ray.training.trainer import train_drafter

    drafter = folder / "drafter"
    if (drafter / "taps.json").is_file():
        return drafter
    cfg = replace(TrainingConfig(), **{"epochs": epochs, "lr": 5e-4, "w_topk": 1.0, **training})
    vocab = draft_vocab_for(target, source, 0, method)  # EAGLE-3: its own 8192-token head
    domain = regen["mixture"].partition("=")[0]
    meta = DrafterMeta(name=name or f"{domain}{size}-{method}", target=str(target.name),
                       tokenizer_fingerprint=tokenizer_fingerprint(target.tokenizer),
                       data={"mixture": regen["mixture"], "total": regen["total"],
                             "seed": regen["seed"], "regenerated": regen,
                             "conversations": size})  # the draw: calibration excludes it
    resume = (folder / "checkpoints").is_dir()
    result = train_drafter(target, source, cfg, folder, method=method, meta=meta,
                           draft_vocab=vocab, resume=resume)
    return result.path


def evaluate(target, drafter_dir: Path, prompts, out: Path) -> dict:
    from taps_ray.config.schema import TreeConfig
    from taps_ray.evaluation.runner import replay_taus
    from taps_ray.models.drafter import load_drafter

    if out.is_file():
        return json.loads(out.read_text())
    taus = replay_taus(target, load_drafter(drafter_dir, target), TreeConfig(60, 5, 10), prompts)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(taus, indent=2) + "\n")
    os.replace(tmp, out)
    return taus


def fit(points: list[tuple[float, float]]) -> dict:
    """Least squares tau = a + b * log2(tokens); r2 and the tau at 10x and 100x the largest."""
    xs, ys = [math.log2(x) for x, _ in points], [y for _, y in points]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1e-12
    top = max(x for x, _ in points)
    return {"a": round(a, 4), "b_per_doubling": round(b, 4), "r2": round(1 - ss_res / ss_tot, 3),
            "n": n, "tau_at_10x": round(a + b * math.log2(10 * top), 3),
            "tau_at_100x": round(a + b * math.log2(100 * top), 3)}


def plot(rows: list[dict], fits: dict, path: Path) -> None:
    """tau vs tokens per benchmark and the mean, one line per method, its fit dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*BENCHES, "mean"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.4), sharey=True)
    for ax, bench in zip(axes, cols, strict=True):
        for k, method in enumerate(sorted({r["method"] for r in rows})):
            pts = sorted((r["loss_tokens_seen"], r["tau"][bench]) for r in rows
                         if r["method"] == method)
            color = f"C{k}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=method)
            if method in fits:
                f, xs = fits[method][bench], [pts[0][0], pts[-1][0] * 4]
                ax.plot(xs, [f["a"] + f["b_per_doubling"] * math.log2(x) for x in xs], "--",
                        color=color, linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(bench)
        ax.set_xlabel("assistant tokens seen")
    axes[0].set_ylabel("replay tau (T = 0, 60/5/10)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="150,300,600,1200")
    parser.add_argument("--methods", default="eagle2,hass")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8, help="replay prompts per benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--runs", default="runs/learning-curve")
    parser.add_argument("--out", default="docs/results/learning-curve")
    parser.add_argument("--summarize", action="store_true",
                        help="only rebuild summary.json and the plot from the heads evaluated")
    args = parser.parse_args()
    import torch

    from taps_ray.config.schema import EvaluationConfig
    from taps_ray.evaluation.runner import replay_prompts
    from taps_ray.models.target import load_target

    torch.set_num_threads(2)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    methods = args.methods.split(",")
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target("smollm2-135m-instruct")
    records = regenerated_prefix(target, max(sizes))
    if len(records) < max(sizes):
        sys.exit(f"only {len(records)} regenerated answers are cached, {max(sizes)} needed; "
                 "let runs/selfdistill/regen.py run longer or pass smaller --sizes")
    if args.summarize:
        return summarize(target, records, out, runs, args)
    evaluation = EvaluationConfig(benchmarks=BENCHES, prompts_per_benchmark=args.prompts,
                                  seed=1, max_new_tokens=args.max_new_tokens)
    prompts = replay_prompts(target, evaluation)
    for size in sizes:
        for method in methods:
            start = time.time()
            source = features_for(target, records, size, method)
            drafter = train(target, source, method, size, args.epochs, runs / f"{method}-{size}")
            taus = evaluate(target, drafter, prompts, out / f"{method}-{size}.json")
            print(f"{method} {size}: tau {taus} ({time.time() - start:.0f} s)", flush=True)
    summarize(target, records, out, runs, args)


def summarize(target, records: list, out: Path, runs: Path, args) -> None:
    """summary.json, the fits and the plot over every head evaluated so far (several runs of
    this script, e.g. one per method, write into the same folder)."""
    rows = []
    for path in sorted(out.glob("*-*.json")):
        method, _, size = path.stem.rpartition("-")
        if not size.isdigit():
            continue
        source = features_for(target, records, int(size), method)
        meta = json.loads((runs / path.stem / "drafter" / "taps.json").read_text())
        training = meta["extra"]["training"]
        tokens = loss_tokens(source)
        rows.append({"method": method, "conversations": int(size), "loss_tokens": tokens,
                     "epochs": training["epochs_done"],
                     "loss_tokens_seen": tokens * training["epochs_done"],
                     "final_loss": round(training["final_loss"], 4),
                     "final_acc": round(training["final_acc"], 4),
                     "tau": json.loads(path.read_text())})
    rows.sort(key=lambda r: (r["method"], r["conversations"]))
    methods = sorted({r["method"] for r in rows})
    fits = {m: {b: fit([(r["loss_tokens_seen"], r["tau"][b]) for r in rows
                        if r["method"] == m]) for b in [*BENCHES, "mean"]}
            for m in methods if sum(r["method"] == m for r in rows) >= 2}
    summary = {"recipe": {"regenerated": REGEN, "epochs": args.epochs, "tree": "60/5/10",
                          "replay": {"prompts_per_benchmark": args.prompts, "seed": 1,
                                     "max_new_tokens": args.max_new_tokens}},
               "rows": rows, "fits": fits}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, fits, out / "learning-curve.png")
    print(markdown(summary))


NAMES = {"mt_bench": "MT-Bench", "gsm8k": "GSM8K", "math500": "MATH-500", "svamp": "SVAMP",
         "mean": "mean"}
FIT_ROWS = {"tau per doubling": "b_per_doubling", "R2": "r2", "tau at 10x": "tau_at_10x",
            "tau at 100x": "tau_at_100x"}


def markdown(summary: dict) -> str:
    """The two tables of docs/results.md (tests/test_docs_figures.py checks them)."""
    cols = [*BENCHES, "mean"]
    head = "| head | assistant tokens seen | " + " | ".join(NAMES[b] for b in cols)
    lines = [head + " | final top-1 acc |", "|" + " --- |" * (len(cols) + 3)]
    for r in summary["rows"]:
        taus = " | ".join(f"{r['tau'][b]:.2f}" for b in cols)
        lines.append(f"| {r['method']}-{r['conversations']} | {r['loss_tokens_seen']} | {taus} "
                     f"| {r['final_acc']:.3f} |")
    source = ("Source: `docs/results/learning-curve/summary.json` "
              "(`python benchmarks/learning_curve.py`)")
    fit_head = "| fit: tau = a + b log2(tokens) | " + " | ".join(NAMES[b] for b in cols) + " |"
    lines += ["", source, "", fit_head, "|" + " --- |" * (len(cols) + 1)]
    for method, fits in summary["fits"].items():
        for label, key in FIT_ROWS.items():
            lines.append(f"| {method} {label} | "
                         + " | ".join(f"{fits[b][key]:.3f}" for b in cols) + " |")
    return "\n".join([*lines, "", source])


if __name__ == "__main__":
    main()
