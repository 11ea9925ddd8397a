"""Typed, strict run configuration (YAML + dotted overrides)."""

from taps_ray.config.loader import apply_overrides, from_dict, load_config, save_config, to_dict
from taps_ray.config.schema import (
    BENCHMARKS,
    DEFAULT_TARGET,
    BenchConfig,
    DataConfig,
    DrafterConfig,
    EvaluationConfig,
    ExperimentConfig,
    SamplingConfig,
    TargetConfig,
    TrainingConfig,
    TreeConfig,
)

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
    "apply_overrides",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]
