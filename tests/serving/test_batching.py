"""The serving core with continuous batching, on a tiny random target (no Ray): every request
decodes as it would alone, per-request sampling, cancellation and stop strings free the batch
slot, a full queue is a 503, a failing sequence fails alone. Tests that depend on scheduling
drive the batch by hand (the service's scheduler not started): no timing assumptions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.serving.config import ServeConfig
from taps_ray.serving.events import Decoding
from taps_ray.serving.http import build_http_app, error_response
from taps_ray.serving.metrics import NullMetrics
from taps_ray.serving.protocol import ApiError, GenerationRequest
from taps_ray.serving.service import CompletionService
from tests.serving.test_service import TREE

GREEDY = SamplingParams()


def batched(target, drafters, **overrides) -> CompletionService:
    """A batched service (not started: `with` starts it, or the test steps it by hand)."""
    fields = dict(target="tiny", strategy="route-confidence", tree=TREE, max_tokens_limit=480,
                  default_max_tokens=8, max_batch_size=4, batch_queue=16, prefill_chunk=8)
    return CompletionService(ServeConfig(**{**fields, **overrides}), target, drafters)


def request(prompt, max_tokens: int, **fields) -> GenerationRequest:
    fields = {"model": None, "temperature": 0.0, **fields}
    return GenerationRequest("completion", prompt=tuple(prompt), max_tokens=max_tokens, **fields)


def read(decoding: Decoding) -> tuple[str, object]:
    events = list(decoding)
    return "".join(e.text for e in events), events[-1]


def alone(target, req: GenerationRequest, sampling=GREEDY, seed: int = 0) -> str:
    out = generate_plain(target, list(req.prompt), sampling, req.max_tokens, set(), seed=seed)
    return target.tokenizer.decode(out.tokens)


def prompts(n: int) -> list[list[int]]:
    """Prompts of 2..41 tokens, a little repetitive."""
    return [[(i + t) % 9 + 2 * (t % 3) for t in range(2 + (i * 13) % 40)] for i in range(n)]


def test_concurrent_requests_each_equal_their_solo_decoding(target, drafters):
    """9 requests of different lengths, at most 4 in the batch (the rest join as others leave),
    speculative and plain mixed, read concurrently as the HTTP layer reads them."""
    reqs = [request(p, 3 + (i * 7) % 20, strategy=None if i % 2 else "none")
            for i, p in enumerate(prompts(9))]
    with batched(target, drafters) as svc, ThreadPoolExecutor(len(reqs)) as pool:
        decodings = [svc.run(svc.prepare(r)) for r in reqs]
        results = list(pool.map(read, decodings))
        while svc.load().running:  # the last one leaves the batch after its last chunk
            time.sleep(0.01)
        snap = svc.scheduler.snapshot()
    for req, (text, last) in zip(reqs, results, strict=True):
        assert text == alone(target, req)
        assert last.finish_reason == "length" and last.stats.completion_tokens == req.max_tokens
        assert len(last.stats.gaps_s) == last.stats.steps and last.stats.first_token_s > 0
    assert any(last.stats.drafted for _, last in results[1::2])  # the batch did speculate
    assert not any(last.stats.drafted for _, last in results[::2])
    assert snap.running == snap.queue_length == 0 and snap.steps > 0
    assert svc.load().tokens_per_s > 0


def test_per_request_sampling_parameters_and_seeds(target, drafters):
    """Each request samples with its own temperature/top-p/top-k and seed, exactly as alone."""
    params = [(0.8, 1.0, 0), (1.0, 0.9, 0), (0.7, 1.0, 5), (0.0, 1.0, 0), (1.2, 0.8, 8)]
    reqs = [request(p, 12 + i, strategy="none", temperature=t, top_p=tp, top_k=k, seed=100 + i)
            for i, (p, (t, tp, k)) in enumerate(zip(prompts(5), params, strict=True))]
    spec = request([1, 2, 3] * 4, 16, temperature=0.9, seed=7)  # route-confidence, sampled
    # "sequence" + fixed trees: the speculative request's draws follow its own policy, as alone
    with batched(target, drafters, policy="fixed", batch_speculation="sequence") as svc, \
            ThreadPoolExecutor(6) as pool:
        texts = [text for text, _ in pool.map(read, [svc.run(svc.prepare(r))
                                                     for r in [*reqs, spec]])]
    for (t, tp, k), req, text in zip(params, reqs, texts[:-1], strict=True):
        assert text == alone(target, req, SamplingParams(t, tp, k), req.seed)
    engine = SpeculativeEngine(target, drafters, TREE, "route-confidence")
    solo = engine.generate([1, 2, 3] * 4, SamplingParams(0.9), 16, set(), seed=7)
    assert texts[-1] == target.tokenizer.decode(solo.tokens)
    assert len(set(texts[:3])) == 3


def test_cancel_and_a_reader_that_goes_away_leave_the_batch(target, drafters):
    svc = batched(target, drafters)  # stepped by hand
    long = request(prompts(1)[0], 400, strategy="none")
    cancelled, abandoned = svc.run(svc.prepare(long)), svc.run(svc.prepare(long))
    short = request([5, 6, 7], 12, strategy="none")
    kept = svc.run(svc.prepare(short))
    for _ in range(3):
        svc.scheduler.step()
    assert svc.load().running == 3
    next(iter(cancelled)), next(iter(abandoned))
    cancelled.cancel()  # what the HTTP layer does when its client disconnects
    iter(abandoned).close()  # the reader stopped reading
    svc.scheduler.step()
    assert svc.load().running == 1 and svc.scheduler.batch.size == 1
    assert list(cancelled) == []  # no more events, no final one
    while svc.load().running:
        svc.scheduler.step()
    assert read(kept)[0] == alone(target, short)
    assert svc.scheduler.snapshot().tokens < 12 + 2 * 10  # the long ones stopped at once


def test_a_stop_string_frees_the_slot_before_max_tokens(target, drafters):
    svc = batched(target, drafters)  # stepped by hand
    full = alone(target, request([3, 1, 4], 40))
    stop = " " + full.split(" ")[4] + " "  # first seen by the 5th token
    decoding = svc.run(svc.prepare(request([3, 1, 4], 40, strategy="none", stop=(stop,))))
    for _ in range(8):
        svc.scheduler.step()
    text, last = read(decoding)  # the stop string is in the chunks made so far
    assert last.finish_reason == "stop" and full.startswith(text) and stop not in text
    svc.scheduler.step()
    assert svc.load().running == 0 and svc.scheduler.snapshot().tokens < 40


def test_full_queue_is_503_with_retry_after(target, drafters):
    svc = batched(target, drafters, max_batch_size=1, batch_queue=1, retry_after_s=2.5)
    job = svc.prepare(request([1, 2, 3], 20, strategy="none"))
    svc.run(job)  # waits
    with pytest.raises(ApiError) as err:
        svc.run(svc.prepare(job.request))
    assert (err.value.status, err.value.code) == (503, "server_busy")
    response = error_response(err.value, svc.config.retry_after_s)
    assert response.headers["Retry-After"] == "3"  # rounded up, as Serve's own 503
    assert json.loads(response.body)["error"]["message"].startswith("this replica's batch")
    svc.scheduler.step()  # the first joins the batch: its queue slot is free again
    svc.run(svc.prepare(job.request))
    assert svc.load().queued == 1 and svc.load().running == 1


def test_a_failing_sequence_fails_alone(target, drafters):
    """logits / 1e-45 overflow: that request's sampling raises inside the batch."""
    reqs = [request(p, 10, strategy=None if i % 2 else "none") for i, p in
            enumerate(prompts(4))]
    with batched(target, drafters) as svc, ThreadPoolExecutor(5) as pool:
        broken = dataclasses.replace(svc.prepare(reqs[0]), sampling=SamplingParams(1e-45))
        failing = pool.submit(read, svc.run(broken))
        results = list(pool.map(read, [svc.run(svc.prepare(r)) for r in reqs]))
        with pytest.raises(ValueError, match="probability tensor is not a distribution"):
            failing.result()
    assert [text for text, _ in results] == [alone(target, r) for r in reqs]


class FaultyService(CompletionService):
    """Fault injection: a request with seed 13 samples at T = 1e-45, whose logits overflow to
    inf, so its sequence raises inside the batch (the protocol would make it greedy)."""

    def prepare(self, request: GenerationRequest):
        job = super().prepare(request)
        return dataclasses.replace(job, sampling=SamplingParams(1e-45)) \
            if request.seed == 13 else job


async def asgi(app, path: str, body: dict | bytes, disconnect_after: int = 0):
    """(status, headers, body bytes) of one POST through ASGI; `disconnect_after` > 0: the
    client goes away after that many body messages."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    out = {"status": 0, "headers": {}, "body": b"", "parts": 0}
    gone, sent = asyncio.Event(), [False]

    async def receive() -> dict:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")
            out["parts"] += 1
            if not message.get("more_body") or out["parts"] == disconnect_after:
                gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000), "headers": [(b"content-type", b"application/json")]}
    await app(scope, receive, send)
    return out["status"], out["headers"], out["body"]


def sse_text(raw: bytes) -> tuple[str, list[dict]]:
    """(completion text, events) of an SSE body; `data: [DONE]` must end it."""
    lines = [x for x in raw.decode().split("\n\n") if x]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(x[len("data: "):]) for x in lines[:-1]]
    return "".join(e["choices"][0]["text"] for e in events if e.get("choices")), events


def test_over_http_bad_and_failing_requests_leave_the_others_alone(target, drafters):
    """Through the HTTP app: good requests (streamed and whole) decode as alone while a
    malformed one gets 400 and a failing one an error event (stream) or 500 (whole)."""
    good = [request(p, 6 + 3 * i, strategy=None if i % 2 else "none")
            for i, p in enumerate(prompts(4))]
    bodies = [{"prompt": list(r.prompt), "max_tokens": r.max_tokens, "temperature": 0,
               "stream": i < 2, **({"strategy": "none"} if r.strategy else {})}
              for i, r in enumerate(good)]
    faulty = {"prompt": [1, 2, 3], "max_tokens": 8, "seed": 13}
    bad = [b'{"prompt": [1, 2', {"prompt": [1, 2], "max_tokens": 0}, {"prompt": [99]}]
    config = ServeConfig(target="tiny", strategy="route-confidence", tree=TREE,
                         max_tokens_limit=32, default_max_tokens=8, max_batch_size=4,
                         prefill_chunk=8)
    with FaultyService(config, target, drafters) as svc, \
            ThreadPoolExecutor(config.decode_threads) as pool:
        app = build_http_app(svc, pool, NullMetrics(), None)

        async def everything():
            calls = [*bodies, {**faulty, "stream": True}, faulty, *bad]
            return await asyncio.gather(*[asgi(app, "/v1/completions", b) for b in calls])

        answers = asyncio.run(everything())
        svc.check_health()  # two failures are not yet an unhealthy replica
    for i, (req, (status, _, raw)) in enumerate(zip(good, answers, strict=False)):
        text = sse_text(raw)[0] if i < 2 else json.loads(raw)["choices"][0]["text"]
        assert status == 200 and text == alone(target, req)
    status, _, raw = answers[4]
    assert status == 200 and sse_text(raw)[1][-1]["error"]["code"] == "internal_error"
    assert answers[5][0] == 500 and json.loads(answers[5][2])["error"]["type"] == "server_error"
    assert [a[0] for a in answers[6:]] == [400, 400, 400]


def test_over_http_a_client_that_disconnects_leaves_the_batch(target, drafters):
    config = ServeConfig(target="tiny", max_tokens_limit=480, max_batch_size=4)
    with CompletionService(config, target, []) as svc, ThreadPoolExecutor(4) as pool:
        app = build_http_app(svc, pool, NullMetrics(), None)
        body = {"prompt": [1, 2], "max_tokens": 480, "temperature": 0, "stream": True}
        status, _, raw = asyncio.run(asgi(app, "/v1/completions", body, disconnect_after=2))
        assert status == 200 and b"[DONE]" not in raw  # it went away mid-stream
        deadline = time.monotonic() + 60
        while svc.load().running:  # cancelled at once: it leaves at the next step
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert svc.scheduler.snapshot().tokens < 480  # far from running to its end


def test_eagle3_heads_serve_batched_and_must_share_aux_layers(target, drafters):
    """The replica's batch returns the EAGLE-3 heads' aux layers; heads reading different
    target layers are refused when the service starts, not per request."""
    from taps_ray.errors import TapsError
    from taps_ray.models.drafter import untrained_drafter
    from taps_ray.models.eagle3 import Eagle3Drafter

    def eagle3(name: str, aux) -> Eagle3Drafter:
        head = untrained_drafter(target, 5, layout="eagle3")
        other = Eagle3Drafter(target.model.config, head.draft_vocab, aux)
        other.load_state_dict(head.state_dict())
        other.meta = dataclasses.replace(head.meta, name=name, aux_layers=list(aux))
        return other.eval().requires_grad_(False)

    first = eagle3("math-e3", (0, 1, 2))
    svc = batched(target, [*drafters, first])
    assert svc.aux_layers == (0, 1, 2) and svc.scheduler.aux_layers == (0, 1, 2)
    reqs = [request(p, 6 + i, strategy="single" if i % 2 else "route-confidence",
                    drafters=["math-e3"] if i % 2 else None) for i, p in enumerate(prompts(4))]
    reqs[0] = dataclasses.replace(reqs[0], drafters=None, strategy="none")
    with svc, ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda r: read(svc.run(svc.prepare(r)))[0], reqs))
    assert texts == [alone(target, r) for r in reqs]
    with pytest.raises(TapsError, match="share aux_layers"):
        batched(target, [first, eagle3("chat-e3", (0, 2, 2))])
