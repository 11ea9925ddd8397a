"""`taps-ray generate` on a tiny random target: speed report fields, policies, lossless check,
and a bad cost profile refused in one line (exit 2)."""

from __future__ import annotations

import json

import pytest

from taps_ray.cli import main
from tests.speed.conftest import hand_profile, tiny_folder  # noqa: F401 (a fixture)

PROMPT = "w1 w2 w3 w4 w1 w2 w3 w4 w1 w2"  # repeats: prompt lookup finds drafts


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / "cache"))  # no saved profile here
    return tmp_path / "cache"


def generate(folder, *extra: str) -> list[str]:
    return ["generate", "--target", str(folder), "--device", "cpu", "--prompt", PROMPT,
            "--max-new-tokens", "16", "--tree", "6/3/3", "--json", *extra]


@pytest.mark.parametrize("policy", ["adaptive", "fixed"])
def test_json_reports_speed(tiny_folder, cache, capsys, policy):  # noqa: F811
    assert main(generate(tiny_folder, "--drafter", "untrained", "--policy", policy)) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["policy"] == policy and report["new_tokens"] == 16
    steps = report["steps"]
    assert report["tokens_per_s"] > 0 and steps in range(1, 16)  # 15 tokens after prefill
    assert report["tau"] == pytest.approx((16 - 1) / steps, abs=1e-3)
    # shares and counts of whole steps
    speculative = report["speculative_share"] * steps
    assert speculative == pytest.approx(round(speculative), abs=1e-3) and speculative >= 1
    assert report["guard_fallbacks"] in range(steps)
    if policy == "fixed":
        assert report["speculative_share"] == 1 and report["guard_fallbacks"] == 0
    else:  # no profile in this cache: one line says calibrating would help
        assert "`taps-ray calibrate` would give it a head start" in captured.err


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.9", "--top-k", "8", "--seed", "3"]],
                         ids=["greedy", "sampled"])
def test_check_lossless_adaptive_prompt_lookup(tiny_folder, cache, capsys,  # noqa: F811
                                               sampling):
    args = generate(tiny_folder, "--drafter", "prompt-lookup:num_tokens=4", "--check-lossless",
                    *sampling)
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lossless"] is True and report["policy"] == "adaptive"
    assert report["plain_tokens_per_s"] > 0
    assert report["speedup"] == pytest.approx(
        report["tokens_per_s"] / report["plain_tokens_per_s"], rel=0.02)


@pytest.mark.parametrize("kind, fragment", [("corrupt", "is corrupt"),
                                            ("other", "other hardware")])
def test_bad_profile_exits_2_in_one_line(tiny_folder, cache, tmp_path, capsys,  # noqa: F811
                                         kind, fragment):
    from taps_ray.speed.profile import save_profile

    path = tmp_path / "profile.json"
    if kind == "corrupt":
        path.write_text('{"format": 1, "key": ')
    else:
        save_profile(hand_profile(), path)  # measured on "cpu: test cpu"
    assert main(generate(tiny_folder, "--profile", str(path))) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("taps-ray")]
    assert captured.out == "" and len(err) == 1 and fragment in err[0], captured.err
    assert "Traceback" not in captured.err
