"""Prompt lookup: n-gram matching, its trees, and lossless decoding alone and in every strategy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import (
    PromptLookupDrafter,
    PromptLookupSession,
    chains_tree,
    load_drafter_spec,
    ngram_continuations,
    parse_prompt_lookup,
)
from taps_ray.decoding.proposer import DrafterSession, draft_many, make_session
from taps_ray.decoding.sampling import PositionDraws, SamplingParams
from taps_ray.decoding.verify import verify_greedy, verify_stochastic
from taps_ray.errors import TapsError
from taps_ray.evaluation.bench import load_drafter_set
from taps_ray.evaluation.replay import ReplayPrompt, replay, teacher_features
from taps_ray.evaluation.runner import Candidate, replay_candidates
from taps_ray.models.drafter import untrained_drafter
from tests.tiny import tiny_target

GREEDY = SamplingParams()
TREE = TreeConfig(20, 3, 4)
# this tiny target's greedy continuation of the prompt repeats itself (30 30 30 ..., 30 12 ...)
SEED, PROMPT, NEW = 3, [7, 7, 7, 7], 60


# --- n-gram matching --------------------------------------------------------------------------


def test_the_longest_ngram_wins_over_a_more_recent_shorter_one():
    #            0  1  2  3  4  5  6  7  8
    tokens = [1, 2, 3, 9, 5, 3, 8, 2, 3]  # "2 3" occurs at 1-2; "3" alone more recently at 5
    assert ngram_continuations(tokens, num_tokens=2) == [[9, 5]]
    assert ngram_continuations(tokens, max_ngram=1, num_tokens=2) == [[8, 2]]


def test_the_most_recent_match_of_an_ngram_wins():
    tokens = [4, 5, 1, 4, 5, 2, 4, 5]
    assert ngram_continuations(tokens, num_tokens=3) == [[2, 4, 5]]


def test_no_match_gives_no_draft():
    assert ngram_continuations([1, 2, 3, 4]) == []
    assert ngram_continuations([6]) == []
    assert ngram_continuations([]) == []
    assert ngram_continuations([1, 2, 3, 2], min_ngram=2) == []  # only a 1-gram repeats


def test_a_match_near_the_end_copies_its_own_draft_on():
    # the most recent "1 2" ends two tokens back: the copy runs into the text it drafts for
    assert ngram_continuations([5, 1, 2, 1, 2], num_tokens=5) == [[1, 2, 1, 2, 1]]
    assert ngram_continuations([7, 7], num_tokens=3) == [[7, 7, 7]]


def test_several_candidates_are_distinct_and_shorter_ngrams_follow():
    tokens = [1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 2]
    got = ngram_continuations(tokens, max_ngram=2, num_tokens=2, num_candidates=4)
    # "2": after 8 -> 3 5, after 4 -> 4 1, after 1 -> 3 1 (only 1-grams match "2" here)
    assert got == [[3, 5], [4, 1], [3, 1]]
    tokens = [1, 2, 3, 1, 2, 3, 1, 2]
    assert ngram_continuations(tokens, num_tokens=2, num_candidates=3) == [[3, 1]]  # same twice


def test_the_session_sees_the_first_prompt_token_and_ignores_features():
    session = PromptLookupSession(PromptLookupDrafter(num_tokens=3))
    session.reset(5)
    session.extend(None, torch.tensor([6, 1, 5]))  # the sequence is 5 6 1 5
    assert session.draft(TREE).tokens.tolist() == [6, 1, 5]
    session.reset()  # without x_0 the 5 has no earlier occurrence
    session.extend(torch.zeros(3, 4), torch.tensor([6, 1, 5]))
    assert session.draft(TREE).size == 0


# --- trees ------------------------------------------------------------------------------------


def test_chains_become_a_trie_scored_by_depth_and_cut_to_the_budget():
    tree = chains_tree([[3, 4, 5], [3, 6], [8]], 0.5, total_tokens=10)
    assert tree.tokens.tolist() == [3, 4, 5, 6, 8] and tree.parents.tolist() == [-1, 0, 1, 0, -1]
    torch.testing.assert_close(tree.scores, torch.log(torch.tensor(0.5)) * tree.depths.float())
    cut = chains_tree([[3, 4, 5], [3, 6], [8]], 0.5, total_tokens=3)
    assert sorted(cut.tokens.tolist()) == [3, 4, 8]  # shallow first, earlier chains on ties
    empty = chains_tree([], 0.5, total_tokens=10)
    assert empty.size == 0 and empty.tokens.dtype == torch.long


def test_the_chain_is_cut_to_the_tree_budget():
    session = PromptLookupSession(PromptLookupDrafter(num_tokens=10))
    session.reset(1)
    session.extend(None, torch.tensor([1] * 20))
    assert session.draft(TreeConfig(4, 3, 4)).size == 4
    assert session.draft(TreeConfig(60, 5, 10)).size == 10


def test_an_empty_tree_verifies_as_a_plain_step():
    empty = chains_tree([], 0.5, total_tokens=10)
    logits = torch.tensor([[0.0, 3.0, 1.0]])  # [n+1 = 1, V]
    assert verify_greedy(empty, logits).accepted_nodes == []
    assert verify_greedy(empty, logits).bonus_token == 1
    out = verify_stochastic(empty, torch.tensor([[0.0, 0.0, 1.0]]), PositionDraws(0))
    assert (out.accepted_nodes, out.bonus_token) == ([], 2)


# --- names and factories ----------------------------------------------------------------------


def test_specs_name_prompt_lookup_with_options():
    assert parse_prompt_lookup("prompt-lookup") == PromptLookupDrafter()
    assert parse_prompt_lookup("prompt-lookup:max_ngram=4, num_tokens=6") == \
        PromptLookupDrafter(max_ngram=4, num_tokens=6)
    assert parse_prompt_lookup("untrained") is None
    assert parse_prompt_lookup("runs/math-hass") is None
    assert PromptLookupDrafter().meta.name == "prompt-lookup"
    assert PromptLookupDrafter().meta.method == "none"


@pytest.mark.parametrize(("spec", "match"), [
    ("prompt-lookup:depth=3", "not an option=value pair"),
    ("prompt-lookup:num_tokens", "not an option=value pair"),
    ("prompt-lookup:num_tokens=ten", "must be a number"),
    ("prompt-lookup:num_tokens=0", "num_tokens must be >= 1"),
    ("prompt-lookup:min_ngram=4", "min_ngram"),
    ("prompt-lookup:confidence=1", "confidence"),
])
def test_bad_prompt_lookup_specs_are_user_errors(spec, match):
    with pytest.raises(TapsError, match=match):
        parse_prompt_lookup(spec)


def test_drafter_sets_and_the_session_factory_accept_prompt_lookup():
    target = tiny_target("llama")
    cfg = SimpleNamespace(drafter_sets={"s": ["prompt-lookup:num_tokens=4", "untrained"]})
    drafters = load_drafter_set(cfg, "s", target)
    assert list(drafters) == ["prompt-lookup", "untrained1-eagle2"]
    assert drafters["prompt-lookup"].num_tokens == 4
    assert load_drafter_spec("prompt-lookup", target) == PromptLookupDrafter()
    embed, head = target.model.get_input_embeddings(), target.model.lm_head.weight
    assert isinstance(make_session(drafters["prompt-lookup"], embed, head), PromptLookupSession)
    assert isinstance(make_session(drafters["untrained1-eagle2"], embed, head), DrafterSession)


def test_weight_averaging_refuses_prompt_lookup():
    target = tiny_target("llama")
    with pytest.raises(TapsError, match="'prompt-lookup' has none"):
        SpeculativeEngine(target, [untrained_drafter(target), PromptLookupDrafter()], TREE,
                          "average")


def test_draft_many_keeps_order_over_lockstep_and_lookup_sessions():
    target = tiny_target("llama")
    engine = SpeculativeEngine(target, [untrained_drafter(target, seed=1), PromptLookupDrafter(),
                                        untrained_drafter(target, seed=2)], TREE, "merged")
    prompt = torch.tensor([5, 6, 5, 6, 5])
    feats = engine.runner.prefill(prompt)
    for s in engine.sessions:
        s.reset(5)
        s.extend(feats, torch.tensor([6, 5, 6, 5, 6]))
    together = draft_many(engine.sessions, TREE)
    alone = [s.draft(TREE) for s in engine.sessions]
    assert together[1].tokens.tolist() == [5, 6, 5, 6, 5, 6, 5, 6, 5, 6]
    for a, b in zip(together, alone, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)


# --- lossless decoding ------------------------------------------------------------------------

CASES = [
    ("single", {}, False),
    ("merged", {"budget": "sum"}, True),
    ("merged", {"budget": "matched"}, True),
    ("route-confidence", {"granularity": "step"}, True),
    ("bandit", {}, True),
]
IDS = ["alone", "merged-sum", "merged-matched", "route-confidence", "bandit"]


def engine_for(target, strategy, options, with_eagle, **lookup):
    drafters = [PromptLookupDrafter(**lookup)]
    if with_eagle:
        drafters.insert(0, untrained_drafter(target, seed=1))
    return SpeculativeEngine(target, drafters, TREE, strategy, **options)


@pytest.fixture(scope="module")
def greedy_reference() -> list[int]:
    return generate_plain(tiny_target("llama", seed=SEED), PROMPT, GREEDY, NEW, set()).tokens


@pytest.mark.parametrize(("strategy", "options", "with_eagle"), CASES, ids=IDS)
def test_greedy_equals_plain_decoding_and_lookup_drafts_are_accepted(
    strategy, options, with_eagle, greedy_reference
):
    target = tiny_target("llama", seed=SEED)
    engine = engine_for(target, strategy, options, with_eagle)
    result = engine.generate(PROMPT, GREEDY, NEW, stop_token_ids=set())
    assert result.tokens == greedy_reference
    assert result.tau > 2.0 and sum(s.accepted for s in result.steps) >= 30
    if not with_eagle:
        assert min(s.verify_tokens for s in result.steps) == 1  # an empty tree was verified


def test_several_candidates_stay_lossless(greedy_reference):
    target = tiny_target("llama", seed=SEED)
    engine = engine_for(target, "single", {}, False, num_candidates=3, max_ngram=2)
    result = engine.generate(PROMPT, GREEDY, NEW, stop_token_ids=set())
    assert result.tokens == greedy_reference
    assert result.tau > 2.0


# The law at T > 0 (alone and merged with an EAGLE head, two candidates), over ~1,000 sampled
# tokens: test_strategies.py (prompt-lookup, merged-lookup-oracle).


# --- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "options", "with_eagle", "block"),
    [(*CASES[0], 0), (*CASES[0], 4), (*CASES[1], 4), (*CASES[3], 4)],
    ids=["alone-stepwise", "alone-block4", "merged-block4", "route-block4"],
)
def test_replay_equals_live(strategy, options, with_eagle, block):
    target = tiny_target("llama", seed=SEED)
    engine = engine_for(target, strategy, options, with_eagle)
    live = engine.generate(PROMPT, GREEDY, 40, stop_token_ids=set())
    item = ReplayPrompt("toy", "p", 0, PROMPT, live.tokens)
    result = replay(engine.sessions, engine.strategy, item,
                    teacher_features(engine.runner, item), TREE, block=block)
    assert result.committed == [s.committed for s in live.steps]
    assert result.routes == [s.route for s in live.steps]
    assert result.tau == pytest.approx(live.tau) and result.tau > 2.0


def test_replay_candidates_rate_prompt_lookup_as_live_decoding_does():
    target = tiny_target("llama", seed=SEED)
    drafters = {"a": untrained_drafter(target, seed=1), "prompt-lookup": PromptLookupDrafter()}
    cands = [Candidate("prompt-lookup", "single", ["prompt-lookup"]),
             Candidate("merged", "merged", ["a", "prompt-lookup"], budget_mode="sum")]
    item = ReplayPrompt("toy", "p", 0, PROMPT,
                        generate_plain(target, PROMPT, GREEDY, 40, set()).tokens)
    rows = replay_candidates(target, drafters, cands, TREE, [item], progress=False)
    for row, cand in zip(rows, cands, strict=True):
        engine = SpeculativeEngine(target, [drafters[n] for n in cand.drafter_names], TREE,
                                   cand.strategy)
        live = engine.generate(PROMPT, GREEDY, 40, stop_token_ids=set())
        assert (row.steps, row.tau) == (len(live.steps), pytest.approx(live.tau))
        assert row.tau > 2.0
