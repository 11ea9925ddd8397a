"""Fixtures for training tests: a tiny random target and hand-made token-id conversations."""

from __future__ import annotations

import pytest

from taps_ray.config.schema import TrainingConfig
from taps_ray.data.render import RenderedExample
from taps_ray.training.examples import DataSpec
from taps_ray.training.features import FeatureCache, FeatureSpec
from tests.tiny import tiny_target


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Caches under tmp_path; the converted default target is linked in, never rebuilt."""
    from taps_ray.models.target import cache_dir

    real_models = cache_dir() / "models"
    (tmp_path / "cache").mkdir()
    if real_models.is_dir():
        (tmp_path / "cache" / "models").symlink_to(real_models)
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / "cache"))


def repeating_examples(n: int = 10, base: int = 20, period: int = 8) -> list[RenderedExample]:
    """Conversations cycling through `period` ids; a third user prompt, the rest assistant."""
    out = []
    for k in range(n):
        length = base + 3 * k
        ids = [(k + i) % period + 1 for i in range(length)]
        prompt = length // 3
        out.append(RenderedExample(ids, [0] * prompt + [1] * (length - prompt)))
    return out


def synthetic_spec(target, examples, dtype: str = "fp32", aux_layers=()) -> FeatureSpec:
    data = DataSpec("synthetic", len(examples), 0, 64)
    return FeatureSpec.for_target(target, data, dtype, aux_layers)


def build_cache(target, examples, root, **kwargs) -> FeatureCache:
    """A finished cache; aux_layers=(...) gives EAGLE-3 rows [final | aux...]."""
    spec = synthetic_spec(target, examples, kwargs.pop("dtype", "fp32"),
                          kwargs.pop("aux_layers", ()))
    return FeatureCache.build(target, examples, spec, root=root, progress=False, **kwargs)


def fast_config(**overrides) -> TrainingConfig:
    base = dict(epochs=100, max_steps=40, batch_size=4, lr=3e-3, warmup_ratio=0.1, seed=0)
    return TrainingConfig(**{**base, **overrides})


@pytest.fixture
def target():
    return tiny_target("llama")


@pytest.fixture
def examples():
    return repeating_examples()
