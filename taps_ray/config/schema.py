"""Typed config sections, one per concern. Each field carries a one-line reason in its comment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_TARGET = "smollm2-135m-instruct"
BENCHMARKS = ("mt_bench", "gsm8k", "math500", "svamp")


@dataclass
class TargetConfig:
    name: str = DEFAULT_TARGET  # built-in alias, hub id or local HF folder
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: bf16 on cuda, fp32 on cpu (bf16 is slow on most CPUs)


@dataclass
class DataConfig:
    mixture: str = "math=1.0"  # ratio spec over domains (math, chat) or registry names
    total: int = 2000  # conversations drawn in all; counts per source are recorded
    seed: int = 0  # drives which conversations are drawn
    max_length: int = 1024  # tokens per rendered conversation (longer ones are truncated)
    regenerate: bool = False  # replace responses with the target's own (self-distillation)
    regenerate_max_new_tokens: int = 256  # length cap of each regenerated answer
    regenerate_batch_size: int = 32  # prompts per batched generate call (not part of cache keys)
    max_turns: int = 0  # keep each conversation's first N user turns (0: all); 1 = first turns

    def __post_init__(self) -> None:
        _positive("data.total", self.total)
        if self.max_turns < 0:
            raise ValueError(f"data.max_turns must be >= 0 (got {self.max_turns}); 0 keeps "
                             "every turn, 1 the first exchange")
        _positive("data.max_length", self.max_length)
        _positive("data.regenerate_max_new_tokens", self.regenerate_max_new_tokens)
        _positive("data.regenerate_batch_size", self.regenerate_batch_size)


@dataclass
class DrafterConfig:
    # training recipe; eagle3 trains an EAGLE-3 head (three target layers, training-time test)
    method: Literal["eagle2", "hass", "eagle3"] = "eagle2"
    draft_vocab_size: int = 0  # 0: full target vocab (eagle3: 8192); N: top-N frequent tokens
    name: str = ""  # <data>-<method>, e.g. math-eagle2; derived from data + method when empty
    # eagle: the published EAGLE-1/2 layout (no input/final norm) that EAGLE/HASS checkpoints,
    # vLLM and SGLang use; taps: layer with input + final norm (drafters before issue 17);
    # eagle3 heads always have EAGLE-3's own layout
    layout: Literal["taps", "eagle"] = "eagle"

    def __post_init__(self) -> None:
        if self.draft_vocab_size < 0:
            raise ValueError("drafter.draft_vocab_size must be >= 0 (0 means the full vocabulary)")


@dataclass
class TreeConfig:
    total_tokens: int = 60  # draft nodes verified per step (published: 60)
    depth: int = 5  # drafter expansion rounds (published: 5)
    top_k: int = 10  # children per expanded node and frontier width (published: 10)

    def __post_init__(self) -> None:
        for key in ("total_tokens", "depth", "top_k"):
            _positive(f"tree.{key}", getattr(self, key))


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy; > 0 follows the target's distribution exactly
    top_p: float = 1.0  # nucleus filter applied as transformers does
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 128  # per prompt/turn
    seed: int = 0  # sampling seed for temperature > 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("sampling.temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("sampling.top_p must be in (0, 1]")
        _positive("sampling.max_new_tokens", self.max_new_tokens)


@dataclass
class TrainingConfig:
    epochs: int = 2  # passes over the feature cache
    max_steps: int = 0  # 0: run all epochs; N: stop after N optimizer steps
    batch_size: int = 8  # conversations per optimizer step (published: 8)
    lr: float = 3e-4  # peak AdamW learning rate (published GPU recipe: 3e-5)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05  # share of steps with linear warmup before cosine decay
    grad_clip: float = 0.5  # max global grad norm
    w_feature: float = 1.0  # SmoothL1 weight on predicted features
    w_ce: float = 0.1  # cross-entropy weight against the target's next-token distribution
    topk: int = 10  # HASS: K of the top-K distillation loss
    w_topk: float = 1.0  # HASS: weight of the top-K loss
    align_steps: int = 3  # HASS: context-alignment steps J; EAGLE-3: training-time-test steps
    seed: int = 0
    feature_dtype: Literal["fp32", "fp16"] = "fp16"  # storage type of cached target features
    holdout: float = 0.0  # share of conversations kept out of training for a validation loss
    patience: int = 0  # stop after this many epochs without a lower validation loss (0: never)
    init_from: str = ""  # a saved drafter to start from (fresh LR schedule); "": random init

    def __post_init__(self) -> None:
        _positive("training.batch_size", self.batch_size)
        if self.lr <= 0:
            raise ValueError("training.lr must be > 0")


@dataclass
class EvaluationConfig:
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))  # which to run
    prompts_per_benchmark: int = 8  # subset size drawn by `seed` (0 = all)
    seed: int = 0  # picks the prompt subset
    max_new_tokens: int = 128  # per prompt/turn
    temperatures: list[float] = field(default_factory=lambda: [0.0])  # 0 uses replay when asked
    drafters: list[str] = field(default_factory=list)  # folders to evaluate; empty: this run's
    results_dir: str = ""  # where result rows go; empty: <output_dir>/results

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(
                f"unknown benchmark '{unknown[0]}' in evaluation.benchmarks; "
                f"valid: {', '.join(BENCHMARKS)}"
            )


@dataclass
class ExperimentConfig:
    """One run: what target, which data, which drafter recipe, how to decode and evaluate."""

    target: TargetConfig = field(default_factory=TargetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    drafter: DrafterConfig = field(default_factory=DrafterConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output_dir: str = "runs/default"  # where drafters, caches and results of this run go


@dataclass
class BenchConfig:
    """A matrix: drafter sets x strategies x benchmarks x temperatures (`taps-ray bench`)."""

    target: TargetConfig = field(default_factory=TargetConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    # set name -> drafter folders ("untrained" = a random head, for smoke runs)
    drafter_sets: dict[str, list[str]] = field(default_factory=dict)
    # labels: single | average | average@W (W = weight of the first of two drafters) |
    # route-confidence/step|prompt | route-entropy/step|prompt | route-learned/step|prompt |
    # merged/sum|matched | bandit
    strategies: list[str] = field(default_factory=lambda: ["single"])
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    seed: int = 0  # picks the prompt subsets and seeds sampling
    max_new_tokens: int = 128  # per prompt/turn
    replay_prompts_per_benchmark: int = 10  # T = 0 by replay (0 = all, -1 = skip replay)
    live_temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    live_prompts_per_benchmark: int = 3  # live decoding subset (tokens/s, T > 0)
    baseline: bool = True  # also decode the live subset plainly (with the first drafter set)
    results_dir: str = "runs/bench/results"  # local folder or pyarrow URI (s3://...)
    run_id: str = ""  # empty: derived from the config; reuse it to resume

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark '{unknown[0]}'; valid: {', '.join(BENCHMARKS)}")
        if not self.drafter_sets:
            raise ValueError("drafter_sets is empty; name at least one set of drafter folders")
        if any(t < 0 for t in self.live_temperatures):
            raise ValueError("live_temperatures must be >= 0")
        _positive("max_new_tokens", self.max_new_tokens)


def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{key} must be > 0, got {value}")


__all__ = [
    "BENCHMARKS",
    "BenchConfig",
    "DEFAULT_TARGET",
    "DataConfig",
    "DrafterConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "SamplingConfig",
    "TargetConfig",
    "TrainingConfig",
    "TreeConfig",
]
