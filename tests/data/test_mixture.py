"""Mixture parsing, exact counts, seeded determinism and benchmark subsets."""

from __future__ import annotations

import pytest

from taps_ray.data.mixture import (
    benchmark_subset,
    build_mixture,
    largest_remainder,
    parse_mixture,
)
from taps_ray.errors import TapsError


def test_parse_aliases_and_registry_names():
    assert parse_mixture("math=0.5,chat=0.5") == {"mathinstruct": 0.5, "sharegpt": 0.5}
    assert parse_mixture(" mathinstruct = 0.25 , sharegpt=0.75 ") == {
        "mathinstruct": 0.25, "sharegpt": 0.75}
    assert parse_mixture("math=1") == {"mathinstruct": 1.0}
    assert parse_mixture("chat=0.2,mathinstruct=0.8") == {"sharegpt": 0.2, "mathinstruct": 0.8}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("code=1", "unknown mixture domain 'code'; valid: math, chat, sharegpt, mathinstruct"),
        ("gsm8k=1", "unknown mixture domain 'gsm8k'"),
        ("math=-0.5,chat=1.5", "mixture ratio for 'mathinstruct' is -0.5"),
        ("math=0.5,chat=0.4", "mixture ratios sum to 0.9, not 1"),
        ("math=0.5;chat=0.5", "mixture item 'math=0.5;chat=0.5' .* is malformed"),
        ("math", "mixture item 'math' .* is malformed"),
        ("math=abc", "is malformed"),
        ("math=nan,chat=1", "is malformed"),
        ("", "is empty"),
        ("math=0.5,mathinstruct=0.5", "names 'mathinstruct' twice"),
    ],
)
def test_parse_errors_name_the_field(spec, fragment):
    with pytest.raises(TapsError, match=fragment):
        parse_mixture(spec)


def test_sum_tolerance():
    assert parse_mixture("math=0.3333333,chat=0.6666667")
    with pytest.raises(TapsError, match="sum to"):
        parse_mixture("math=0.33,chat=0.66")


@pytest.mark.parametrize("total", [0, 1, 7, 10, 101])
def test_largest_remainder_sums_exactly(total):
    counts = largest_remainder({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, total)
    assert sum(counts.values()) == total
    assert max(counts.values()) - min(counts.values()) <= 1


def test_mixture_counts_and_determinism(tiny_data):
    first = build_mixture("math=0.7,chat=0.3", total=25, seed=1)
    again = build_mixture({"math": 0.7, "chat": 0.3}, total=25, seed=1)
    other = build_mixture("math=0.7,chat=0.3", total=25, seed=2)
    assert first.counts == {"mathinstruct": 18, "sharegpt": 7} and len(first.records) == 25
    assert [r.id for r in first.records] == [r.id for r in again.records]
    assert [r.id for r in first.records] != [r.id for r in other.records]
    assert sum(r.source == "sharegpt" for r in first.records) == 7
    assert len({r.id for r in first.records}) == 25  # drawn without replacement


def test_mixture_is_shuffled_across_sources(tiny_data):
    sources = [r.source for r in build_mixture("math=0.5,chat=0.5", total=20, seed=0).records]
    assert sources != sorted(sources)


def test_zero_share_source_is_not_needed(monkeypatch, tiny_data, tmp_path):
    only_math = tmp_path / "mathinstruct_sources"
    only_math.mkdir()
    (only_math / "math_cot.jsonl.gz").write_bytes(
        (tiny_data / "mathinstruct_sources" / "math_cot.jsonl.gz").read_bytes())
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))  # no sharegpt file at all
    mixture = build_mixture("math=1,chat=0", total=5, seed=0)
    assert mixture.counts == {"mathinstruct": 5, "sharegpt": 0}


def test_too_large_request_names_source_and_counts(tiny_data):
    with pytest.raises(TapsError, match="asks for 35 records from 'sharegpt' but only 30"):
        build_mixture("math=0.5,chat=0.5", total=70, seed=0)


def test_negative_total_and_bad_dict(tiny_data):
    with pytest.raises(TapsError, match="total must be >= 0"):
        build_mixture("math=1", total=-1, seed=0)
    with pytest.raises(TapsError, match="ratio for 'sharegpt' is -1"):
        build_mixture({"math": 2.0, "chat": -1.0}, total=4, seed=0)


def test_benchmark_subset_is_seeded_and_ordered(tiny_data):
    a = benchmark_subset("gsm8k", 4, seed=3)
    assert [r.id for r in a] == [r.id for r in benchmark_subset("gsm8k", 4, seed=3)]
    assert [int(r.id.rsplit("/", 1)[1]) for r in a] == sorted(
        int(r.id.rsplit("/", 1)[1]) for r in a)
    seeds = {tuple(r.id for r in benchmark_subset("gsm8k", 4, seed=s)) for s in range(5)}
    assert len(seeds) > 1
    assert len(benchmark_subset("gsm8k", None, seed=0)) == 10


def test_benchmark_subset_errors(tiny_data):
    with pytest.raises(TapsError, match="benchmark 'gsm8k' has 10 prompts but 11 were requested"):
        benchmark_subset("gsm8k", 11, seed=0)
    with pytest.raises(TapsError, match="'sharegpt' is a training source, not a benchmark"):
        benchmark_subset("sharegpt", 1, seed=0)
    with pytest.raises(TapsError, match="unknown dataset 'nope'"):
        benchmark_subset("nope", 1, seed=0)


def test_real_svamp_subset_of_300(real_data):
    subset = benchmark_subset("svamp", 300, seed=0)
    assert len(subset) == 300 and len({r.id for r in subset}) == 300
