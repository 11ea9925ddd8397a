"""Continuous batching: each request's output equals the same request decoded alone."""

from __future__ import annotations

import pytest

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.adaptive import make_policy
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.scheduler import (
    BatchScheduler,
    BatchSettings,
    QueueFull,
    SequenceRequest,
)
from taps_ray.models.drafter import untrained_drafter
from tests.tiny import tiny_target

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

GREEDY = SamplingParams()
TREE = TreeConfig(total_tokens=8, depth=3, top_k=2)


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


def lookup_engine(target, policy=None) -> SpeculativeEngine:
    return SpeculativeEngine(target, [PromptLookupDrafter()], TREE,
                             policy=policy or make_policy("adaptive"))


def eagle_engine(target) -> SpeculativeEngine:
    """An untrained EAGLE head: with 32 tokens and top_k 6 it hits the target's argmax often
    enough to be accepted (and it reads the batch's features)."""
    return SpeculativeEngine(target, [untrained_drafter(target, seed=3)], TreeConfig(16, 3, 6),
                             policy=make_policy("adaptive"))


def requests(target, n: int = 10) -> list[SequenceRequest]:
    """Prompts of 3..48 tokens (repetitive, so prompt lookup is accepted), budgets 4..40;
    a third decode plainly, a third with prompt lookup, a third with an EAGLE head."""
    out = []
    for i in range(n):
        length = 3 + (i * 5) % 46
        prompt = [(i + t) % 7 + 2 * (t % 3) for t in range(length)]
        engine = [None, lookup_engine(target), eagle_engine(target)][i % 3]
        out.append(SequenceRequest(prompt, GREEDY, 4 + (i * 7) % 37, set(), 0, engine))
    return out


def alone(target, request: SequenceRequest) -> list[int]:
    return generate_plain(target, list(request.prompt_ids), request.sampling,
                          request.max_new_tokens, request.stop_ids, request.seed).tokens


def drain(handle) -> tuple[list[int], list]:
    tokens, stats = [], []
    for chunk in handle.chunks(timeout=60):
        tokens += chunk.tokens
        if chunk.stat is not None:
            stats.append(chunk.stat)
    return tokens, stats


@pytest.mark.parametrize("speculation", ["cost", "sequence", "off"])
def test_greedy_requests_equal_their_solo_decoding(target, speculation):
    """10 requests, at most 4 at a time (the rest join as others leave), chunked prefill."""
    reqs = requests(target)
    settings = BatchSettings(max_batch_size=4, prefill_chunk=8, speculation=speculation)
    with BatchScheduler(target, settings) as scheduler:
        early = [scheduler.submit(r) for r in reqs[:6]]
        first = next(early[0].chunks(timeout=60))  # the batch is running now
        late = [scheduler.submit(r) for r in reqs[6:]]
        results = [drain(h) for h in [*early, *late]]
    results[0] = (first.tokens + results[0][0], results[0][1])
    for request, (tokens, _) in zip(reqs, results, strict=True):
        assert tokens == alone(target, request)
    accepted = sum(s.accepted for _, stats in results for s in stats)
    if speculation != "cost":  # "cost" speculates only when its timings say it pays
        assert (accepted > 0) == (speculation == "sequence")
    snap = scheduler.snapshot()
    assert snap.batch_size == snap.queue_length == snap.running == 0
    assert snap.tokens == sum(len(t) for t, _ in results)


@pytest.mark.parametrize("speculation", ["cost", "sequence"])
def test_per_request_sampling_and_seeds(target, speculation):
    """Each sequence samples with its own parameters from its own position-keyed draws: a
    seeded request gives plain sampling's tokens whatever was drafted, however its trees were
    cut and whoever shared its batch."""
    params = [SamplingParams(0.8), SamplingParams(1.0, top_p=0.9), SamplingParams(0.7, top_k=5),
              GREEDY, SamplingParams(1.2, 0.8, 8)]
    reqs = [SequenceRequest([3, 1, 4, 1, 5][: 2 + i], p, 12 + i, set(), 100 + i)
            for i, p in enumerate(params)]
    reqs.append(SequenceRequest([2], SamplingParams(1.0), 1, set(), 5))  # done at prefill
    reqs += [SequenceRequest([1, 2, 3] * 4, SamplingParams(0.9), 20, set(), 7,
                             lookup_engine(target)),
             SequenceRequest([4, 5] * 6, SamplingParams(1.0, top_k=6), 24, set(), 8,
                             eagle_engine(target))]
    with BatchScheduler(target, BatchSettings(speculation=speculation)) as scheduler:
        handles = [scheduler.submit(r) for r in reqs]
        results = [drain(h) for h in handles]
    for request, (tokens, _) in zip(reqs, results, strict=True):
        assert tokens == alone(target, request)
    assert len({tuple(t) for t, _ in results[:3]}) == 3  # different seeds, different samples
    if speculation == "sequence":  # drafts were accepted at T > 0, yet the tokens are plain's
        assert sum(s.accepted for _, stats in results[-2:] for s in stats) > 0


def test_cancel_leaves_the_batch_and_frees_its_row(target):
    scheduler = BatchScheduler(target, BatchSettings(prefill_chunk=4))  # driven by hand
    keep = SequenceRequest(list(range(9)), GREEDY, 30, set())
    gone = scheduler.submit(SequenceRequest(list(range(5)), GREEDY, 500, set()))
    stay = scheduler.submit(keep)
    for _ in range(6):
        scheduler.step()
    assert scheduler.snapshot().batch_size == 2 and scheduler.batch.size == 2
    gone.cancel()
    scheduler.step()
    assert scheduler.snapshot().batch_size == 1 and scheduler.batch.size == 1
    assert scheduler.batch.lengths[0] == scheduler.batch.cache.get_seq_length()
    assert len(list(gone.chunks(timeout=1))) == 1 + 6  # prefill token + 6 steps, then it ended
    while scheduler.snapshot().running:
        scheduler.step()
    assert drain(stay)[0] == alone(target, keep)


def test_a_failing_sequence_fails_alone(target):
    broken = lookup_engine(target)
    calls = {"n": 0}
    propose = broken.strategy.propose

    def flaky(sessions, tree):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("drafter exploded")
        return propose(sessions, tree)

    broken.strategy.propose = flaky
    reqs = requests(target, 3)
    bad = SequenceRequest([1, 2, 1, 2, 1, 2], GREEDY, 30, set(), 0, broken)
    with BatchScheduler(target, BatchSettings(speculation="sequence")) as scheduler:
        handles = [scheduler.submit(r) for r in [reqs[0], bad, reqs[1], reqs[2]]]
        with pytest.raises(RuntimeError, match="drafter exploded"):
            drain(handles[1])
        outputs = [drain(h)[0] for h in (handles[0], handles[2], handles[3])]
    assert outputs == [alone(target, r) for r in reqs]


def test_prefill_is_chunked_between_steps(target):
    scheduler = BatchScheduler(target, BatchSettings(prefill_chunk=8))
    first = scheduler.submit(SequenceRequest([1, 2, 3], GREEDY, 40, set()))
    scheduler.step()  # prefill (nobody decodes yet) + first step
    assert scheduler.snapshot().batch_size == 1
    scheduler.submit(SequenceRequest(list(range(32)) * 2, GREEDY, 5, set()))
    for _ in range(7):  # 64 prompt tokens in chunks of 8: one chunk per step
        scheduler.step()
        snap = scheduler.snapshot()
        assert (snap.batch_size, snap.running) == (1, 2)
    scheduler.step()
    assert scheduler.snapshot().batch_size == 2
    assert len(drain_now(first)) == 1 + 9  # the running sequence stepped every time


def drain_now(handle) -> list[int]:
    tokens = []
    while not handle._queue.empty():
        tokens += handle._queue.get().tokens
    return tokens


def test_admission_limits_and_bad_requests(target):
    scheduler = BatchScheduler(target, BatchSettings(max_queue=1))
    scheduler.submit(SequenceRequest([1], GREEDY, 2, set()))
    with pytest.raises(QueueFull, match="max_queue 1"):
        scheduler.submit(SequenceRequest([1], GREEDY, 2, set()))
    with pytest.raises(ValueError, match="max_new_tokens"):
        scheduler.submit(SequenceRequest([1], GREEDY, 0, set()))
    with pytest.raises(ValueError, match="prompt_ids"):
        scheduler.submit(SequenceRequest([], GREEDY, 2, set()))
    with pytest.raises(ValueError, match="speculation"):
        BatchSettings(speculation="maybe")


def test_stop_fails_unfinished_requests(target):
    scheduler = BatchScheduler(target).start()
    handle = scheduler.submit(SequenceRequest([1, 2], GREEDY, 10_000, set()))
    next(handle.chunks(timeout=60))
    scheduler.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        drain(handle)
