"""The CLI turns user errors into one line on stderr and exit code 2 (run as a real process)."""

from __future__ import annotations

import subprocess
import sys


def taps(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taps_ray", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def assert_user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_malformed_yaml_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tree: [\n")
    assert_user_error(taps("config", "show", str(bad)), "is not valid YAML")


def test_unknown_config_key_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tree:\n  width: 3\n")
    assert_user_error(taps("config", "show", str(cfg)), "unknown config key 'tree.width'")


def test_config_show_prints_resolved_yaml():
    proc = taps("config", "show", "tree.total_tokens=16")
    assert proc.returncode == 0, proc.stderr
    assert "total_tokens: 16" in proc.stdout


def test_bad_tree_spec_exits_2():
    assert_user_error(taps("generate", "--prompt", "hi", "--tree", "60/5"), "--tree '60/5'")
