"""Combination strategies: parity with `single`, lossless at T = 0 and T > 0, replay == live."""

from __future__ import annotations

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.proposer import DrafterSession, draft_many
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import make_strategy, strategy_names
from taps_ray.decoding.tree import DraftTree, merge_trees
from taps_ray.errors import TapsError
from taps_ray.evaluation.replay import ReplayPrompt, replay, teacher_features
from taps_ray.models.drafter import untrained_drafter
from tests.decoding.test_engine import hf_greedy
from tests.decoding.test_engine_sampling import (
    PROMPT,
    TRIALS,
    VOCAB,
    exact_pair_law,
    p_value,
    sampled_pairs,
)
from tests.tiny import tiny_target

GREEDY = SamplingParams()
TREE = TreeConfig(20, 3, 6)

# (strategy, options) for every combination strategy
COMBINED = [
    ("average", {}),
    ("route-confidence", {"granularity": "step"}),
    ("route-confidence", {"granularity": "prompt"}),
    ("route-entropy", {"granularity": "step"}),
    ("route-entropy", {"granularity": "prompt"}),
    ("merged", {"budget": "sum"}),
    ("merged", {"budget": "matched"}),
    ("bandit", {}),
]
IDS = [f"{n}-{'-'.join(map(str, o.values()))}" for n, o in COMBINED]


def prompts(n: int = 3) -> list[list[int]]:
    return [
        torch.randint(0, 32, (8 + k,), generator=torch.Generator().manual_seed(k)).tolist()
        for k in range(n)
    ]


def run(target, drafters, strategy, options, prompt, max_new=30):
    engine = SpeculativeEngine(target, drafters, TREE, strategy, **options)
    return engine.generate(prompt, GREEDY, max_new, stop_token_ids=set())


def test_registry_lists_every_strategy():
    assert set(strategy_names()) >= {"single", "average", "route-confidence", "route-entropy",
                                     "merged", "bandit"}


# --- merged trees as a trie -------------------------------------------------------------------


def test_merge_trees_shares_identical_paths_and_keeps_the_best_score():
    a = DraftTree.make_dummy([-1, -1, 0], tokens=[5, 6, 7], scores=[-1.0, -2.0, -3.0])
    b = DraftTree.make_dummy([-1, 0, -1], tokens=[5, 7, 9], scores=[-0.5, -4.0, -1.5])
    merged = merge_trees([a, b])
    paths = {(merged.parents[k].item(), merged.tokens[k].item()): merged.scores[k].item()
             for k in range(merged.size)}
    # 5 and 5->7 appear in both: one node each, scored by the max
    assert merged.size == 4
    assert paths[(-1, 5)] == -0.5 and paths[(-1, 6)] == -2.0 and paths[(-1, 9)] == -1.5
    assert paths[(0, 7)] == -3.0
    matched = merge_trees([a, b], total_tokens=2)
    assert sorted(matched.tokens.tolist()) == [5, 9]  # the two best of the union


def test_merging_one_tree_or_copies_returns_it():
    tree = DraftTree.make_dummy([-1, -1, 0, 1, 2])
    for merged in (merge_trees([tree]), merge_trees([tree, tree, tree], total_tokens=5)):
        for field in ("tokens", "parents", "scores"):
            assert torch.equal(getattr(merged, field), getattr(tree, field))


# --- parity with single -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "options"),
    [(n, o) for n, o in COMBINED if n != "average"] + [("average", {})],
)
def test_over_one_drafter_equals_single(strategy, options):
    target = tiny_target("llama")
    drafter = untrained_drafter(target, seed=3)
    for prompt in prompts():
        single = run(target, [drafter], "single", {}, prompt)
        other = run(target, [drafter], strategy, options, prompt)
        assert other.tokens == single.tokens
        assert [s.accepted for s in other.steps] == [s.accepted for s in single.steps]
        assert [s.verify_tokens for s in other.steps] == [s.verify_tokens for s in single.steps]


def test_merged_matched_over_copies_of_one_drafter_equals_single():
    target = tiny_target("qwen3")
    drafter = untrained_drafter(target, seed=4)
    for prompt in prompts():
        single = run(target, [drafter], "single", {}, prompt)
        merged = run(target, [drafter] * 3, "merged", {"budget": "matched"}, prompt)
        assert [s.accepted for s in merged.steps] == [s.accepted for s in single.steps]
        assert [s.verify_tokens for s in merged.steps] == [s.verify_tokens for s in single.steps]


def test_merged_sum_verifies_more_and_matched_verifies_one_trees_budget():
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=s) for s in (1, 2, 3)]
    prompt = prompts(1)[0]
    summed = run(target, drafters, "merged", {"budget": "sum"}, prompt)
    matched = run(target, drafters, "merged", {"budget": "matched"}, prompt)
    assert max(s.verify_tokens for s in summed.steps) > TREE.total_tokens + 1
    assert all(s.verify_tokens == TREE.total_tokens + 1 for s in matched.steps)


def test_draft_many_equals_separate_drafts():
    target = tiny_target("llama")
    runner = SpeculativeEngine(target, [untrained_drafter(target)], TREE).runner
    feats = runner.prefill(torch.tensor(prompts(1)[0]))
    drafters = [untrained_drafter(target, seed=1),
                untrained_drafter(target, seed=2, draft_vocab_size=20)]
    drafters[1].draft_vocab = torch.arange(12, 32)  # a vocabulary of its own
    sessions = [DrafterSession(d, runner.embed, runner.lm_head.weight) for d in drafters]
    nxt = torch.tensor(prompts(1)[0][1:] + [3])
    for s in sessions:
        s.reset()
        s.extend(feats, nxt)
    together = draft_many(sessions, TREE)
    for s in sessions:
        s.reset()
        s.extend(feats, nxt)
    alone = [s.draft(TREE) for s in sessions]
    for a, b in zip(together, alone, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
        torch.testing.assert_close(a.scores, b.scores)


# --- lossless ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "options"), COMBINED, ids=IDS)
def test_greedy_equals_plain_decoding_with_three_drafters(strategy, options):
    target = tiny_target("qwen2")
    drafters = [untrained_drafter(target, seed=s) for s in (1, 2, 3)]
    for prompt in prompts(2):
        result = run(target, drafters, strategy, options, prompt, max_new=40)
        assert result.tokens == hf_greedy(target, prompt, 40)


@pytest.mark.parametrize(
    ("strategy", "options"),
    [("merged", {"budget": "sum"}),
     pytest.param("merged", {"budget": "matched"}, marks=pytest.mark.slow),
     ("route-confidence", {"granularity": "step"}),
     pytest.param("route-entropy", {"granularity": "step"}, marks=pytest.mark.slow),
     pytest.param("bandit", {}, marks=pytest.mark.slow)],
    ids=["merged-sum", "merged-matched", "route-confidence", "route-entropy", "bandit"],
)
def test_sampling_follows_the_target_law_with_three_drafters(strategy, options):
    params = SamplingParams(temperature=1.0)
    target = tiny_target("llama", vocab=VOCAB, seed=5)
    drafters = [untrained_drafter(target, seed=s) for s in (2, 3, 4)]
    engine = SpeculativeEngine(target, drafters, TreeConfig(8, 2, 3), strategy, **options)
    law = exact_pair_law(target, params)
    counts = sampled_pairs(lambda s: engine.generate(PROMPT, params, 3, set(), seed=s).tokens)
    assert p_value(counts, TRIALS * law) > 1e-3
    assert p_value(counts, TRIALS * law.T.contiguous()) < 1e-3


# --- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [0, 4], ids=["stepwise", "block4"])
@pytest.mark.parametrize(("strategy", "options"), COMBINED, ids=IDS)
def test_replay_equals_live_for_every_strategy(strategy, options, block):
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=s) for s in (1, 3)]
    for prompt in prompts(2):
        engine = SpeculativeEngine(target, drafters, TREE, strategy, **options)
        live = engine.generate(prompt, GREEDY, 30, stop_token_ids=set())
        plain = generate_plain(target, prompt, GREEDY, 30, stop_token_ids=set()).tokens
        item = ReplayPrompt("toy", "p", 0, prompt, plain)
        result = replay(engine.sessions, engine.strategy, item,
                        teacher_features(engine.runner, item), TREE, block=block)
        assert result.committed == [s.committed for s in live.steps]
        assert result.routes == [s.route for s in live.steps]


# --- behaviour --------------------------------------------------------------------------------


def test_prompt_routing_drafts_with_the_winner_only_after_warmup():
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=s) for s in (1, 2, 3)]
    engine = SpeculativeEngine(target, drafters, TREE, "route-confidence",
                               granularity="prompt", warmup_steps=2)
    proposals = []
    strategy = engine.strategy
    propose = strategy.propose
    strategy.propose = lambda sessions, tree: proposals.append(propose(sessions, tree)) or \
        proposals[-1]
    engine.generate(prompts(1)[0], GREEDY, 30, stop_token_ids=set())
    assert [p.drafted for p in proposals[:2]] == [[0, 1, 2], [0, 1, 2]]
    winner = proposals[2].route
    assert all(p.drafted == [winner] and p.route == winner for p in proposals[2:])


def test_bandit_tries_every_drafter_then_prefers_the_one_that_is_accepted():
    bandit = make_strategy("bandit", 3, exploration=0.1)
    bandit.start()
    picks = []
    for _ in range(30):
        pick = bandit.choose()
        picks.append(pick)
        bandit.depth = 5
        bandit.observe(type("P", (), {"route": pick})(), 4 if pick == 2 else 0)
    assert sorted(picks[:3]) == [0, 1, 2]
    assert picks[-10:] == [2] * 10


@pytest.mark.parametrize(
    ("strategy", "options", "match"),
    [("merged", {"budget": "half"}, "budget"), ("route-entropy", {"granularity": "token"},
     "granularity"), ("bandit", {"exploration": -1}, "exploration"),
     ("single", {"budget": "sum"}, "budget"), ("nope", {}, "unknown strategy")],
)
def test_bad_strategy_options_are_user_errors(strategy, options, match):
    with pytest.raises(TapsError, match=match):
        make_strategy(strategy, 2 if strategy != "single" else 1, **options)
