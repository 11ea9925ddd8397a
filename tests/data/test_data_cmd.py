"""`taps-ray data list|sample` through argparse, in process."""

from __future__ import annotations

import argparse
import json

import pytest

from taps_ray.cli.data_cmd import add_parser
from taps_ray.errors import TapsError


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="taps-ray")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_list_json_keys_and_counts(tiny_data, capsys):
    assert run("data", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [
        "sharegpt", "mathinstruct", "mt_bench", "gsm8k", "math500", "svamp"]
    assert all(set(row) <= {"name", "kind", "resolved", "rows", "path"} for row in rows)
    by_name = {row["name"]: row for row in rows}
    assert by_name["sharegpt"] | {"path": None} == {
        "name": "sharegpt", "kind": "source", "resolved": "local", "rows": 30, "path": None}
    assert by_name["svamp"]["kind"] == "benchmark" and by_name["svamp"]["rows"] == 8


def test_list_table(tiny_data, capsys):
    assert run("data", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "kind", "resolved", "rows", "path"]
    assert lines[3].split()[:4] == ["mt_bench", "benchmark", "local", "5"]


def test_list_missing_offline(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))
    assert run("data", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(row["resolved"], row["rows"]) for row in rows} == {("missing", None)}


@pytest.fixture
def fake_target(monkeypatch, smollm2_tokenizer):
    import taps_ray.models.target as target

    monkeypatch.setattr(target, "load_tokenizer", lambda name: smollm2_tokenizer)


def test_sample_source_marks_loss_span(tiny_data, fake_target, capsys):
    assert run("data", "sample", "sharegpt", "-n", "2") == 0
    out = capsys.readouterr().out
    assert "=== sharegpt/0 ===" in out and "=== sharegpt/1 ===" in out
    assert "<|im_start|>assistant\n«hello 0<|im_end|>»\n" in out


def test_sample_benchmark_shows_both_mt_bench_prompts(tiny_data, fake_target, capsys):
    assert run("data", "sample", "mt_bench", "-n", "1") == 0
    out = capsys.readouterr().out
    assert "--- turn 1 prompt" in out and "--- turn 2 prompt" in out
    assert "<|im_start|>user\nShorter.<|im_end|>\n<|im_start|>assistant\n" in out


def test_sample_errors(tiny_data):
    with pytest.raises(TapsError, match="unknown dataset 'foo'"):
        run("data", "sample", "foo")
    with pytest.raises(TapsError, match="-n must be at least 1"):
        run("data", "sample", "gsm8k", "-n", "0")
