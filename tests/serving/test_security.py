"""Serve is closed by default: a host other machines can reach needs an API key (or the named
opt-out) before anything starts, a wrong key gets 401 and generates nothing, and the key never
shows up in a response, a metric or a log. The HTTP app runs over a real CompletionService on a
tiny random target, called through ASGI directly (no Ray, no sockets)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from taps_ray.cli import main
from taps_ray.serving.config import ServeConfig
from taps_ray.serving.http import build_http_app, keys_match
from taps_ray.serving.service import CompletionService
from tests.serving.test_service import DigitTokenizer
from tests.tiny import tiny_target

REPO = Path(__file__).resolve().parents[2]
KEY_ENV, KEY = "TAPS_TEST_SECURITY_KEY", "s3cret-key-for-tests"


def ray_started() -> bool:
    import ray

    return ray.is_initialized()


def test_open_host_without_a_key_is_refused_before_anything_starts(capsys):
    for extra in ([], ["--check"]):
        assert main(["serve", "serve_apps/default.yaml", "--host", "0.0.0.0", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "http host '0.0.0.0'" in err[0] and "api_key_env" in err[0]
        assert "allow_unauthenticated=true" in err[0]
    assert not ray_started()


def test_a_key_or_the_named_opt_out_allows_an_open_host(capsys, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    args = ["serve", "serve_apps/default.yaml", "--host", "0.0.0.0", "--check"]
    assert main([*args, f"api_key_env={KEY_ENV}"]) == 0
    assert main([*args, "allow_unauthenticated=true"]) == 0
    assert "without an API key (allow_unauthenticated)" in capsys.readouterr().out
    assert main(["serve", "serve_apps/default.yaml", "--check"]) == 0  # loopback needs nothing


def test_api_key_env_naming_an_unset_variable_is_one_sentence(capsys, monkeypatch):
    monkeypatch.delenv("TAPS_API_KEY", raising=False)
    assert main(["serve", "serve_apps/secured.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "api_key_env names 'TAPS_API_KEY' but it is unset" in err[0]
    assert not ray_started()


def test_keys_match_in_constant_time_over_any_length():
    assert keys_match(KEY, KEY)
    assert not keys_match(KEY[:-1], KEY) and not keys_match(KEY + "x", KEY)
    assert not keys_match("", KEY)


class CountingPool(ThreadPoolExecutor):
    """The decoding pool: counts the generations it was given."""

    def __init__(self) -> None:
        super().__init__(1)
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs):
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


class RecordingMetrics:
    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.snapshots: list = []  # live speed, published while decoding

    def record(self, endpoint, status, latency_s, stats) -> None:
        self.records.append((endpoint, status, stats))

    def live(self, snapshot) -> None:
        self.snapshots.append(snapshot)


def asgi(app, path: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    """(status, JSON body) of one POST through the ASGI interface."""

    async def call() -> tuple[int, dict]:
        sent, out = [False], {"status": 0, "body": b""}

        async def receive() -> dict:
            if sent[0]:
                return {"type": "http.disconnect"}
            sent[0] = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
                 "server": ("127.0.0.1", 8000),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        await app(scope, receive, send)
        return out["status"], json.loads(out["body"])

    return asyncio.run(call())


@pytest.fixture(scope="module")
def service():
    target = dataclasses.replace(tiny_target("llama", vocab=32), tokenizer=DigitTokenizer())
    config = ServeConfig(target="tiny", api_key_env=KEY_ENV, max_tokens_limit=16,
                         default_max_tokens=4)
    with CompletionService(config, target, []) as svc:  # batched: the batch runs until the end
        yield svc


def test_a_wrong_key_gets_401_and_generates_nothing(service, caplog):
    pool, metrics = CountingPool(), RecordingMetrics()
    app = build_http_app(service, pool, metrics, KEY)
    request = {"model": "tiny", "prompt": [1, 2, 3, 4], "max_tokens": 4, "temperature": 0}
    with caplog.at_level(logging.DEBUG):
        for headers in ({}, {"Authorization": "Bearer wrong-key"},
                        {"Authorization": f"Basic {KEY}"}):
            status, body = asgi(app, "/v1/completions", request, headers)
            assert status == 401 and body["error"]["code"] in ("missing_api_key",
                                                               "invalid_api_key")
            assert KEY not in json.dumps(body) and "wrong-key" not in json.dumps(body)
        assert pool.jobs == 0  # nothing was decoded
        assert [r[1:] for r in metrics.records] == [(401, None)] * 3  # no generation stats
        status, body = asgi(app, "/v1/completions", request, {"Authorization": f"Bearer {KEY}"})
    pool.shutdown()
    assert status == 200 and body["usage"]["completion_tokens"] == 4 and pool.jobs == 1
    assert KEY not in caplog.text and KEY not in repr(metrics.records)
