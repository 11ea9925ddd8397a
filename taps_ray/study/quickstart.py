"""`taps-ray quickstart`: the study end to end on the embedded default target.

Stages, each resumable (Ctrl-C, then the same command continues where it stopped):

1. training data + drafters: math, chat and mixed mixtures x EAGLE-2 and HASS, trained into
   `DIR/drafters/<name>` (a finished drafter is reused; an interrupted one resumes from its
   last checkpoint; target features live in the shared cache and are reused by every run);
2. T = 0 replay bench: every strategy over the EAGLE-2 pair and the HASS pair, single rows for
   the mixed drafters, on the four benchmarks (`DIR/results/`, one file per finished unit);
3. T = 1 live bench on a smaller subset, with plain decoding as the speed baseline;
4. a Ray Tune sweep over the math fraction of the training mixture (`DIR/sweep/`);
5. the speed stage (taps_ray/study/speed_stage.py): this machine's cost profile, the
   specialists and prompt lookup replayed over a grid of tree shapes, predicted tokens/s, the
   best few confirmed live against plain decoding; `DIR/best_config.yaml` is the fastest live
   configuration, or plain decoding when nothing beats it by 5 % (`choose_by="tau"`: the
   highest mean tau at T = 0, the study's ranking);
6. the report (`DIR/report/`: tables.md, tables.csv, PNG plots, report.html), opening with the
   chosen configuration and the profile it was chosen on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from taps_ray.config.loader import from_dict, to_dict
from taps_ray.config.schema import BenchConfig, ExperimentConfig
from taps_ray.errors import TapsError
from taps_ray.study.profiles import DOMAINS, METHODS, STRATEGIES, Profile

REPLAY_RUN, MIXED_RUN, LIVE_RUN = "replay-t0", "replay-t0-mixed", "live-t1"


@dataclass
class QuickstartResult:
    out: Path
    tables: dict  # temperature -> {table name -> DataFrame}, as the report builds them
    speed: list  # the report's live (and predicted) speed tables
    best: dict  # the best_config.yaml contents
    sweep_best: dict | None  # the sweep's best_config.yaml contents (None: no trial reported)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def drafter_config(profile: Profile, domain: str, method: str, out: Path) -> ExperimentConfig:
    """The training run of one specialist (also what `taps-ray plan` shows)."""
    return from_dict(ExperimentConfig, {
        "data": {"mixture": DOMAINS[domain], "total": profile.total, "seed": 0,
                 "max_length": profile.max_length},
        "drafter": {"method": method, "draft_vocab_size": profile.draft_vocab_size,
                    "name": f"{domain}-{method}"},
        "training": {"epochs": profile.epochs, "batch_size": 8, "lr": profile.lr,
                     "warmup_ratio": 0.05, "feature_dtype": "fp16"},
        "tree": asdict(profile.tree),
        "evaluation": _evaluation(profile, profile.sweep_prompts),
        "output_dir": str(out / "train" / f"{domain}-{method}"),
    })


def bench_configs(profile: Profile, out: Path) -> list[BenchConfig]:
    """T = 0 replay of every strategy per specialist pair, the mixed drafters alone, and the
    T = 1 live subset."""
    folder = {f"{d}-{m}": str(out / "drafters" / f"{d}-{m}") for d in DOMAINS for m in METHODS}
    pairs = {m: [folder[f"math-{m}"], folder[f"chat-{m}"]] for m in METHODS}
    common = {"tree": asdict(profile.tree), "seed": profile.seed,
              "max_new_tokens": profile.max_new_tokens, "results_dir": str(out / "results")}
    replay = {**common, "live_prompts_per_benchmark": 0,
              "replay_prompts_per_benchmark": profile.replay_prompts,
              "benchmarks": list(profile.benchmarks)}
    return [
        from_dict(BenchConfig, {**replay, "drafter_sets": pairs, "strategies": STRATEGIES,
                                "run_id": REPLAY_RUN}),
        from_dict(BenchConfig, {**replay, "strategies": ["single"], "run_id": MIXED_RUN,
                                "drafter_sets": {"mixed": [folder[f"mix-{m}"] for m in METHODS]}}),
        from_dict(BenchConfig, {**common, "run_id": LIVE_RUN,
                                "drafter_sets": {m: pairs[m] for m in profile.live_methods},
                                "strategies": profile.live_strategies,
                                "benchmarks": list(profile.live_benchmarks),
                                "replay_prompts_per_benchmark": -1,
                                "live_prompts_per_benchmark": profile.live_prompts,
                                "live_temperatures": [1.0], "baseline": True}),
    ]


def sweep_config(profile: Profile, out: Path):
    """The mixture sweep: EAGLE-2 drafters on the specialists' data at several math fractions."""
    from taps_ray.distributed.sweep import SweepConfig

    base = drafter_config(profile, "mix", "eagle2", out)
    base.drafter.name = ""  # named per trial after its fraction
    base.training.epochs = profile.sweep_epochs
    return from_dict(SweepConfig, {
        "name": "mixture", "base": to_dict(base),
        "space": {"math_fraction": list(profile.sweep_fractions)},
        "metric": "mean_tau", "resources_per_trial": {"CPU": 1},
        "storage_path": str(out / "sweep"), "max_failures": 1,
    })


def run_quickstart(profile: Profile, out: str | Path, *, with_sweep: bool = True,
                   choose_by: str = "speed",
                   log: Callable[[str], None] = print) -> QuickstartResult:
    """Run (or resume) every stage; returns the tables and the chosen configuration."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise TapsError(f"--out '{out}' is a file; give a folder for the quickstart's outputs")
    out.mkdir(parents=True, exist_ok=True)
    from taps_ray.models.target import load_target

    if choose_by not in ("speed", "tau"):
        raise TapsError(f"choose_by '{choose_by}' is unknown; use speed or tau")
    seconds: dict[str, float] = {}
    stages = 6 if with_sweep else 5
    target = load_target()

    def stage(index: int, title: str):
        log(f"\n[{index}/{stages}] {title}")
        return time.perf_counter()

    start = stage(1, f"train 6 drafters (math, chat, mix x {', '.join(METHODS)}; "
                     f"{profile.total} conversations each)")
    train_drafters(profile, out, target, log)
    seconds["train"] = time.perf_counter() - start

    start = stage(2, "T = 0 replay: every strategy on the four benchmarks, then T = 1 live")
    run_benches(profile, out, target, log)
    seconds["bench"] = time.perf_counter() - start

    start = stage(3, "speed: cost profile, tree grid by replay, the fastest confirmed live")
    from taps_ray.study.speed_stage import run_speed_stage

    best, cost = run_speed_stage(profile, out, target, log)
    seconds["speed"] = time.perf_counter() - start
    del target  # the sweep's trials load their own

    sweep_best = None
    if with_sweep:
        start = stage(4, f"Ray Tune sweep over the math fraction {profile.sweep_fractions}")
        sweep_best = run_mixture_sweep(profile, out, log)
        seconds["sweep"] = time.perf_counter() - start

    start = stage(stages - 1, "best configuration")
    if choose_by == "tau":
        from taps_ray.evaluation.results import read_rows

        best = choose_best(read_rows([str(out / "results")]), out)
    from taps_ray.serving.config import BestConfig, save_best_config

    save_best_config(from_dict(BestConfig, best), out / "best_config.yaml")
    log(f"best_config.yaml: {describe_best(best)}")
    seconds["choose"] = time.perf_counter() - start

    start = stage(stages, "report")
    report = write_quickstart_report(out, cost)
    seconds["report"] = time.perf_counter() - start
    return QuickstartResult(out, report.tables, report.speed, best, sweep_best, seconds)


def describe_best(best: dict) -> str:
    if best["strategy"] == "plain":
        return f"plain decoding ({best['reason']})"
    names = ", ".join(Path(d).name for d in best["drafters"])
    tree = best["tree"]
    return (f"{best['strategy']} over {names}, tree {tree['total_tokens']}/{tree['depth']}/"
            f"{tree['top_k']} ({best['metric']} {best['value']})")


def train_drafters(profile: Profile, out: Path, target, log: Callable[[str], None]) -> None:
    from taps_ray.training.checkpoint import publish_folder
    from taps_ray.training.pipeline import train_from_config

    for domain in DOMAINS:
        for method in METHODS:
            cfg = drafter_config(profile, domain, method, out)
            final = out / "drafters" / f"{domain}-{method}"
            if (final / "taps.json").exists():
                log(f"  {domain}-{method}: trained already, reused")
                continue
            start = time.perf_counter()
            result = train_from_config(cfg, target=target, resume=True)
            publish_folder(result.path, final)
            acc = result.summary.get("final_acc")
            log(f"  {domain}-{method}: {result.summary.get('tokens', 0):,} tokens trained in "
                f"{time.perf_counter() - start:.0f} s, final top-1 acc "
                f"{'n/a' if acc is None else f'{acc:.2f}'}")


def run_benches(profile: Profile, out: Path, target, log: Callable[[str], None]) -> None:
    from taps_ray.evaluation.bench import load_drafter_set, run_bench

    for cfg in bench_configs(profile, out):
        run_id, written = run_bench(cfg, lambda name, c=cfg: load_drafter_set(c, name, target),
                                    target)
        log(f"  {run_id}: {written} new rows")


def run_mixture_sweep(profile: Profile, out: Path, log: Callable[[str], None]) -> dict | None:
    """Run the sweep, or resume it, or reuse a finished one; then leave Ray."""
    import ray
    import yaml
    from ray import tune

    from taps_ray.distributed.sweep import experiment_path, run_sweep

    cfg = sweep_config(profile, out)
    path = Path(experiment_path(cfg))
    best_file = path / "best_config.yaml"
    if best_file.exists():
        log(f"  sweep finished already: {path}")
        return yaml.safe_load(best_file.read_text())
    try:
        result = run_sweep(cfg, resume=tune.Tuner.can_restore(str(path)), verbose=1)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    from taps_ray.distributed.outputs import table_markdown

    if len(result.table):
        log(table_markdown(result.table.drop(columns=["trial_id"], errors="ignore")))
    return result.best


def write_quickstart_report(out: Path, cost_profile=None):
    from taps_ray.evaluation.report import build_report, write_report

    report = build_report([str(out / "results")], best_config=out / "best_config.yaml",
                          profile=cost_profile)
    write_report(report, out / "report")
    return report


def choose_best(rows, out: Path) -> dict:
    """The label with the highest mean pooled tau at T = 0, as a best configuration."""
    from taps_ray.evaluation.bench import candidates_for
    from taps_ray.evaluation.report import tau_table

    replay = rows[(rows["temperature"] == 0) & (rows["mode"] == "replay")]
    if replay.empty:
        raise TapsError(f"no T = 0 result rows under '{out / 'results'}'; rerun the quickstart")
    table = tau_table(replay)
    label = str(table["mean"].idxmax())
    row = replay[replay["strategy"] == label].iloc[0]
    names = list(row["drafters"])
    if label in names:  # a single drafter's row is labelled with its name
        cand = candidates_for(["single"], [label], {label: str(row["method"])})[0]
    else:  # combination rows are tagged with their set's name: "merged/sum (eagle2)"
        strategy = label.rsplit(" (", 1)[0]
        cand = candidates_for([strategy], names, {n: str(row["method"]) for n in names})[0]
    return {
        "target": str(row["target"]),
        "drafters": [str(out / "drafters" / n) for n in cand.drafter_names],
        "strategy": cand.strategy,
        "strategy_options": dict(cand.options or {}),
        "tree": {"total_tokens": int(row["total_tokens"]), "depth": int(row["depth"]),
                 "top_k": int(row["top_k"])},
        "metric": "mean_tau",
        "value": round(float(table.loc[label, "mean"]), 4),
    }


def paper_order(labels) -> list[str]:
    """Rows as the study prints them: single drafters (math, chat, mix per method), then each
    strategy over the EAGLE-2 and the HASS pair, then plain decoding; unknown labels last."""
    order = [f"{d}-{m}" for m in METHODS for d in DOMAINS]
    order += [f"{s} ({m})" for s in STRATEGIES[1:] for m in METHODS] + ["plain"]
    rank = {label: i for i, label in enumerate(order)}
    return sorted(labels, key=lambda label: (rank.get(label, len(order)), label))


def _evaluation(profile: Profile, prompts: int) -> dict:
    return {"benchmarks": list(profile.benchmarks), "prompts_per_benchmark": prompts,
            "seed": profile.seed, "max_new_tokens": profile.max_new_tokens}
