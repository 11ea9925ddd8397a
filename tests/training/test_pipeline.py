"""End to end on the embedded default target: config -> mixture -> cache -> drafter folder."""

from __future__ import annotations

import pytest

from taps_ray.config.schema import DataConfig, DrafterConfig, ExperimentConfig
from taps_ray.data.paths import data_root
from taps_ray.models.drafter import load_drafter
from taps_ray.training.features import FeatureCache
from taps_ray.training.pipeline import prepare_features, train_from_config
from tests.training.conftest import fast_config


@pytest.fixture
def default_target():
    from taps_ray.models.target import load_target

    if data_root() is None:
        pytest.skip("shared/data (the offline dataset copies) is not present")
    return load_target()


@pytest.mark.slow
def test_train_from_config_on_the_default_target(default_target, tmp_path):
    cfg = ExperimentConfig(
        data=DataConfig(mixture="math=1.0", total=6, seed=0, max_length=96),
        drafter=DrafterConfig(method="hass", draft_vocab_size=2048),
        training=fast_config(max_steps=3, batch_size=3, align_steps=2),
        output_dir=str(tmp_path / "run"),
    )
    result = train_from_config(cfg, target=default_target, progress=False)
    drafter = load_drafter(result.path, default_target)
    assert drafter.meta.name == "math-hass" and drafter.draft_vocab_size == 2048
    assert drafter.meta.data["counts"]["drawn"] == {"mathinstruct": 6}
    # A second run finds the finished cache without rendering anything.
    source, counts = prepare_features(default_target, cfg.data, "fp16")
    assert isinstance(source, FeatureCache) and counts["conversations"] == len(source)
