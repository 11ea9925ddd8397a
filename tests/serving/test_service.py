"""The serving core on a tiny random target (no Ray): checks, decoding parity, stats, health.
These run the unbatched mode (`batching: off`); tests/serving/test_batching.py the batched one."""

from __future__ import annotations

import dataclasses

import pytest

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.errors import TapsError
from taps_ray.serving.config import ServeConfig
from taps_ray.serving.protocol import ApiError, GenerationRequest
from taps_ray.serving.service import CompletionService, stream_plain

TREE = TreeConfig(6, 3, 3)
UNBATCHED = ServeConfig(target="tiny", batching="off")
PROMPT = (1, 2, 3, 4, 5)


class DigitTokenizer:
    """Token t decodes to 't ' (the tiny target has no tokenizer)."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"{t} " for t in tokens)

    def get_vocab(self) -> dict[str, int]:
        return {str(t): t for t in range(32)}


def service(target, drafters, **overrides) -> CompletionService:
    config = ServeConfig(target="tiny", strategy="route-confidence", tree=TREE,
                         max_tokens_limit=32, default_max_tokens=8, batching="off", **overrides)
    return CompletionService(config, target, drafters)


def request(**fields) -> GenerationRequest:
    fields = {"model": None, "prompt": PROMPT, "temperature": 0.0, **fields}
    return GenerationRequest("completion", **fields)


def run(svc: CompletionService, req: GenerationRequest):
    events = list(svc.run(svc.prepare(req)))
    return "".join(e.text for e in events), events[-1]


def test_stream_plain_matches_generate_plain(target):
    for sampling, seed in ((SamplingParams(), 0), (SamplingParams(1.0, top_p=0.9), 7)):
        plain = generate_plain(target, list(PROMPT), sampling, 12, set(), seed=seed)
        chunks = list(stream_plain(target, list(PROMPT), sampling, 12, set(), seed=seed))
        assert [t for c in chunks for t in c.tokens] == plain.tokens
        assert chunks[-1].finish_reason == plain.finish_reason == "length"


def test_speculative_output_and_stats_match_the_engine(target, drafters):
    svc = service(target, drafters, policy="fixed")  # the engine's own default policy
    text, last = run(svc, request(max_tokens=10))
    engine = SpeculativeEngine(target, drafters, TREE, "route-confidence")
    result = engine.generate(list(PROMPT), SamplingParams(), 10, set())
    assert text == DigitTokenizer().decode(result.tokens)
    usage = last.stats.usage()
    assert usage["completion_tokens"] == 10 and usage["steps"] == len(result.steps)
    assert usage["tau"] == round(result.tau, 4) and usage["drafted"] > 0
    assert sum(usage["routes"].values()) == usage["steps"]
    assert set(usage["routes"]) <= {"math-a", "chat-b"}


def test_single_uses_the_first_requested_drafter(target, drafters):
    svc = service(target, drafters, policy="fixed")
    _, last = run(svc, request(max_tokens=6, strategy="single", drafters=("chat-b", "math-a")))
    assert list(last.stats.routes) == ["chat-b"]


def test_plain_strategy_and_stop_string(target, drafters):
    svc = service(target, drafters)
    full, last = run(svc, request(max_tokens=8, strategy="none"))
    assert last.stats.drafted == 0 and last.finish_reason == "length"
    stop = full.split(" ")[3]
    cut, last = run(svc, request(max_tokens=8, strategy="none", stop=(f" {stop} ",)))
    assert last.finish_reason == "stop" and full.startswith(cut) and f" {stop} " not in cut


@pytest.mark.parametrize(
    "fields, status, param",
    [
        (dict(model="other"), 404, "model"),
        (dict(max_tokens=33), 400, "max_tokens"),
        (dict(strategy="fastest"), 400, "strategy"),
        (dict(drafters=("nope",)), 400, "drafters"),
        (dict(prompt=(40,)), 400, "prompt"),  # beyond the 32-token vocabulary
        (dict(prompt=(1,) * 500, max_tokens=20), 400, "prompt"),  # context is 512
    ],
)
def test_requests_refused_with_the_field(target, drafters, fields, status, param):
    req = dataclasses.replace(request(), **fields)
    with pytest.raises(ApiError) as err:
        service(target, drafters).prepare(req)
    assert (err.value.status, err.value.param) == (status, param)


def test_plain_only_service_refuses_strategies(target):
    svc = CompletionService(UNBATCHED, target, [], "drafters missing")
    assert svc.default_strategy == "none" and svc.describe()["strategies"] == ["none"]
    with pytest.raises(ApiError, match="no drafters loaded \\(drafters missing\\)"):
        svc.prepare(request(strategy="single"))
    assert run(svc, request(max_tokens=3))[1].stats.completion_tokens == 3


def test_model_name_and_alias_accepted(target, drafters):
    svc = service(target, drafters, model_name="served")
    for model in ("served", "tiny", None):
        svc.prepare(request(model=model, max_tokens=2))


def test_health_fails_after_repeated_internal_errors(target, drafters):
    svc = service(target, drafters)
    for _ in range(3):
        svc.check_health()
        svc.note_result(False)
    with pytest.raises(RuntimeError):
        svc.check_health()
    svc.note_result(True)
    svc.check_health()


def test_duplicate_drafter_names_are_refused(target, drafters):
    with pytest.raises(Exception, match="distinct names"):
        CompletionService(UNBATCHED, target, [drafters[0], drafters[0]])


def test_load_service_falls_back_to_plain_until_drafters_exist(target, drafters, tmp_path,
                                                               monkeypatch):
    from taps_ray.models.drafter import save_drafter
    from taps_ray.serving.service import load_service

    monkeypatch.setattr("taps_ray.models.target.load_target", lambda *a, **k: target)
    paths = [str(tmp_path / d.meta.name) for d in drafters]
    config = ServeConfig(target="tiny", drafters=paths, strategy="route-confidence",
                         missing_drafters="plain", batching="off")
    logged = []
    svc = load_service(config, log=logged.append)
    assert svc.default_strategy == "none" and not svc.drafters
    assert "missing" in logged[0] and "plain decoding" in logged[0]
    with pytest.raises(TapsError, match="does not exist"):
        load_service(dataclasses.replace(config, missing_drafters="error"))
    for drafter, path in zip(drafters, paths, strict=True):
        save_drafter(drafter, path, drafter.meta)
    svc = load_service(config, log=logged.append)  # a restart picks them up
    assert svc.default_strategy == "route-confidence" and list(svc.drafters) == ["math-a", "chat-b"]


def test_adaptive_default_is_lossless_and_reports_live_speed(target, drafters):
    from taps_ray.decoding.prompt_lookup import load_drafter_spec

    lookup = load_drafter_spec("prompt-lookup:num_tokens=4", target)
    svc = service(target, [drafters[0], lookup])
    snapshots = []
    job = svc.prepare(request(max_tokens=24, prompt=(1, 2, 3, 1, 2, 3, 1, 2)))
    assert job.policy.name == "adaptive"
    events = list(svc.run(job, snapshots.append))
    plain = generate_plain(target, list(job.prompt_ids), SamplingParams(), 24, set())
    assert "".join(e.text for e in events) == DigitTokenizer().decode(plain.tokens)
    stats = events[-1].stats
    assert 0 <= stats.speculative_steps <= stats.steps and stats.tau >= 1
    live = snapshots[-1]  # published after the last step
    assert live.tokens_per_s > 0 and live.tokens_per_step >= 1
    assert live.speculating == job.policy.speculate()


def test_guard_fallback_reaches_the_live_stats(target, drafters):
    svc = service(target, drafters)
    svc.plain_rate = 1e9  # plain decoding "measured" unbeatable: the guard must fall back
    job = svc.prepare(request(max_tokens=24))
    _, last = run(svc, job.request)
    live = svc.live.snapshot()
    assert live.fallbacks >= 1 and not live.speculating
    assert last.stats.routes["none"] == last.stats.steps - last.stats.speculative_steps > 0
    plain = CompletionService(UNBATCHED, target, [])
    run(plain, request(max_tokens=3))
    assert not plain.live.snapshot().speculating


def test_load_service_reads_this_machines_profile(target, drafters, tmp_path, monkeypatch):
    from taps_ray.serving.service import load_service
    from taps_ray.speed.profile import default_profile_path, machine_key, save_profile
    from tests.speed.conftest import hand_profile

    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("taps_ray.models.target.load_target", lambda *a, **k: target)
    config = ServeConfig(target="tiny", drafters=["prompt-lookup"], strategy="single",
                         batching="off")
    logged = []
    assert load_service(config, log=logged.append).profile is None
    assert "taps-ray calibrate` would give it a head start" in logged[0]
    key = machine_key(target)
    save_profile(hand_profile(key), default_profile_path(key))
    assert load_service(config, log=logged.append).profile.key == key
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("[]")
    with pytest.raises(TapsError, match="is corrupt"):
        load_service(dataclasses.replace(config, profile=str(corrupt)))
    other = tmp_path / "other.json"
    save_profile(hand_profile(), other)
    with pytest.raises(TapsError, match="other hardware"):
        load_service(dataclasses.replace(config, profile=str(other)))
