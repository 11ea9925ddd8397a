"""Combination strategies: parity with `single`, lossless at T = 0 and T > 0, replay == live.

Every lossless and replay test runs with drafters the target accepts (tests/accepted.py) and
asserts the acceptance it reached, so a strategy that lost or skewed accepted tokens fails:
- T = 0: token-exact against plain greedy decoding, over several prompts of 40 tokens;
- T > 0: the transition counts of long sampled outputs of a Markov target follow its exact law
  (chi-square), over hundreds of speculative steps per case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.adaptive import AdaptivePolicy
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.prompt_lookup import PromptLookupDrafter
from taps_ray.decoding.proposer import DrafterSession, draft_many
from taps_ray.decoding.router import META_KEY as ROUTER_KEY
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import make_strategy, strategy_names
from taps_ray.decoding.tree import DraftTree, merge_trees
from taps_ray.errors import TapsError
from taps_ray.evaluation.replay import ReplayPrompt, replay, teacher_features
from taps_ray.models.drafter import untrained_drafter
from tests.accepted import (
    assert_accepted,
    markov_target,
    one_layer_target,
    oracle_drafter,
    routes,
    sign_routing_scores,
    top_share_p_value,
    transition_counts,
    transition_law,
    transition_p_value,
)
from tests.decoding.conftest import SPECIALIST_NEW
from tests.steady import LosingGuard, SteadyCostPolicy
from tests.tiny import tiny_target

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=1.0)
TREE = TreeConfig(20, 3, 6)  # parity and behaviour tests (untrained heads)
GREEDY_TREE = TreeConfig(12, 3, 3)  # paths up to depth 4
SAMPLED_TREE = TreeConfig(8, 2, 3)  # paths up to depth 3
NEW = 40  # tokens per greedy run
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only contend

SAMPLED_NEW = 100  # tokens per sampled run; ten runs per case: ~1,000 transitions


@dataclass(frozen=True)
class Case:
    """A decoding path under test: strategy, options, which drafters, which speed policy."""

    strategy: str
    options: dict = field(default_factory=dict)
    drafters: str = "pair"  # pair: good + weak oracle; weak-first; one; lookup; lookup+oracle
    policy: str = "fixed"  # fixed | cut (adaptive trees) | fallback (guard forced to plain)
    greedy_tau: float = 2.0  # acceptance each case must reach (measured 2.3-8.7)
    sampled_tau: float = 1.8  # measured 1.95-2.8 (prompt lookup 1.56)
    sampled_runs: int = 10  # of SAMPLED_NEW tokens; more where few drafts are top tokens


CASES = {
    "single": Case("single", drafters="one", greedy_tau=3.0),
    "average": Case("average"),
    "route-confidence-step": Case("route-confidence", {"granularity": "step"}),
    "route-confidence-prompt": Case("route-confidence", {"granularity": "prompt"}),
    "route-learned-step": Case("route-learned", {"granularity": "step"}),
    "route-learned-prompt": Case("route-learned", {"granularity": "prompt"}),
    "route-entropy-step": Case("route-entropy", {"granularity": "step"}),
    "route-entropy-prompt": Case("route-entropy", {"granularity": "prompt"}),
    "merged-sum": Case("merged", {"budget": "sum"}, greedy_tau=3.0),
    "merged-matched": Case("merged", {"budget": "matched"}, greedy_tau=3.0),
    "bandit": Case("bandit", drafters="weak-first"),
    "prompt-lookup": Case("single", drafters="lookup", greedy_tau=5.0, sampled_tau=1.4,
                          sampled_runs=20),
    "merged-lookup-oracle": Case("merged", {"budget": "sum"}, drafters="lookup+oracle",
                                 greedy_tau=4.0),
    "adaptive-cut": Case("single", drafters="one", policy="cut", greedy_tau=2.2),  # 2.35
    "fallback-plain": Case("single", drafters="one", policy="fallback", greedy_tau=2.5,
                           sampled_runs=20),
}
COMBINED = [k for k, c in CASES.items() if c.drafters in ("pair", "weak-first")]


def drafter_set(case: Case, target, noises: tuple[float, float]) -> list:
    good, weak = (oracle_drafter(target, n, seed=s) for s, n in enumerate(noises, 1))
    if case.strategy == "route-learned":
        hidden_sign_router(good, weak)
    return {"pair": [good, weak], "weak-first": [weak, good], "one": [good],
            "lookup": [PromptLookupDrafter()],
            "lookup+oracle": [weak, PromptLookupDrafter(num_candidates=2)]}[case.drafters]


def hidden_sign_router(*heads) -> None:
    """Hand-set routing scores on the heads (tests/accepted.py): both are verified on every
    prompt."""
    scores = sign_routing_scores([h.meta.name for h in heads], heads[0].fc.weight.shape[0], 20.0)
    for head, score in zip(heads, scores, strict=True):
        head.meta.extra[ROUTER_KEY] = score.to_dict()


def policy_for(case: Case):
    if case.policy == "cut":  # verify cost 1 + n/4 step units: cuts low-confidence nodes
        return SteadyCostPolicy(verify_cost=lambda n: 1.0 + 0.25 * n, guard=None)
    if case.policy == "fallback":
        return AdaptivePolicy(guard=LosingGuard(), cut=False)
    return None


def engine_for(case: Case, target, noises, tree: TreeConfig) -> SpeculativeEngine:
    return SpeculativeEngine(target, drafter_set(case, target, noises), tree, case.strategy,
                             policy=policy_for(case), **case.options)


def check_paths(case: Case, results, tree: TreeConfig) -> None:
    """What the case's decoding path must show beyond acceptance."""
    steps = [s for r in results for s in r.steps]
    if case.strategy == "bandit":  # starts on the weak head, must move to the good one
        counts = [sum(s.route == i for s in steps) for i in (0, 1)]
        assert counts[0] > 0 and counts[1] > counts[0], f"bandit routes {counts}"
    if case.strategy == "route-learned" and case.options["granularity"] == "step":
        assert {s.route for s in steps} == {0, 1}  # the hidden states decided, both ways
    if case.policy == "cut":
        assert min(s.verify_tokens for s in steps) < tree.total_tokens + 1
    if case.policy == "fallback":
        plain = [s for s in steps if not s.speculative]
        assert len(plain) >= len(steps) // 4 and all(s.verify_tokens == 1 for s in plain)


def prompts(n: int = 3, vocab: int = 32) -> list[list[int]]:
    return [
        torch.randint(0, vocab, (8 + k,), generator=torch.Generator().manual_seed(k)).tolist()
        for k in range(n)
    ]


def run(target, drafters, strategy, options, prompt, max_new=30, tree=TREE):
    engine = SpeculativeEngine(target, drafters, tree, strategy, **options)
    return engine.generate(prompt, GREEDY, max_new, stop_token_ids=set())


def test_registry_lists_every_strategy():
    assert set(strategy_names()) >= {"single", "average", "route-confidence", "route-entropy",
                                     "route-learned", "merged", "bandit"}


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
        for field_name in ("tokens", "parents", "scores"):
            assert torch.equal(getattr(merged, field_name), getattr(tree, field_name))


# --- parity with single -----------------------------------------------------------------------


@pytest.mark.parametrize("name", COMBINED)
def test_over_one_drafter_equals_single(name):
    case = CASES[name]
    target = one_layer_target()
    drafter = oracle_drafter(target, 0.06, seed=3)
    singles = []
    for prompt in prompts():
        single = run(target, [drafter], "single", {}, prompt, tree=GREEDY_TREE)
        other = run(target, [drafter], case.strategy, case.options, prompt, tree=GREEDY_TREE)
        assert other.tokens == single.tokens
        assert [s.accepted for s in other.steps] == [s.accepted for s in single.steps]
        assert [s.verify_tokens for s in other.steps] == [s.verify_tokens for s in single.steps]
        singles.append(single)
    assert_accepted(singles, 2.0, 3)


def test_merged_matched_over_copies_of_one_drafter_equals_single():
    target = one_layer_target("qwen3")
    drafter = oracle_drafter(target, 0.06, seed=4)
    singles = []
    for prompt in prompts():
        single = run(target, [drafter], "single", {}, prompt, tree=GREEDY_TREE)
        merged = run(target, [drafter] * 3, "merged", {"budget": "matched"}, prompt,
                     tree=GREEDY_TREE)
        assert [s.accepted for s in merged.steps] == [s.accepted for s in single.steps]
        assert [s.verify_tokens for s in merged.steps] == [s.verify_tokens for s in single.steps]
        singles.append(single)
    assert_accepted(singles, 2.0, 3)


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


# --- lossless at T = 0: token-exact with accepted drafts --------------------------------------


def greedy_target(case: Case):
    """Prompt lookup runs on the Markov target, whose greedy text cycles (so it is accepted);
    EAGLE heads on a one-layer target with attention (context matters)."""
    return markov_target() if case.drafters.startswith("lookup") else one_layer_target()


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_equals_plain_decoding_with_accepted_drafters(name):
    case = CASES[name]
    target = greedy_target(case)
    engine = engine_for(case, target, (0.03, 0.15), GREEDY_TREE)
    results = []
    for prompt in prompts(3, target.model.config.vocab_size):
        result = engine.generate(prompt, GREEDY, NEW, stop_token_ids=set())
        assert result.tokens == generate_plain(target, prompt, GREEDY, NEW, set()).tokens
        results.append(result)
    assert_accepted(results, case.greedy_tau, min_depth=3)
    check_paths(case, results, GREEDY_TREE)


@pytest.mark.parametrize("name", [k for k in COMBINED
                                  if k != "average" and CASES[k].strategy != "route-learned"])
def test_greedy_equals_plain_decoding_with_specialists(name, specialists):
    """Two heads over-fitted on disjoint prompt sets of a 2-layer target: each is accepted on
    its own prompts only, so routing must pick per prompt (or step) to reach tau >= 2. (Their
    weight average is accepted on neither set, tau ~1.2: `average` is covered by the oracles;
    route-learned by test_router.py, with routing scores fitted on these specialists.)"""
    case = CASES[name]
    target, heads, own_a, own_b = specialists
    engine = SpeculativeEngine(target, heads, GREEDY_TREE, case.strategy, **case.options)
    results = []
    for prompt in own_a + own_b:
        result = engine.generate(prompt, GREEDY, SPECIALIST_NEW, stop_token_ids=set())
        assert result.tokens == generate_plain(target, prompt, GREEDY, SPECIALIST_NEW,
                                               set()).tokens
        results.append(result)
    assert_accepted(results, 3.0, min_depth=3)  # measured 3.8-4.3
    if case.strategy != "merged":  # merged verifies a union: no single route
        assert routes(results) == {0, 1}  # both specialists' trees were verified
    if case.options.get("granularity") == "prompt":  # each prompt settles on its specialist
        owners = [0] * len(own_a) + [1] * len(own_b)
        assert [r.steps[-1].route for r in results] == owners


# --- lossless at T > 0: the law of long sampled outputs ---------------------------------------


@pytest.fixture(scope="module")
def chain():
    """The Markov target, its exact transition law at T = 1, and a nearby law (T = 0.7)
    the tests must be able to tell apart from it."""
    target = markov_target()
    cooler = SamplingParams(temperature=0.7)
    return target, transition_law(target, SAMPLED), transition_law(target, cooler)


@pytest.mark.parametrize("name", list(CASES))
def test_sampling_follows_the_target_law(name, chain):
    case = CASES[name]
    target, law, nearby = chain
    engine = engine_for(case, target, (0.03, 0.3), SAMPLED_TREE)
    runs, results = [], []
    for seed in range(case.sampled_runs):
        prompt = [seed % 8, 3 * seed % 8, 5]
        result = engine.generate(prompt, SAMPLED, SAMPLED_NEW, set(), seed=seed)
        runs.append((prompt, result.tokens))
        results.append(result)
        # position-keyed draws: whatever was drafted, the tokens are plain sampling's
        assert result.tokens == generate_plain(target, prompt, SAMPLED, SAMPLED_NEW, set(),
                                               seed=seed).tokens
    counts = transition_counts(runs, law.shape[0])
    assert transition_p_value(counts, law) > 1e-3
    assert top_share_p_value(counts, law) > 1e-3  # catches an acceptance ratio skewed by 1.2
    assert transition_p_value(counts, nearby) < 1e-3  # the test has power
    assert_accepted(results, case.sampled_tau, min_depth=3)
    check_paths(case, results, SAMPLED_TREE)


# --- replay -----------------------------------------------------------------------------------


REPLAYED = [k for k, c in CASES.items() if c.policy == "fixed"]


@pytest.mark.parametrize("block", [0, 4], ids=["stepwise", "block4"])
@pytest.mark.parametrize("name", REPLAYED)
def test_replay_equals_live_for_every_strategy(name, block):
    case = CASES[name]
    target = greedy_target(case)
    results = []
    for prompt in prompts(2, target.model.config.vocab_size):
        engine = engine_for(case, target, (0.03, 0.15), GREEDY_TREE)
        live = engine.generate(prompt, GREEDY, 30, stop_token_ids=set())
        plain = generate_plain(target, prompt, GREEDY, 30, stop_token_ids=set()).tokens
        item = ReplayPrompt("toy", "p", 0, prompt, plain)
        result = replay(engine.sessions, engine.strategy, item,
                        teacher_features(engine.runner, item), GREEDY_TREE, block=block)
        assert result.committed == [s.committed for s in live.steps]
        assert result.routes == [s.route for s in live.steps]
        results.append(live)
    assert_accepted(results, case.greedy_tau, min_depth=3)


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
