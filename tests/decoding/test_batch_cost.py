"""Speculation under batching: the batch's cost model, its tree cap and its per-step choice."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.adaptive import make_policy
from taps_ray.decoding.batch_cost import (
    BatchSpeedChooser,
    BatchVerifyCost,
    SequenceSpeed,
    best_batch_cap,
    speculation_pays,
)
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.scheduler import BatchScheduler, BatchSettings, SequenceRequest
from taps_ray.speed.profile import CostProfile, HardwareKey
from tests.tiny import tiny_target

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost


def profile_with(batch: dict[int, dict[int, float]] | None = None) -> CostProfile:
    key = HardwareKey("tiny", "float32", "cpu: test", 1, "default")
    return CostProfile(key, 0.05, {100: {1: 0.05, 64: 0.12}}, {}, {}, "", "", 100,
                       batch_verify_s=batch or {})


def flat(rows: int, q: int) -> float:
    return 0.1  # verification is free beyond the first token


def steep(rows: int, q: int) -> float:
    return 0.01 * rows * q  # every token fed costs as much as a plain step


def speed(tau: float, draft_s: float = 0.0, verify_tokens: float = 5.0) -> SequenceSpeed:
    return SequenceSpeed(tau, draft_s, verify_tokens)


def test_best_batch_cap_follows_the_marginal_cost():
    confs = [torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.8, 0.05]), None]
    assert best_batch_cap(confs, [1.0, 1.0, 1.0], [1, 1, 1], flat, 0.0) == 3
    assert best_batch_cap(confs, [1.0, 1.0, 1.0], [1, 1, 1], steep, 0.0) == 0
    # Tb(B, q) = 0.3 + 0.01 q: the second node of each tree still pays, the third does not
    mild = lambda rows, q: 0.3 + 0.01 * rows * q  # noqa: E731
    assert best_batch_cap(confs, [1.0, 1.0, 1.0], [1, 1, 1], mild, 0.0) == 2
    # a badly calibrated drafter (scale 0.05) is not worth verifying at all
    assert best_batch_cap(confs, [0.05, 0.05, 1.0], [1, 1, 1], mild, 0.0) == 0


def test_speculation_pays_compares_predicted_batch_speeds():
    assert speculation_pays([speed(3.0), speed(3.0), None], flat)
    assert not speculation_pays([speed(3.0), speed(3.0), None], steep)  # 7 / 0.15 < 3 / 0.03
    # drafting time counts: a slow drafter loses even when verification is free
    assert not speculation_pays([speed(1.5, draft_s=0.2), None], flat)


def test_batch_cost_prefers_the_measured_table_then_online_then_tv():
    table = BatchVerifyCost(profile_with({1: {1: 0.05, 4: 0.08}, 2: {1: 0.06, 4: 0.1}}))
    assert table.ready and table(2, 4) == pytest.approx(0.1)
    fallback = BatchVerifyCost(profile_with())
    assert fallback(2, 4) == pytest.approx(profile_with().tv(8))
    online = BatchVerifyCost()
    assert not online.ready
    online.add(1, 1, 0.05)
    online.add(4, 2, 0.12)
    assert online.ready and online(2, 2) == pytest.approx(0.08)


def test_chooser_modes():
    chooser = BatchSpeedChooser(profile_with({1: {1: 0.01, 16: 0.03}, 8: {1: 0.08, 16: 0.4}}),
                                backoff=2)
    speeds = [SequenceSpeed(), SequenceSpeed(), SequenceSpeed()]
    assert chooser.modes(speeds, [True, True, False], "off") == [False] * 3
    assert chooser.modes(speeds, [True, True, False], "sequence") == [None] * 3
    assert chooser.modes(speeds[:1], [True], "cost") == [None]  # alone: its own policy
    assert chooser.modes(speeds, [False] * 3, "cost") == [None] * 3  # nobody can draft
    # unknown acceptance: measure by speculating
    assert chooser.modes(speeds, [True, True, False], "cost") == [True, True, False]
    speeds = [speed(1.2), speed(1.5), SequenceSpeed()]  # 3.7 / Tb(3, 5) < 3 / Tb(3, 1)
    assert chooser.modes(speeds, [True, True, False], "cost") == [False] * 3
    assert chooser.modes(speeds, [True, True, False], "cost") == [False] * 3  # back-off
    assert chooser.modes(speeds, [True, True, False], "cost") == [False] * 3
    assert chooser.plain_steps == 3 and chooser.plain_left == 0 and chooser.backoff == 4
    speeds[0].tau = speeds[1].tau = 3.0  # 7 / Tb(3, 5) > 3 / Tb(3, 1): worth its trees
    assert chooser.modes(speeds, [True, True, False], "cost") == [True, True, False]
    assert chooser.backoff == 2


def test_a_newcomer_borrows_the_pooled_acceptance_instead_of_forcing_a_measuring_step():
    chooser = BatchSpeedChooser(profile_with({1: {1: 0.01, 16: 0.03}, 8: {1: 0.08, 16: 0.4}}))
    newcomer = [speed(1.2), SequenceSpeed()]  # the second has no speculative step yet
    assert chooser.modes(newcomer, [True, True], "cost") == [True, True]  # no prior: measure
    chooser.pooled = speed(1.2)  # what the batch's sequences have been accepting
    assert chooser.modes([speed(1.2), SequenceSpeed()], [True, True], "cost") == [False] * 2
    chooser = BatchSpeedChooser(profile_with({1: {1: 0.01, 16: 0.03}, 8: {1: 0.08, 16: 0.4}}))
    chooser.pooled = speed(6.0)  # a batch that accepts deep paths: the newcomer speculates
    assert chooser.modes([speed(6.0), SequenceSpeed()], [True, True], "cost") == [True, True]


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


def lookup_requests(target, n: int) -> list[SequenceRequest]:
    out = []
    for i in range(n):
        prompt = [(i + t) % 5 + t % 2 for t in range(6 + 3 * i)]  # repetitive: lookup hits
        engine = SpeculativeEngine(target, [PromptLookupDrafter()], TreeConfig(8, 3, 2),
                                   policy=make_policy("adaptive"))
        out.append(SequenceRequest(prompt, SamplingParams(), 24 + i, set(), 0, engine))
    return out


def run(target, reqs, profile) -> list[tuple[list[int], list]]:
    settings = BatchSettings(max_batch_size=8, speculation="cost")
    with BatchScheduler(target, settings, profile) as scheduler:
        handles = [scheduler.submit(r) for r in reqs]
        out = []
        for handle in handles:
            chunks = list(handle.chunks(timeout=60))
            out.append(([t for c in chunks for t in c.tokens],
                        [c.stat for c in chunks if c.stat is not None]))
    return out


@pytest.mark.parametrize("cheap", [True, False])
def test_the_batch_speculates_only_when_the_profile_says_it_pays(target, cheap):
    """Cheap trees (Tb flat in q): every batched step verifies drafts, and they are accepted;
    costly trees (Tb linear in tokens, as plain steps): after one measuring step nobody drafts.
    Either way every request decodes exactly as alone."""
    slope = 0.0 if cheap else 1.0
    table = {b: {q: 1.0 * b + slope * b * (q - 1) for q in (1, 16)} for b in (1, 8)}
    reqs = lookup_requests(target, 4)
    results = run(target, reqs, profile_with(table))
    for request, (tokens, _) in zip(reqs, results, strict=True):
        assert tokens == generate_plain(target, list(request.prompt_ids), request.sampling,
                                        request.max_new_tokens, set()).tokens
    stats = [s for _, st in results for s in st]
    speculative = sum(s.speculative for s in stats)
    if cheap:
        assert sum(s.accepted for s in stats) > 0 and speculative > len(stats) // 2
    else:
        assert speculative <= 4 + len(stats) // 8  # the first measuring step, rare probes
