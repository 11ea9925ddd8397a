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


@pytest.mark.slow
def test_eagle3_from_config_on_the_default_target(default_target, tmp_path):
    from taps_ray.models.eagle3 import Eagle3Drafter

    data = DataConfig(mixture="math=1.0", total=6, seed=0, max_length=96)
    cfg = ExperimentConfig(
        data=data, drafter=DrafterConfig(method="eagle3"),
        training=fast_config(max_steps=2, batch_size=3, align_steps=2),
        output_dir=str(tmp_path / "run"),
    )
    result = train_from_config(cfg, target=default_target, progress=False)
    drafter = load_drafter(result.path, default_target)
    assert isinstance(drafter, Eagle3Drafter) and drafter.meta.name == "math-eagle3"
    assert drafter.draft_vocab_size == 8192 and drafter.aux_layers == (2, 15, 27)
    source, _ = prepare_features(default_target, data, "fp16", aux_layers=(2, 15, 27))
    plain, _ = prepare_features(default_target, data, "fp16")
    assert source.aux_layers == (2, 15, 27) and plain.aux_layers == ()
    assert source[0].features.shape[-1] == 4 * plain[0].features.shape[-1]
