"""Replay tau (no live decoding) equals live engine tau, step by step, on the same drafter."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.tree import DraftTree
from taps_ray.evaluation.replay import ReplayPrompt, match_length, replay, teacher_features
from taps_ray.models.drafter import untrained_drafter
from tests.tiny import tiny_target

GREEDY = SamplingParams()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("max_new", [7, 40])
def test_replay_equals_live_step_by_step(family, max_new):
    target = tiny_target(family)
    tree = TreeConfig(30, 4, 8)
    engine = SpeculativeEngine(target, [untrained_drafter(target, seed=3)], tree)
    accepted = []
    for seed in range(3):
        prompt = torch.randint(0, 32, (9,), generator=torch.Generator().manual_seed(seed)).tolist()
        live = engine.generate(prompt, GREEDY, max_new, stop_token_ids=set())
        plain = generate_plain(target, prompt, GREEDY, max_new, stop_token_ids=set()).tokens
        item = ReplayPrompt("toy", f"p{seed}", 0, prompt, plain)
        feats = teacher_features(engine.runner, item)
        result = replay(engine.sessions, engine.strategy, item, feats, tree)
        assert result.committed == [s.committed for s in live.steps]
        assert result.tau == pytest.approx(live.tau)
        accepted += result.accepted
    assert max(accepted) >= 1  # the walk really accepted drafts somewhere


def test_replay_stops_at_eos_like_live():
    target = tiny_target("llama")
    prompt = [3, 1, 4, 1, 5]
    reference = generate_plain(target, prompt, GREEDY, 40, stop_token_ids=set()).tokens
    stop = reference[20]
    tree = TreeConfig(30, 4, 8)
    engine = SpeculativeEngine(target, [untrained_drafter(target, seed=3)], tree)
    live = engine.generate(prompt, GREEDY, 40, stop_token_ids={stop})
    plain = generate_plain(target, prompt, GREEDY, 40, stop_token_ids={stop}).tokens
    item = ReplayPrompt("toy", "eos", 0, prompt, plain)
    result = replay(engine.sessions, engine.strategy, item,
                    teacher_features(engine.runner, item), tree)
    assert result.committed == [s.committed for s in live.steps]


def test_match_length_follows_the_longest_matching_path():
    # root -> 5 (node 0) -> 6 (node 2) ; root -> 7 (node 1) -> 8 (node 3)
    tree = DraftTree.make_dummy([-1, -1, 0, 1], [5, 7, 6, 8])
    assert match_length(tree, [7, 8, 9]) == 2
    assert match_length(tree, [5, 6]) == 2
    assert match_length(tree, [5, 9]) == 1
    assert match_length(tree, [9]) == 0
    assert match_length(tree, []) == 0
