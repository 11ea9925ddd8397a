"""The Serve app on loopback, driven by the official `openai` client, on the real default target.

Serve starts once for the module with four apps: `open` at / (two untrained drafters saved to a
tmp folder with a joint routing score, route-confidence by default and route-learned per request,
the default adaptive speed policy, continuous batching), `secured`
at /secured (a best configuration that chose plain decoding, API key from an env var), `tight`
(a batch of one and a queue of one: the replica itself answers 503) and `tight-off` (one request
at a time, Serve's queue limit answers 503). Greedy output through the service must equal plain
decoding's; Ray exports the replicas' metrics on a known port, every second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from taps_ray.config.schema import TreeConfig
from taps_ray.data.records import Message
from taps_ray.data.render import render_prompt
from taps_ray.decoding.engine import generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.evaluation.routing_fit import write_routing_scores
from taps_ray.models.drafter import save_drafter, untrained_drafter
from tests.accepted import sign_routing_scores

openai = pytest.importorskip("openai")

MODEL = "smollm2-135m-instruct"
TREE = TreeConfig(8, 3, 4)  # small: the test runs on 2 busy CPU cores
KEY_ENV, KEY = "TAPS_TEST_SERVE_KEY", "test-key-123"
NAMES = ("math-test", "chat-test")
QUESTION = "What is 12 times 7? Answer briefly."
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # Ray's own pydantic fields
]


@pytest.fixture(scope="module")
def target():
    from taps_ray.models.target import load_target

    return load_target(MODEL)


@pytest.fixture(scope="module")
def drafter_dirs(target, tmp_path_factory):
    root = tmp_path_factory.mktemp("drafters")
    paths = []
    for seed, name in enumerate(NAMES):
        drafter = untrained_drafter(target, seed)
        meta = dataclasses.replace(drafter.meta, name=name)
        paths.append(str(save_drafter(drafter, root / name, meta)))
    # hand-set routing scores (tests/accepted.py), so route-learned can route between them
    write_routing_scores(paths, sign_routing_scores(NAMES, target.model.config.hidden_size, 5.0))
    return paths


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def base_url(drafter_dirs, metrics_port, tmp_path_factory):
    import ray
    from ray import serve

    from taps_ray.serving.app import build_app

    os.environ[KEY_ENV] = KEY  # before ray.init: the replicas inherit the environment
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = dict(replica_cpus=0.5, torch_threads=1, max_tokens_limit=64, default_max_tokens=16)
    serve.run(build_app(dict(drafters=drafter_dirs, strategy="route-confidence", tree=_tree(),
                             max_context=256, max_batch_size=8, **common)),
              name="open", route_prefix="/")
    plain_best = tmp_path_factory.mktemp("best") / "best_config.yaml"
    plain_best.write_text(yaml.safe_dump({"strategy": "plain", "drafters": drafter_dirs,
                                          "reason": "nothing beat plain decoding"}))
    serve.run(build_app(dict(api_key_env=KEY_ENV, model_name="secured",
                             best_config=str(plain_best), **common)),
              name="secured", route_prefix="/secured")
    # one request decoding, one waiting: the rest must be turned away with 503 + Retry-After,
    # by the replica's batch queue (tight: Serve sends it up to 8) or by Serve's queue
    serve.run(build_app(dict(model_name="tight", max_batch_size=1, batch_queue=1,
                             max_ongoing_requests=8, max_queued_requests=1, retry_after_s=3,
                             **{**common, "max_tokens_limit": 1024})),
              name="tight", route_prefix="/tight")
    serve.run(build_app(dict(model_name="tight-off", batching="off", max_ongoing_requests=1,
                             max_queued_requests=1, retry_after_s=3, **common)),
              name="tight-off", route_prefix="/tight-off")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _tree() -> dict:
    return dataclasses.asdict(TREE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat(client, content: str = QUESTION, **kwargs):
    kwargs = {"model": MODEL, "max_tokens": 12, "temperature": 0, **kwargs}
    return client.chat.completions.create(
        messages=[{"role": "user", "content": content}], **kwargs
    )


def post(url: str, body: bytes | dict, headers: dict | None = None, method: str = "POST"):
    """(status, parsed JSON or raw text) of a raw HTTP request."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def test_models_and_healthz(client, base_url):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["drafters"] == list(NAMES)
    assert post(f"{base_url}/healthz", b"", method="GET") == (200, {"status": "ok"})


def plain_reply(target) -> tuple[list[int], list[int], str]:
    """(prompt, tokens, text) of `chat`'s default request decoded plainly (greedy, 12 tokens)."""
    prompt = render_prompt(target.tokenizer, (Message("user", QUESTION),))
    tokens = generate_plain(target, prompt, SamplingParams(), 12).tokens
    return prompt, tokens, target.tokenizer.decode(tokens, skip_special_tokens=True)


def test_chat_greedy_equals_plain_decoding(client, target):
    response = chat(client)  # the adaptive policy may cut trees or decode plainly: lossless
    prompt, tokens, expected = plain_reply(target)  # the same request, plainly
    assert response.choices[0].message.content == expected
    usage, extra = response.usage, response.usage.model_extra
    assert usage.completion_tokens == len(tokens) and usage.prompt_tokens == len(prompt)
    assert extra["tau"] == round((usage.completion_tokens - 1) / extra["steps"], 4)
    assert extra["drafted"] >= extra["accepted"] >= 0
    assert 0 < extra["speculative_steps"] <= extra["steps"]
    assert sum(extra["routes"].values()) == extra["steps"]
    assert client.models.list().data[0].model_extra["policy"] == "adaptive"


def test_plain_strategy_and_drafter_subset(client, target):
    plain = chat(client, extra_body={"strategy": "none"})
    assert plain.choices[0].message.content == plain_reply(target)[2]
    assert plain.usage.model_extra["drafted"] == 0
    single = chat(client, extra_body={"strategy": "single", "drafters": ["chat-test"]})
    assert single.choices[0].message.content == plain.choices[0].message.content  # lossless
    routes = single.usage.model_extra["routes"]  # "none": the guard's plain steps
    assert "chat-test" in routes and set(routes) <= {"chat-test", "none"}


def test_learned_routing_per_request_equals_plain_decoding(client, target):
    learned = chat(client, extra_body={"strategy": "route-learned"})
    assert learned.choices[0].message.content == plain_reply(target)[2]
    assert set(learned.usage.model_extra["routes"]) <= {*NAMES, "none"}


def test_best_config_of_plain_decoding_equals_plain_greedy(base_url, target):
    secured = openai.OpenAI(base_url=f"{base_url}/secured/v1", api_key=KEY, max_retries=0,
                            timeout=120)
    assert secured.models.list().data[0].model_extra["strategies"] == ["none"]
    response = chat(secured, model="secured")
    prompt = render_prompt(target.tokenizer, (Message("user", QUESTION),))
    expected = generate_plain(target, prompt, SamplingParams(), 12).tokens
    assert response.choices[0].message.content == target.tokenizer.decode(
        expected, skip_special_tokens=True)
    assert response.usage.model_extra["drafted"] == 0


def test_metrics_show_live_speed_and_speculation(client, base_url, metrics_port):
    chat(client)
    chat(openai.OpenAI(base_url=f"{base_url}/secured/v1", api_key=KEY, max_retries=0,
                       timeout=120), model="secured")
    names = ("ray_taps_live_tokens_per_s", "ray_taps_live_tokens_per_step",
             "ray_taps_speculating")
    deadline = time.monotonic() + 60
    while True:  # Ray exports every second once the replicas have reported
        text = post(f"http://127.0.0.1:{metrics_port}/metrics", b"", method="GET")[1]
        values = {name: _samples(text, name) for name in names}
        if all(any(app == "secured" for app, _ in v) for v in values.values()) and all(
                v > 0 for app, v in values["ray_taps_live_tokens_per_s"] if app == "open"):
            break
        assert time.monotonic() < deadline, f"no live gauges in /metrics: {values}"
        time.sleep(1)
    assert dict(values["ray_taps_speculating"])["secured"] == 0  # plain best configuration
    assert dict(values["ray_taps_speculating"])["open"] in (0, 1)  # the guard's current choice
    assert dict(values["ray_taps_live_tokens_per_step"])["open"] >= 1
    for name in ("ray_taps_batch_size", "ray_taps_queue_length", "ray_taps_replica_tokens_per_s",
                 "ray_taps_inter_token_latency_s_count"):  # the replica's load, every second
        assert "open" in dict(_samples(text, name)), name


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    """(application tag, value) of every sample of metric `name` in Prometheus text."""
    out = []
    for line in str(text).splitlines():
        if line.startswith(name + "{"):
            tags, value = line.rsplit(" ", 1)
            app = tags.split('application="', 1)[-1].split('"', 1)[0] if "application=" in tags \
                else ""
            out.append((app, float(value)))
    return out


def test_chat_streaming_matches_whole_response(client):
    whole = chat(client).choices[0].message.content
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert "tau" in chunks[-1].usage.model_extra


def test_completions_and_streaming(client, target):
    prompt = "The capital of France is"
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    result = generate_plain(target, target.tokenizer(prompt)["input_ids"], SamplingParams(), 8)
    expected = target.tokenizer.decode(result.tokens, skip_special_tokens=True)
    assert response.choices[0].text == expected
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream) == expected


def test_raw_sse_wire_format(base_url):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": True}
    status, raw = post(f"{base_url}/v1/completions", body)
    events = [e for e in raw.split("\n\n") if e]
    assert status == 200 and all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][len("data: "):])["object"] == "text_completion"


def test_stop_strings_cut_the_output(client):
    full = chat(client, max_tokens=16).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = chat(client, max_tokens=16, stop=[stop, "never-seen"]).choices[0]
    assert cut.message.content == full[: full.index(stop)] and cut.finish_reason == "stop"
    streamed = chat(client, max_tokens=16, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.message.content


def test_sampling_with_seed_equals_plain_sampling(client, target):
    """Position-keyed draws: a seeded request at T > 0 gives plain sampling's tokens, however
    the adaptive policy and the batch cut its trees, so it also reproduces."""
    first = chat(client, temperature=0.8, top_p=0.9, seed=5, max_tokens=8)
    second = chat(client, temperature=0.8, top_p=0.9, seed=5, max_tokens=8)
    prompt = render_prompt(target.tokenizer, (Message("user", QUESTION),))
    expected = generate_plain(target, prompt, SamplingParams(0.8, top_p=0.9), 8, seed=5).tokens
    text = target.tokenizer.decode(expected, skip_special_tokens=True)
    assert first.choices[0].message.content == second.choices[0].message.content == text


CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
BAD_REQUESTS = [  # (path, body, expected status)
    (CHAT_URL, b"{not json", 400),
    (CHAT_URL, b"", 400),
    (CHAT_URL, b"[1, 2]", 400),
    (CHAT_URL, {"model": MODEL}, 400),
    (CHAT_URL, {"messages": "hello"}, 400),
    (CHAT_URL, {"messages": []}, 400),
    (CHAT_URL, {"messages": {"role": "user"}}, 400),
    (CHAT_URL, {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    (CHAT_URL, {"messages": [{"role": "user"}]}, 400),
    (CHAT_URL, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
    (CHAT_URL, {"messages": USER, "model": "gpt-4"}, 404),
    (CHAT_URL, {"messages": USER, "max_tokens": 0}, 400),
    (CHAT_URL, {"messages": USER, "max_tokens": -3}, 400),
    (CHAT_URL, {"messages": USER, "max_tokens": 65}, 400),
    (CHAT_URL, {"messages": USER, "max_tokens": 10**30}, 400),
    (CHAT_URL, {"messages": USER, "max_tokens": "ten"}, 400),
    (CHAT_URL, {"messages": USER, "temperature": -1}, 400),
    (CHAT_URL, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400),
    (CHAT_URL, {"messages": USER, "top_p": 2}, 400),
    (CHAT_URL, {"messages": USER, "seed": -5}, 400),
    (CHAT_URL, {"messages": USER, "stop": 7}, 400),
    (CHAT_URL, {"messages": USER, "n": 3}, 400),
    (CHAT_URL, {"messages": USER, "stream": "yes"}, 400),
    (CHAT_URL, {"messages": USER, "stream": True, "max_tokens": 0}, 400),
    (CHAT_URL, {"messages": USER, "strategy": "fastest"}, 400),
    (CHAT_URL, {"messages": USER, "drafters": ["nope"]}, 400),
    (CHAT_URL, {"messages": USER, "drafters": []}, 400),
    (CHAT_URL, {"messages": [{"role": "user", "content": "hello " * 300}]}, 400),  # context
    (COMPLETIONS_URL, {"model": MODEL}, 400),
    (COMPLETIONS_URL, {"prompt": ""}, 400),
    (COMPLETIONS_URL, {"prompt": [999999]}, 400),
    (COMPLETIONS_URL, {"prompt": ["a", "b"]}, 400),
    ("/v1/nothing", {"messages": USER}, 404),
]


@pytest.mark.parametrize("path, body, status", BAD_REQUESTS)
def test_bad_request_then_good_one(base_url, client, path, body, status):
    got, payload = post(base_url + path, body)
    assert got == status, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]
    assert chat(client, max_tokens=2).choices[0].message.content is not None


def test_wrong_method_is_405_with_error_body(base_url, client):
    status, payload = post(base_url + CHAT_URL, b"", method="GET")
    assert status == 405 and payload["error"]["code"] == "method_not_allowed"
    assert chat(client, max_tokens=2).usage.completion_tokens == 2


def test_requests_run_concurrently(client):
    spans = {}

    def stream(i: int) -> None:
        start = time.perf_counter()
        chunks = chat(client, "Count from 1 to 100, separated by commas.", max_tokens=24,
                      stream=True)
        times = [time.perf_counter() for c in chunks if c.choices and c.choices[0].delta.content]
        spans[i] = (start, times[0], times[-1])

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # decoding overlapped: each request had text before the other one finished
    assert spans[0][1] < spans[1][2] and spans[1][1] < spans[0][2]


@pytest.mark.parametrize("app", ["tight", "tight-off"])
def test_beyond_capacity_is_503_with_retry_after(base_url, app):
    url = f"{base_url}/{app}/v1/completions"
    body = {"model": app, "prompt": "Count from 1 to 100:", "max_tokens": 48}
    answers: list[tuple[int, str | None]] = []

    def send() -> None:
        request = urllib.request.Request(url, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                answers.append((response.status, None))
        except urllib.error.HTTPError as err:
            answers.append((err.code, err.headers.get("Retry-After")))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(code for code, _ in answers)
    # how many of the first two get in depends on when Serve's router sees the replica busy
    assert statuses.count(200) >= 1 and statuses.count(503) >= 4, statuses
    assert set(statuses) <= {200, 503}
    assert all(after == "3" for code, after in answers if code == 503)
    client = openai.OpenAI(base_url=f"{base_url}/{app}/v1", api_key="unused", max_retries=0,
                           timeout=120)
    assert client.completions.create(model=app, prompt="Hi", max_tokens=2).usage \
        .completion_tokens == 2  # capacity is back once the burst is done


def test_concurrent_streams_and_bad_requests_mid_batch(client, base_url, target):
    """8 streams of different lengths decode together, each exactly as alone (T = 0), while
    malformed requests sent mid-batch get 400 and disturb none of them."""
    asks = [(f"{'Please, ' * i}count from 1 to {5 + 3 * i}.", 3 + i, "none" if i % 2 else None)
            for i in range(8)]
    texts: dict[int, str] = {}
    started = threading.Event()

    def stream(i: int) -> None:
        content, max_tokens, strategy = asks[i]
        extra = {"extra_body": {"strategy": strategy}} if strategy else {}
        parts = []
        for chunk in chat(client, content, max_tokens=max_tokens, stream=True, **extra):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                started.set()
        texts[i] = "".join(parts)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    started.wait(120)
    bad = [post(base_url + CHAT_URL, body)[0] for body in (
        b"{not json", {"messages": USER, "max_tokens": 0}, {"messages": USER, "top_p": 2})]
    for t in threads:
        t.join()
    assert bad == [400, 400, 400]
    for i, (content, max_tokens, _) in enumerate(asks):
        prompt = render_prompt(target.tokenizer, (Message("user", content),))
        tokens = generate_plain(target, prompt, SamplingParams(), max_tokens).tokens
        assert texts[i] == target.tokenizer.decode(tokens, skip_special_tokens=True), i


def test_a_client_closing_its_stream_leaves_the_batch(base_url, metrics_port):
    tight = openai.OpenAI(base_url=f"{base_url}/tight/v1", api_key="unused", max_retries=0,
                          timeout=120)
    stream = tight.completions.create(model="tight", prompt="1, 2, 3, 4, 5,", max_tokens=1000,
                                      temperature=0, stream=True)
    deadline = time.monotonic() + 45  # decoding all 1000 tokens takes far longer
    for _ in stream:  # until /metrics shows the sequence in the batch (published every second)
        if _batch_sizes(metrics_port).get("tight") == 1:
            break
        assert time.monotonic() < deadline, "the batch-size gauge never showed the stream"
    stream.close()
    while (sizes := _batch_sizes(metrics_port)).get("tight") != 0:
        assert time.monotonic() < deadline, f"the closed stream still decodes: {sizes}"
        time.sleep(1)


def _batch_sizes(metrics_port: int) -> dict[str, float]:
    text = post(f"http://127.0.0.1:{metrics_port}/metrics", b"", method="GET")[1]
    return dict(_samples(text, "ray_taps_batch_size"))


def test_api_key(base_url):
    url = f"{base_url}/secured/v1"
    status, payload = post(f"{url}/chat/completions", {"messages": USER})
    assert status == 401 and payload["error"]["code"] == "missing_api_key"
    wrong = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    assert KEY not in json.dumps(err.value.body)
    good = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    assert [m.id for m in good.models.list().data] == ["secured"]
    reply = good.chat.completions.create(model="secured", messages=USER, max_tokens=3)
    assert reply.usage.completion_tokens == 3
    assert post(f"{base_url}/secured/healthz", b"", method="GET")[0] == 200  # probes need no key


def test_crashed_replica_is_replaced(base_url):
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::secured#")]
    assert len(names) == 1
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    good = openai.OpenAI(base_url=f"{base_url}/secured/v1", api_key=KEY, max_retries=0,
                         timeout=60)
    deadline = time.monotonic() + 150
    while True:  # Serve notices the dead replica and starts a new one (models load again)
        try:
            reply = good.chat.completions.create(model="secured", messages=USER, max_tokens=2)
            break
        except openai.APIError:
            assert time.monotonic() < deadline, "no replacement replica in 150 s"
            time.sleep(2)
    assert reply.usage.completion_tokens == 2
    renamed = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("SERVE_REPLICA::secured#")]
    assert renamed and renamed != names
