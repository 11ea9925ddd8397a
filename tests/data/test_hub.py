"""The hub fallback: fast reachability answers and the hub row path, with no network."""

from __future__ import annotations

import time

import pytest

import taps_ray.data.hub as hub
import taps_ray.data.registry as registry
from taps_ray.errors import TapsError


class _Conn:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_offline_env_skips_the_probe(monkeypatch):
    monkeypatch.setattr(hub.socket, "create_connection", pytest.fail)
    assert hub.hub_reachable() is False


def test_probe_true_when_connect_succeeds(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: _Conn())
    assert hub.hub_reachable() is True


def _hang(*args, **kwargs):
    time.sleep(3)  # a DNS lookup that ignores the connect timeout
    raise OSError("too late")


def test_hung_probe_is_abandoned(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub.socket, "create_connection", _hang)
    begin = time.perf_counter()
    assert hub.hub_reachable(timeout_s=0.1) is False
    assert time.perf_counter() - begin < 2


def test_real_probe_answers_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))
    begin = time.perf_counter()
    assert registry.resolve("gsm8k").resolved in {"hub", "missing"}
    assert time.perf_counter() - begin < 4


def test_hub_rows_are_parsed_like_local_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("TAPS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(registry, "hub_reachable", lambda: True)
    seen = {}

    def fake_rows(source, streaming=False):
        seen.update(repo=source.repo, streaming=streaming)
        return [{"prompt_id": 81 + i, "category": "math", "prompt": ["a", "b"]} for i in range(3)]

    monkeypatch.setattr(registry, "load_hub_rows", fake_rows)
    records = registry.load_records("mt_bench", limit=2)
    assert [r.id for r in records] == ["mt_bench/81", "mt_bench/82"]
    assert seen == {"repo": "HuggingFaceH4/mt_bench_prompts", "streaming": True}


def test_hub_failure_is_one_user_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def broken(*args, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(TapsError, match="could not load 'openai/gsm8k' from the Hugging Face hub"):
        hub.load_hub_rows(registry.get_spec("gsm8k").hub)
