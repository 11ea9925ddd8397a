"""Speculative output equals plain decoding, token for token, whatever the drafter's quality."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.models.drafter import untrained_drafter
from tests.accepted import assert_accepted, one_layer_target, oracle_drafter
from tests.tiny import FAMILIES, tiny_target

GREEDY = SamplingParams()


def hf_greedy(target, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = target.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tree", [TreeConfig(8, 3, 4), TreeConfig(24, 4, 6), TreeConfig(1, 1, 1)])
def test_greedy_matches_hf_generate(family, tree):
    target = tiny_target(family)
    engine = SpeculativeEngine(target, [untrained_drafter(target, seed=1)], tree)
    for seed in range(3):
        prompt = torch.randint(0, 32, (7 + seed,), generator=torch.Generator().manual_seed(seed))
        result = engine.generate(prompt.tolist(), GREEDY, 40, stop_token_ids=set())
        assert result.tokens == hf_greedy(target, prompt.tolist(), 40)
        assert sum(s.committed for s in result.steps) + 1 == 40


@pytest.mark.parametrize("family", FAMILIES)
def test_accepted_drafts_keep_the_output_of_hf_generate(family, one_thread):
    # An oracle head (tests/accepted.py) is accepted along whole paths, so multi-token
    # acceptance and cache compaction on accepted paths run at every step.
    target = one_layer_target(family)
    engine = SpeculativeEngine(target, [oracle_drafter(target, 0.03, seed=1)], TreeConfig(24, 4, 6))
    results = []
    for seed in range(3):
        prompt = torch.randint(0, 32, (7 + seed,), generator=torch.Generator().manual_seed(seed))
        result = engine.generate(prompt.tolist(), GREEDY, 40, stop_token_ids=set())
        assert result.tokens == hf_greedy(target, prompt.tolist(), 40)
        results.append(result)
    assert_accepted(results, min_tau=3.0, min_depth=5)  # measured 3.4-4.1, paths of 5


def test_plain_loop_matches_hf_generate():
    target = tiny_target("qwen3")
    plain = generate_plain(target, [1, 2, 3, 4], GREEDY, 30, stop_token_ids=set())
    assert plain.tokens == hf_greedy(target, [1, 2, 3, 4], 30)


def test_stops_exactly_where_plain_decoding_stops():
    target = tiny_target("llama")
    reference = generate_plain(target, [5, 6, 7], GREEDY, 50, stop_token_ids=set()).tokens
    stop = reference[17]  # pretend this token is EOS: both loops must stop at its first use
    first = reference.index(stop)
    engine = SpeculativeEngine(target, [untrained_drafter(target)], TreeConfig(30, 4, 8))
    spec = engine.generate([5, 6, 7], GREEDY, 50, stop_token_ids={stop})
    plain = generate_plain(target, [5, 6, 7], GREEDY, 50, stop_token_ids={stop})
    assert spec.tokens == plain.tokens == reference[: first + 1]
    assert spec.finish_reason == plain.finish_reason == "stop"


@pytest.mark.parametrize("max_new", [1, 2, 5, 13])
def test_max_new_tokens_is_exact(max_new):
    target = tiny_target("llama")
    engine = SpeculativeEngine(target, [untrained_drafter(target, seed=3)], TreeConfig(30, 4, 8))
    result = engine.generate(list(range(10)), GREEDY, max_new, stop_token_ids=set())
    assert result.tokens == hf_greedy(target, list(range(10)), max_new)
    assert result.finish_reason == "length"


def test_stats_are_consistent():
    target = tiny_target("llama")
    engine = SpeculativeEngine(target, [untrained_drafter(target, seed=3)], TreeConfig(30, 4, 8))
    result = engine.generate(list(range(10)), GREEDY, 40, stop_token_ids=set())
    assert all(s.verify_tokens == 31 for s in result.steps)
    assert result.tau == pytest.approx(39 / len(result.steps))  # prefill token excluded
    assert all(s.committed == s.accepted + 1 for s in result.steps[:-1])
    by_depth = result.accepted_by_depth(5)
    assert by_depth == sorted(by_depth, reverse=True)
    for s in result.steps:
        assert len(s.accepted_confidence) == s.accepted
        assert s.rejected_confidence  # the root's children are always examined
        assert s.draft_s > 0 and s.verify_s > 0
