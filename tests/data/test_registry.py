"""The registry on the real offline copies (skipped without them) and on the tiny folder."""

from __future__ import annotations

import gzip

import pytest

from taps_ray.data.registry import (
    count_rows,
    dataset_names,
    get_spec,
    list_datasets,
    load_records,
    resolve,
)
from taps_ray.errors import TapsError

# sharegpt: 17,671 raw rows less empty / system-only / blank-turn / assistant-only ones
REAL_COUNTS = {"sharegpt": 17322, "mathinstruct": 19674, "mt_bench": 80, "gsm8k": 1319,
               "math500": 500, "svamp": 1000}


def test_six_datasets_in_two_kinds():
    assert dataset_names() == list(REAL_COUNTS)
    assert dataset_names("source") == ["sharegpt", "mathinstruct"]
    assert all(spec.hub.repo for spec in list_datasets())


def test_unknown_name_lists_valid_names():
    with pytest.raises(TapsError, match="unknown dataset 'foo'; valid names: sharegpt, "):
        get_spec("foo")


@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_real_counts_agree_with_records(real_data, name):
    records = load_records(name)
    assert count_rows(name) == len(records) == REAL_COUNTS[name]
    assert len({r.id for r in records}) == len(records)  # ids are unique
    assert resolve(name).resolved == "local"


@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_real_records_are_well_formed(real_data, name):
    for record in load_records(name):
        assert record.source == name and record.id.startswith(f"{name}/")
        assert record.messages and all(m.content.strip() for m in record.messages)
        if get_spec(name).kind == "benchmark":
            assert {m.role for m in record.messages} == {"user"}
        else:
            assert_alternates(record)


def assert_alternates(record) -> None:
    expected = ["user", "assistant"] * len(record.messages)
    assert [m.role for m in record.messages] == expected[: len(record.messages)]
    assert record.messages[-1].role == "assistant"


def test_real_mt_bench_has_two_user_turns(real_data):
    records = load_records("mt_bench")
    assert all(len(r.messages) == 2 for r in records)
    assert {r.category for r in records} >= {"writing", "math", "coding", "humanities"}


def test_real_benchmark_fields(real_data):
    gsm = load_records("gsm8k", limit=1)[0]
    assert gsm.id == "gsm8k/test/0" and gsm.reference == "18"
    svamp = load_records("svamp", limit=1)[0]
    assert svamp.messages[0].content.endswith("How much do you have to pay to buy each pack?")
    assert {r.category for r in load_records("mathinstruct", limit=500)} == {
        "gsm8k", "math", "aqua", "mathqa"}


def test_limit_takes_the_first_records(tiny_data):
    assert [r.id for r in load_records("gsm8k", limit=3)] == [f"gsm8k/test/{i}" for i in range(3)]
    assert load_records("gsm8k", limit=0) == []
    with pytest.raises(TapsError, match="limit must be >= 0"):
        load_records("gsm8k", limit=-1)


def test_tiny_sharegpt_drops_unusable_rows(tiny_data):
    records = load_records("sharegpt")
    assert count_rows("sharegpt") == len(records) == 30
    assert records[10].id == "sharegpt/15"  # ids keep the row index, past the 5 dropped rows


def test_missing_local_without_hub_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))
    res = resolve("gsm8k")
    assert (res.resolved, res.path) == ("missing", tmp_path / "gsm8k" / "test.jsonl")
    with pytest.raises(TapsError, match="dataset 'gsm8k' not found locally at .*gsm8k/test.jsonl"
                       ".*set TAPS_DATA_DIR to a folder containing gsm8k/test.jsonl"):
        load_records("gsm8k")
    with pytest.raises(TapsError, match="'svamp' not found locally"):
        count_rows("svamp")


def test_hub_resolution_when_reachable(monkeypatch, tmp_path):
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))
    assert resolve("math500", hub=True).resolved == "hub"


def test_corrupt_line_is_a_user_error(monkeypatch, tmp_path):
    path = tmp_path / "mathinstruct_sources" / "math_cot.jsonl.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(b'{"instruction": "a", "output": "b"}\n{"instr\n'))
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))
    with pytest.raises(TapsError, match="line 2 of .*math_cot.jsonl.gz is not valid JSON"):
        load_records("mathinstruct")


def test_missing_field_is_a_user_error(monkeypatch, tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"answer": "#### 1"}\n')
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))
    with pytest.raises(TapsError, match="row 0 of dataset 'gsm8k' .* malformed .*'question'"):
        load_records("gsm8k")
