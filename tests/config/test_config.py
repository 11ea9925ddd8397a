"""Strict configs: YAML round trip, dotted overrides, unknown keys and bad types are user errors."""

from __future__ import annotations

import pytest
import yaml

from taps_ray.config import (
    ExperimentConfig,
    TreeConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from taps_ray.errors import TapsError


def test_defaults_round_trip_through_yaml(tmp_path):
    config = ExperimentConfig()
    path = tmp_path / "run.yaml"
    save_config(config, path)
    assert load_config(ExperimentConfig, path) == config
    assert not list(tmp_path.glob("*.tmp"))


def test_modified_config_round_trips(tmp_path):
    config = load_config(
        ExperimentConfig,
        None,
        [
            "tree.total_tokens=16",
            "training.lr=3e-5",
            "evaluation.benchmarks=[gsm8k, svamp]",
            "drafter.method=hass",
            "target.device=cpu",
        ],
    )
    assert config.tree == TreeConfig(16, 5, 10)
    assert config.training.lr == pytest.approx(3e-5)
    assert config.evaluation.benchmarks == ["gsm8k", "svamp"]
    path = tmp_path / "x.yaml"
    save_config(config, path)
    assert load_config(ExperimentConfig, path) == config


def test_overrides_beat_file_values(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("tree: {total_tokens: 32}\ndata: {mixture: 'math=0.5,chat=0.5'}\n")
    config = load_config(ExperimentConfig, path, ["tree.total_tokens=8"])
    assert config.tree.total_tokens == 8
    assert config.data.mixture == "math=0.5,chat=0.5"


def test_unknown_key_lists_valid_ones():
    with pytest.raises(TapsError, match=r"unknown config key 'tree\.totl_tokens'.*total_tokens"):
        from_dict(ExperimentConfig, {"tree": {"totl_tokens": 3}})


def test_unknown_section_is_an_error():
    with pytest.raises(TapsError, match="unknown config key 'trainer'.*training"):
        from_dict(ExperimentConfig, {"trainer": {}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tree.depth=five", "tree.depth' must be int"),
        ("tree.depth=0", "tree.depth must be > 0"),
        ("data.regenerate_batch_size=0", "data.regenerate_batch_size must be > 0"),
        ("drafter.method=medusa", "drafter.method' must be one of eagle2, hass"),
        ("sampling.temperature=-1", "temperature must be >= 0"),
        ("evaluation.benchmarks=[gsm9k]", "unknown benchmark 'gsm9k'"),
        ("training.batch_size=true", "training.batch_size' must be int"),
        ("tree=3", "'tree' must be a mapping"),
        ("noequals", "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(TapsError, match=message.replace(".", r"\.")):
        load_config(ExperimentConfig, None, [override])


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tree:\n  total_tokens: [1, 2\n")
    with pytest.raises(TapsError, match=r"bad\.yaml' is not valid YAML at line"):
        load_config(ExperimentConfig, path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(TapsError, match="does not exist"):
        load_config(ExperimentConfig, tmp_path / "nope.yaml")


def test_apply_overrides_does_not_mutate_input():
    data = {"tree": {"depth": 3}}
    out = apply_overrides(data, ["tree.depth=4"])
    assert data == {"tree": {"depth": 3}} and out == {"tree": {"depth": 4}}


def test_to_dict_is_yaml_safe():
    assert yaml.safe_load(yaml.safe_dump(to_dict(ExperimentConfig()))) == to_dict(
        ExperimentConfig()
    )
