"""`taps-ray plan CONFIG`: validate a config and print what it would run, without running it.

CONFIG may be a study (experiments/paper/study_*.yaml: data variants x methods, then the
combination bench, and any `published_drafters` as single rows once imported), a training run,
a bench matrix or a sweep. The plan lists the trainings and evaluations, and estimates GPU-hours
and storage from the target's size (read from a local folder's config.json, or from the table
below for published targets; no download) and the token counts of the local training data. The
estimates assume one H100 at the rates in `GpuRates`; they are for budgeting, not promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from taps_ray.config.loader import apply_overrides, from_dict, load_yaml, to_dict
from taps_ray.config.schema import (
    BENCHMARKS,
    BenchConfig,
    DataConfig,
    DrafterConfig,
    ExperimentConfig,
    TargetConfig,
    TrainingConfig,
    TreeConfig,
)
from taps_ray.errors import TapsError


@dataclass(frozen=True)
class ModelShape:
    params: float  # all parameters, embeddings included
    hidden: int
    layers: int
    intermediate: int
    vocab: int


# published shapes (their config.json files), so a plan needs no hub access
KNOWN_TARGETS = {
    "smollm2-135m-instruct": ModelShape(134.5e6, 576, 30, 1536, 49152),
    "meta-llama/Meta-Llama-3-8B-Instruct": ModelShape(8.03e9, 4096, 32, 14336, 128256),
    "Qwen/Qwen3-1.7B": ModelShape(2.03e9, 2048, 28, 6144, 151936),
    "Qwen/Qwen3-4B": ModelShape(4.02e9, 2560, 36, 9728, 151936),
    "lmsys/vicuna-13b-v1.3": ModelShape(13.0e9, 5120, 40, 13824, 32000),
}
# benchmark sizes (prompts, turns per prompt) when prompts_per_benchmark is 0 (all)
BENCH_SIZE = {"mt_bench": (80, 2), "gsm8k": (1319, 1), "math500": (500, 1), "svamp": (1000, 1)}
CHARS_PER_TOKEN = 3.8  # English/code average of BPE tokenizers with 32k-150k vocabularies


@dataclass(frozen=True)
class GpuRates:
    """One H100 SXM, bf16: what the estimates assume."""

    flops: float = 989e12 * 0.4  # dense bf16 peak x 40 % utilisation (prefill, training)
    bandwidth: float = 3.35e12 * 0.6  # HBM bytes/s x 60 %: a decoding step reads the weights
    tau: float = 3.0  # acceptance length assumed for trained drafters (tokens per step)
    step_overhead: float = 1.3  # tree verification + drafting vs a plain one-token step


METHODS = ("eagle2", "hass")


@dataclass
class PublishedDrafter:
    """A head someone published (EAGLE / HASS / the study's), evaluated as a row once imported."""

    path: str  # the downloaded checkpoint folder `taps-ray drafter import` reads
    method: str = "hass"  # how it was trained: eagle2 or hass

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path is empty; give the checkpoint folder to import")
        if self.method not in METHODS:
            raise ValueError(f"method '{self.method}' is unknown; use eagle2 or hass")


@dataclass
class StudySpec:
    """A study: every data variant x method is trained, then the pairs are combined."""

    name: str = "study"
    target: TargetConfig = field(default_factory=TargetConfig)
    variants: dict[str, DataConfig] = field(default_factory=dict)  # name -> training data
    methods: list[str] = field(default_factory=lambda: ["eagle2", "hass"])
    drafter: DrafterConfig = field(default_factory=DrafterConfig)  # name is set per run
    training: TrainingConfig = field(default_factory=TrainingConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    specialists: list[str] = field(default_factory=list)  # variants combined by strategies
    strategies: list[str] = field(default_factory=lambda: ["single"])
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    prompts_per_benchmark: int = 0  # T = 0 prompts per benchmark (0: every prompt)
    live_prompts_per_benchmark: int = 0  # live decoding subset at the T > 0 temperatures
    max_new_tokens: int = 512
    output_dir: str = "runs/paper/study"
    # name (<data>-<method>) -> published checkpoint, imported into <output_dir>/published/<name>
    # and benched as a single row beside the trained drafters
    published_drafters: dict[str, PublishedDrafter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants is empty; name at least one training data variant")
        missing = [s for s in self.specialists if s not in self.variants]
        if missing:
            raise ValueError(f"specialists names '{missing[0]}', which is not in variants "
                             f"({', '.join(self.variants)})")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"methods has '{bad[0]}'; use eagle2 and/or hass")
        for name, pub in self.published_drafters.items():
            self._check_published_name(name, pub.method)

    def _check_published_name(self, name: str, method: str) -> None:
        data, sep, suffix = name.rpartition("-")
        if not sep or not data or "-" in data or suffix != method:
            raise ValueError(f"published_drafters name '{name}' must be <data>-<method> with one "
                             f"hyphen and its method last (e.g. mathpub-{method})")
        if data in self.variants and method in self.methods:
            raise ValueError(f"published_drafters name '{name}' is also a trained drafter's "
                             "name; give the published one its own data part (e.g. "
                             f"{data}pub-{method})")

    def published_folder(self, name: str) -> str:
        """Where `taps-ray drafter import` writes the published drafter `name`."""
        return f"{self.output_dir}/published/{name}"

    def import_commands(self) -> list[str]:
        """The imports a study's published rows need before `taps-ray bench`."""
        return [f"taps-ray drafter import {pub.path} --target {self.target.name} --out "
                f"{self.published_folder(name)} --name {name} --method {pub.method}"
                for name, pub in self.published_drafters.items()]

    def trainings(self) -> list[ExperimentConfig]:
        runs = []
        for variant, data in self.variants.items():
            for method in self.methods:
                drafter = {**to_dict(self.drafter), "method": method,
                           "name": f"{variant}-{method}"}
                runs.append(from_dict(ExperimentConfig, {
                    "target": to_dict(self.target), "data": to_dict(data), "drafter": drafter,
                    "training": to_dict(self.training), "tree": to_dict(self.tree),
                    "output_dir": f"{self.output_dir}/{variant}-{method}",
                }))
        return runs

    def benches(self) -> list[BenchConfig]:
        """Every strategy over each method's specialists; the other variants as single rows."""
        folder = {f"{v}-{m}": f"{self.output_dir}/{v}-{m}/drafter"
                  for v in self.variants for m in self.methods}
        out = []
        if self.specialists:
            out.append(self._bench({m: [folder[f"{v}-{m}"] for v in self.specialists]
                                    for m in self.methods}, self.strategies))
        others = [v for v in self.variants if v not in self.specialists]
        if others:
            out.append(self._bench({v: [folder[f"{v}-{m}"] for m in self.methods]
                                    for v in others}, ["single"]))
        if self.published_drafters:
            # plain decoding is already measured by the benches above
            out.append(self._bench({n: [self.published_folder(n)]
                                    for n in self.published_drafters}, ["single"], False))
        return out

    def _bench(self, sets: dict[str, list[str]], strategies: list[str], baseline: bool = True
               ) -> BenchConfig:
        return from_dict(BenchConfig, {
            "target": to_dict(self.target), "tree": to_dict(self.tree), "drafter_sets": sets,
            "strategies": strategies, "benchmarks": self.benchmarks,
            "max_new_tokens": self.max_new_tokens,
            "replay_prompts_per_benchmark": self.prompts_per_benchmark,
            "live_prompts_per_benchmark": self.live_prompts_per_benchmark,
            "live_temperatures": [t for t in self.temperatures if t > 0],
            "results_dir": f"{self.output_dir}/results", "baseline": baseline,
        })


@dataclass
class Plan:
    kind: str
    target: str
    shape: ModelShape | None
    trainings: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        keys = ("feature_gib", "gpu_h_features", "gpu_h_train")
        out = {k: sum(t[k] for t in self.trainings if t[k] is not None) for k in keys}
        out["gpu_h_eval"] = sum(e["gpu_h"] for e in self.evaluations if e["gpu_h"] is not None)
        out["gpu_h"] = out["gpu_h_features"] + out["gpu_h_train"] + out["gpu_h_eval"]
        return out


def load_plan_config(path: str, overrides: list[str] | None = None):
    """The config at `path` as the kind it is (detected from its top-level keys)."""
    data = apply_overrides(load_yaml(path), overrides or [])
    if "variants" in data:
        return "study", from_dict(StudySpec, data)
    if "drafter_sets" in data:
        return "bench", from_dict(BenchConfig, data)
    if "space" in data or "base" in data:
        from taps_ray.distributed.sweep import SweepConfig

        return "sweep", from_dict(SweepConfig, data)
    return "training", from_dict(ExperimentConfig, data)


def make_plan(path: str, overrides: list[str] | None = None, rates: GpuRates = GpuRates()
              ) -> Plan:
    kind, cfg = load_plan_config(path, overrides)
    if kind == "study":
        trainings, benches, target = cfg.trainings(), cfg.benches(), cfg.target.name
    elif kind == "bench":
        trainings, benches, target = [], [cfg], cfg.target.name
    elif kind == "sweep":
        from taps_ray.distributed.sweep import grid_params, trial_config

        trials = [trial_config(cfg.base, params) for params in grid_params(cfg.space)]
        trainings, benches, target = trials * cfg.num_samples, [], cfg.base.target.name
    else:
        trainings, benches, target = [cfg], [], cfg.target.name
    shape = model_shape(target)
    plan = Plan(kind, target, shape)
    if kind == "study":
        plan.notes += [f"import first: {c}" for c in cfg.import_commands()]
    if shape is None:
        plan.notes.append(f"target '{target}' is neither a local folder nor a known published "
                          "model: GPU-hours and storage are not estimated")
    seen_specs: set = set()
    for run in trainings:
        spec = (run.data.mixture, run.data.total, run.data.seed, run.data.max_length)
        plan.trainings.append(_training_row(run, shape, rates, first=spec not in seen_specs))
        seen_specs.add(spec)
    if kind == "training":
        ev = trainings[0].evaluation
        plan.evaluations += _eval_rows(ev.benchmarks, ev.prompts_per_benchmark, ev.max_new_tokens,
                                       ["per-epoch replay"], [0.0], shape, rates,
                                       "replay", repeat=trainings[0].training.epochs)
    for bench in benches:
        plan.evaluations += _bench_rows(bench, shape, rates)
    big = [t for t in plan.trainings if (t["feature_gib"] or 0) > 200]
    if big:
        plan.notes.append(f"{len(big)} feature cache(s) exceed 200 GiB: consider "
                          "`taps-ray train --online` (features computed on the fly)")
    return plan


def model_shape(name: str) -> ModelShape | None:
    if name in KNOWN_TARGETS:
        return KNOWN_TARGETS[name]
    config = Path(name).expanduser() / "config.json"
    if not config.is_file():
        return None
    import json

    c = json.loads(config.read_text())
    h, layers, inter, vocab = (int(c[k]) for k in ("hidden_size", "num_hidden_layers",
                                                   "intermediate_size", "vocab_size"))
    tied = 1 if c.get("tie_word_embeddings") else 2
    return ModelShape(layers * (4 * h * h + 3 * h * inter) + tied * vocab * h, h, layers, inter,
                      vocab)


def tokens_per_conversation(data: DataConfig) -> float:
    """Mean rendered tokens of a conversation of this mixture, from the local data (chars / 3.8,
    capped at max_length); sources without a local copy count as max_length / 2."""
    from taps_ray.data.mixture import parse_mixture
    from taps_ray.data.registry import load_records

    total = 0.0
    for source, ratio in parse_mixture(data.mixture).items():
        try:
            records = load_records(source, limit=300)
        except TapsError:
            records = []
        if records:
            lengths = [min(sum(len(m.content) for m in r.messages) / CHARS_PER_TOKEN + 12,
                           data.max_length) for r in records]
            mean = sum(lengths) / len(lengths)
        else:
            mean = data.max_length / 2
        total += ratio * mean
    return total


def _training_row(run: ExperimentConfig, shape: ModelShape | None, rates: GpuRates,
                  first: bool) -> dict:
    tokens = run.data.total * tokens_per_conversation(run.data)
    row = {"name": run.drafter.name, "method": run.drafter.method, "data": run.data.mixture,
           "conversations": run.data.total, "tokens": tokens, "epochs": run.training.epochs,
           "output_dir": run.output_dir, "feature_gib": None, "gpu_h_features": None,
           "gpu_h_train": None}
    if shape is None:
        return row
    bytes_per = 2 if run.training.feature_dtype == "fp16" else 4
    # a cache is shared by every run on the same data spec: count it once
    row["feature_gib"] = tokens * shape.hidden * bytes_per / 2**30 if first else 0.0
    row["gpu_h_features"] = 2 * shape.params * tokens / rates.flops / 3600 if first else 0.0
    vocab = run.drafter.draft_vocab_size or shape.vocab
    layer = 4 * shape.hidden**2 + 3 * shape.hidden * shape.intermediate
    drafter_params = layer + 2 * shape.hidden**2 + vocab * shape.hidden
    passes = 1 + (run.training.align_steps if run.drafter.method == "hass" else 0)
    flops = 6 * drafter_params * tokens * run.training.epochs * passes
    row["gpu_h_train"] = flops / rates.flops / 3600
    return row


def _bench_rows(bench: BenchConfig, shape, rates: GpuRates) -> list[dict]:
    from taps_ray.evaluation.bench import candidates_for

    rows = []
    first = next(iter(bench.drafter_sets))
    for name, folders in bench.drafter_sets.items():
        names = [Path(f).parent.name if Path(f).name == "drafter" else Path(f).name
                 for f in folders]
        labels = [c.label for c in candidates_for(bench.strategies, names,
                                                  dict.fromkeys(names, "eagle2"))]
        if bench.replay_prompts_per_benchmark >= 0:
            rows += _eval_rows(bench.benchmarks, bench.replay_prompts_per_benchmark,
                               bench.max_new_tokens, [f"{lb} ({name})" for lb in labels], [0.0],
                               shape, rates, f"replay, set {name}")
        if bench.live_prompts_per_benchmark > 0 and bench.live_temperatures:
            plain = ["plain"] if bench.baseline and name == first else []  # as the bench does
            live = [f"{lb} ({name})" for lb in labels] + plain
            rows += _eval_rows(bench.benchmarks, bench.live_prompts_per_benchmark,
                               bench.max_new_tokens, live, bench.live_temperatures, shape, rates,
                               f"live, set {name}", live=True)
    return rows


def _eval_rows(benchmarks, prompts: int, max_new: int, labels: list[str], temps, shape, rates,
               what: str, live: bool = False, repeat: int = 1) -> list[dict]:
    turns = 0
    for b in benchmarks:
        size, per = BENCH_SIZE[b]
        turns += min(prompts or size, size) * per
    tokens = turns * max_new * len(labels) * len(temps) * repeat
    gpu_h = None
    if shape is not None:
        step = shape.params * 2 / rates.bandwidth  # one weight read per decoding step
        steps = tokens / rates.tau
        # replay skips verification: only the drafter walks (about 1/4 of a live step here)
        factor = rates.step_overhead if live else 0.25
        gpu_h = steps * step * factor / 3600
    return [{"what": f"{what}: {len(labels)} rows x {len(benchmarks)} benchmarks x "
                     f"T={','.join(f'{t:g}' for t in temps)}" + (f" x {repeat} epochs"
                                                                  if repeat > 1 else ""),
             "prompt_turns": turns, "tokens": tokens, "gpu_h": gpu_h}]


def render_plan(plan: Plan) -> str:
    shape = plan.shape
    size = f"{shape.params / 1e9:.2f}B params, hidden {shape.hidden}" if shape else "size unknown"
    out = [f"plan ({plan.kind}) for target {plan.target} ({size})", ""]
    if plan.trainings:
        out += ["trainings:", "| drafter | method | data | conversations | est. tokens | epochs "
                "| feature cache GiB | GPU-h features | GPU-h train |", "|" + " --- |" * 9]
        for t in plan.trainings:
            out.append(f"| {t['name']} | {t['method']} | {t['data']} | {t['conversations']:,} | "
                       f"{t['tokens'] / 1e6:.1f}M | {t['epochs']} | {_num(t['feature_gib'])} | "
                       f"{_num(t['gpu_h_features'])} | {_num(t['gpu_h_train'])} |")
        out.append("")
    if plan.evaluations:
        out += ["evaluations:", "| what | prompt turns | generated tokens | GPU-h |",
                "| --- | --- | --- | --- |"]
        for e in plan.evaluations:
            out.append(f"| {e['what']} | {e['prompt_turns']:,} | {e['tokens']:,} | "
                       f"{_num(e['gpu_h'])} |")
        out.append("")
    if shape is not None:
        t = plan.totals
        out.append(f"total: {t['gpu_h']:.1f} GPU-hours on one H100 (features "
                   f"{t['gpu_h_features']:.1f}, training {t['gpu_h_train']:.1f}, evaluation "
                   f"{t['gpu_h_eval']:.1f}); feature caches {t['feature_gib']:.1f} GiB")
        r = GpuRates()
        out.append(f"assumed: {r.flops / 1e12:.0f} TFLOP/s effective, "
                   f"{r.bandwidth / 1e12:.1f} TB/s effective, tau {r.tau}, live step "
                   f"{r.step_overhead}x a plain step; tokens = chars / {CHARS_PER_TOKEN} of the "
                   "local data")
    out += [f"note: {n}" for n in plan.notes]
    return "\n".join(out)


def plan_json(plan: Plan) -> dict:
    return {"kind": plan.kind, "target": plan.target, "trainings": plan.trainings,
            "evaluations": plan.evaluations, "notes": plan.notes,
            "totals": plan.totals if plan.shape else None}


def _num(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}" if math.isfinite(value) else "n/a"
