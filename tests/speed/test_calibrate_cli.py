"""`taps-ray calibrate --quick` on a tiny random target: a valid profile, or exit 2 and no file."""

from __future__ import annotations

import json

import pytest
import torch

from taps_ray.cli import main
from taps_ray.config.schema import TreeConfig
from taps_ray.speed.calibrate import eagle_shaped_tree, probe_tree
from taps_ray.speed.profile import current_key, load_profile, save_profile
from tests.speed.conftest import hand_profile


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def drafter_dirs(tiny_folder, tmp_path_factory):
    """A drafter of the tiny target, one recorded for another target, one of another vocab."""
    from taps_ray.models.drafter import DrafterMeta, save_drafter, untrained_drafter
    from taps_ray.models.target import load_target
    from tests.tiny import tiny_target

    root = tmp_path_factory.mktemp("drafters")
    target = load_target(str(tiny_folder), device="cpu")
    head = untrained_drafter(target)
    good = save_drafter(head, root / "good", DrafterMeta(name="math-eagle2", method="eagle2",
                                                         target=str(tiny_folder)))
    foreign = save_drafter(head, root / "foreign", DrafterMeta(name="chat-eagle2",
                                                               target="other-model"))
    wide = untrained_drafter(tiny_target(vocab=48))
    other_vocab = save_drafter(wide, root / "vocab48", DrafterMeta(name="x-eagle2"))
    eagle3 = save_drafter(untrained_drafter(target, layout="eagle3", draft_vocab_size=20),
                          root / "eagle3", DrafterMeta(name="math-eagle3", method="eagle3",
                                                       target=str(tiny_folder)))
    return {"good": good, "foreign": foreign, "vocab48": other_vocab, "eagle3": eagle3}


def test_quick_calibration_writes_a_valid_profile(tiny_folder, drafter_dirs, cache, capsys):
    args = ["calibrate", "--target", str(tiny_folder), "--device", "cpu", "--quick",
            "--drafters", str(drafter_dirs["good"]), str(drafter_dirs["eagle3"]), "prompt-lookup",
            "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    key = current_key(str(tiny_folder), torch.float32, "cpu", kernels="default")
    files = list((cache / "profiles").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text()) == printed
    profile = load_profile(files[0], expect=key)
    assert sorted(profile.verify_s) == [16, 48] and sorted(profile.verify_s[16]) == [1, 2, 4, 8]
    assert set(profile.draft_round_s) == {"math-eagle2", "math-eagle3", "prompt-lookup"}
    assert sorted(profile.draft_round_s["math-eagle2"]) == [1, 2, 4]
    assert sorted(profile.draft_round_s["math-eagle3"]) == [1, 2, 4]  # its own 20-token head
    assert profile.t1_s > 0 and profile.tv(6) > 0
    assert set(profile.overhead_s) == {"route", "merge", "logits_row", "step"}
    assert profile.draft_s("prompt-lookup", TreeConfig()) > 0  # measured, near zero
    assert sorted(profile.batch_verify_s) == [1, 2, 4]  # Tb(B, q), the quick grid
    assert sorted(profile.batch_verify_s[4]) == [1, 4] and profile.tb(3, 2) > 0


def test_table_output(cache, capsys):
    from taps_ray.cli.calibrate_cmd import format_profile

    table = format_profile(hand_profile())
    assert "Tv kv=100 ms" in table and "Tv/T1 kv=200" in table and "w=10: 4.00" in table
    assert "route 1.000 per tree" in table and "step 1.000 per step" in table
    assert "Tb(B, q)" not in table  # no batched table measured: no section


def test_table_shows_the_batched_forward(cache):
    from dataclasses import replace

    from taps_ray.cli.calibrate_cmd import format_profile

    batched = replace(hand_profile(), batch_verify_s={1: {1: 0.05, 4: 0.06}, 8: {1: 0.08}})
    lines = format_profile(batched).splitlines()
    start = next(i for i, line in enumerate(lines) if "Tb(B, q)" in line)
    row8 = next(line for line in lines[start:] if line.split()[:1] == ["8"])
    assert row8.split() == ["8", "80.00", "-", "100.0"]  # 8 / 0.08 s = 100 tokens/s plain


def _refused(args: list[str], capsys, fragment: str) -> None:
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("taps-ray")]
    assert len(err) == 1 and fragment in err[0], err


@pytest.mark.parametrize("device, fragment", [
    ("tpu", "--device 'tpu' is not a device"),
    ("meta", "not supported for calibration"),
    pytest.param("cuda", "no CUDA device", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_unknown_device_exits_2_and_writes_nothing(tiny_folder, cache, tmp_path, capsys,
                                                   device, fragment):
    out = tmp_path / "p.json"
    _refused(["calibrate", "--target", str(tiny_folder), "--device", device, "--quick",
              "--out", str(out)], capsys, fragment)
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("which, fragment", [
    ("foreign", "was trained for target 'other-model'"),
    ("vocab48", "vocab_size=48"),
])
def test_drafter_of_another_target_exits_2(tiny_folder, drafter_dirs, tmp_path, capsys, which,
                                           fragment):
    out = tmp_path / "p.json"
    _refused(["calibrate", "--target", str(tiny_folder), "--device", "cpu", "--quick",
              "--out", str(out), "--drafters", str(drafter_dirs[which])], capsys, fragment)
    assert not out.exists()


@pytest.mark.parametrize("content, fragment", [
    ("{oops", "is corrupt"),
    (None, "measured for other hardware or settings: threads 99"),
])
def test_existing_bad_profile_is_not_clobbered(tiny_folder, tmp_path, capsys, content, fragment):
    out = tmp_path / "p.json"
    if content is None:
        key = current_key(str(tiny_folder), torch.float32, "cpu", threads=99)
        save_profile(hand_profile(key), out)
    else:
        out.write_text(content)
    before = out.read_bytes()
    _refused(["calibrate", "--target", str(tiny_folder), "--device", "cpu", "--quick",
              "--out", str(out)], capsys, fragment)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.json"]


@pytest.mark.parametrize("flags, fragment", [
    (["--repeats", "0"], "repeats must be >= 1"),
    (["--kv-lens", "128,x"], "--kv-lens '128,x'"),
    (["--threads", "-1"], "--threads must be >= 0"),
])
def test_bad_settings_exit_2(tiny_folder, tmp_path, capsys, flags, fragment):
    out = tmp_path / "p.json"
    _refused(["calibrate", "--target", str(tiny_folder), "--out", str(out), *flags], capsys,
             fragment)
    assert not out.exists()


def test_synthetic_trees_have_the_asked_shape():
    gen = torch.Generator().manual_seed(0)
    tree = eagle_shaped_tree(TreeConfig(60, 5, 10), 100, gen)
    assert tree.size == 60 and int(tree.depths.max()) <= 6
    assert probe_tree(7, torch.arange(7)).depths.tolist() == [1, 2, 2, 3, 3, 3, 3]
    assert probe_tree(0, torch.arange(0)).size == 0
