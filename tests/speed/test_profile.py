"""Profiles: JSON round trip, refusal of other hardware and corrupt files, interpolation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from taps_ray.config.schema import TreeConfig
from taps_ray.errors import TapsError
from taps_ray.speed.profile import (
    current_key,
    default_profile_path,
    load_profile,
    save_profile,
)
from tests.speed.conftest import KEY, hand_profile


def test_round_trip(tmp_path, profile):
    path = save_profile(profile, tmp_path / "sub" / "p.json")
    assert load_profile(path, expect=KEY) == profile
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temp file left


def test_other_hardware_is_refused_naming_what_differs(tmp_path, profile):
    path = save_profile(profile, tmp_path / "p.json")
    other = replace(KEY, threads=8, device="cuda: H200")
    with pytest.raises(TapsError) as err:
        load_profile(path, expect=other)
    message = str(err.value)
    assert "threads 2 (here 8)" in message and "device" in message
    assert "dtype" not in message and "rerun `taps-ray calibrate`" in message


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": 1}', '{"format": 99}', "\xff"])
def test_corrupt_file_is_one_sentence(tmp_path, text):
    path = tmp_path / "p.json"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(TapsError, match="is corrupt .*rerun `taps-ray calibrate`"):
        load_profile(path)


def test_unknown_field_and_bad_t1_are_corrupt(tmp_path, profile):
    from taps_ray.speed.profile import profile_to_dict

    for change in ({"surprise": 1}, {"t1_s": 0}):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({**profile_to_dict(profile), **change}))
        with pytest.raises(TapsError, match="is corrupt"):
            load_profile(path)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(TapsError, match="does not exist; rerun `taps-ray calibrate`"):
        load_profile(tmp_path / "none.json")


def test_tv_interpolates_in_n_and_kv(profile):
    assert profile.tv(8, 100) == pytest.approx(0.06)
    assert profile.tv(36, 100) == pytest.approx(0.09)  # halfway from 8 to 64
    assert profile.tv(120, 100) == pytest.approx(0.18)  # extrapolated: slope 0.06 / 56
    assert profile.tv(0.5, 100) == pytest.approx(0.05)  # flat below the smallest n
    assert profile.tv(8, 200) == pytest.approx(0.07)  # halfway between kv 100 and 300
    assert profile.tv(8) == pytest.approx(0.07)  # default: the reference kv, 200
    assert profile.tv(8, 50) == pytest.approx(0.06)  # clamped to the nearest kv
    assert profile.tv(8, 5000) == pytest.approx(0.08)


def test_draft_seconds_root_round_plus_depth_rounds(profile):
    tree = TreeConfig(total_tokens=60, depth=5, top_k=10)
    assert profile.draft_s("a", tree) == pytest.approx(0.002 + 5 * 0.004)
    assert profile.round_s("a", 4) == pytest.approx(0.002 + 3 / 9 * 0.002)
    assert profile.draft_s("prompt-lookup", tree) == pytest.approx(0.0005)
    with pytest.raises(TapsError, match="not in the cost profile .*taps-ray calibrate --drafters"):
        profile.draft_s("math-hass", tree)


def test_key_and_default_path(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path))
    key = current_key("/models/My Target", torch.float32, "cpu", threads=3)
    assert key.dtype == "float32" and key.threads == 3 and key.device.startswith("cpu: ")
    path = default_profile_path(key)
    assert path.parent == tmp_path / "profiles" and path.suffix == ".json"
    assert " " not in path.name and "my-target" in path.name
    assert default_profile_path(replace(key, threads=4)) != path


def test_plot_is_a_png(tmp_path):
    from taps_ray.speed.plot import save_verify_curve, verify_curve_plot

    plot = verify_curve_plot(hand_profile())
    assert plot.png.startswith(b"\x89PNG") and "Verify cost" in plot.title
    assert save_verify_curve(hand_profile(), tmp_path / "v.png").read_bytes() == plot.png


def test_batched_verify_table_round_trips_and_interpolates(tmp_path, profile):
    profile.batch_verify_s = {1: {1: 0.05, 16: 0.09}, 4: {1: 0.07, 16: 0.23}}
    path = save_profile(profile, tmp_path / "p.json")
    again = load_profile(path)
    assert again.batch_verify_s == profile.batch_verify_s
    assert again.tb(1, 1) == pytest.approx(0.05)
    assert again.tb(4, 16) == pytest.approx(0.23)
    assert again.tb(2, 1) == pytest.approx(0.05 + 0.02 / 3)  # linear in B
    assert again.tb(4, 8.5) == pytest.approx(0.15)  # linear in q
    assert again.tb(8, 1) == pytest.approx(0.07 + 0.02 / 3 * 4)  # extrapolated in B


def test_profiles_without_a_batched_table_still_load(tmp_path, profile):
    from taps_ray.speed.profile import profile_to_dict

    data = profile_to_dict(profile)
    del data["batch_verify_s"]  # written before continuous batching
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = load_profile(path)
    assert old.batch_verify_s == {}
    assert old.tb(4, 2) == pytest.approx(old.tv(8))  # the batch as one block of B * q tokens
