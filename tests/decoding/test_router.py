"""Learned routing scores (route-learned): the fit finds the domain's head where raw confidence
does not, the stored score round-trips and refuses heads not fitted together, and routing by it
is lossless and the same in replay as live, with heads the target accepts."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding import router
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import make_strategy
from taps_ray.errors import TapsError
from taps_ray.evaluation import confidence, routing_fit
from taps_ray.evaluation.replay import ReplayPrompt, replay, teacher_features
from tests.accepted import assert_accepted
from tests.decoding.conftest import SPECIALIST_NEW

GREEDY = SamplingParams()
TREE = TreeConfig(12, 3, 3)
pytestmark = pytest.mark.usefixtures("one_thread")


def two_domain_table(positions: int = 4000, d: int = 6, seed: int = 0) -> routing_fit.Positions:
    """Positions of two domains (unit 0 of both heads' hidden states tells them apart). Half
    are ties; at the rest the domain's own head is accepted 2 tokens longer 90 % of the time.
    Head 0 is the more confident everywhere, so raw confidence sends most of domain 1 to it."""
    gen = torch.Generator().manual_seed(seed)
    domain = (torch.rand(positions, generator=gen) < 0.5).long()
    hidden = [torch.randn(positions, d, generator=gen, dtype=torch.float64) for _ in range(2)]
    for h in hidden:
        h[:, 0] += torch.where(domain == 0, 1.5, -1.5)
    accepted = torch.ones(positions, 2, dtype=torch.float64)
    decisive = torch.rand(positions, generator=gen) < 0.5
    own_wins = torch.rand(positions, generator=gen) < 0.9
    winner = torch.where(own_wins, domain, 1 - domain)
    accepted[decisive, winner[decisive]] += 2.0
    conf = torch.stack([torch.full((positions,), -0.5), torch.full((positions,), -1.0)], 1)
    conf = conf.double() + 0.3 * torch.randn(positions, 2, generator=gen, dtype=torch.float64)
    sources = ["a" if k == 0 else "b" for k in domain.tolist()]
    return routing_fit.Positions(accepted, conf, hidden, sources)


def test_fitted_router_sends_each_domain_to_its_head_where_raw_confidence_does_not():
    fit_table, held = two_domain_table(seed=0), two_domain_table(seed=1)
    fitted = routing_fit.fit(fit_table, l2=1e-2)
    picks = routing_fit.rules(held, fitted, ["A", "B"])
    result = {rule: routing_fit.evaluate(held, pick, ["A", "B"]) for rule, pick in picks.items()}
    learned, raw = result["learned"], result["raw confidence"]
    assert learned["a"]["shares"]["A"] > 0.95 and learned["b"]["shares"]["B"] > 0.95
    assert raw["b"]["shares"]["B"] < 0.2  # head 0 is surer on both domains
    for source in ("a", "b"):  # ties cost nothing, decisive positions are won
        gained = learned[source]["accepted_per_position"]
        assert gained > raw[source]["accepted_per_position"] + 0.3 or source == "a"
        assert gained > result["oracle"][source]["accepted_per_position"] - 0.25


def test_ties_everywhere_leave_the_router_untrained():
    table = two_domain_table()
    table.accepted[:] = 1.0
    fitted = routing_fit.fit(table, l2=1e-2)
    assert torch.allclose(fitted.scores(table), torch.zeros(len(table.sources), 2,
                                                             dtype=torch.float64))


def score(weights=(1.0, -2.0), **kw) -> router.RoutingScore:
    return router.RoutingScore(kw.pop("fit_id", "f1"), kw.pop("heads", ("m", "c")),
                               kw.pop("bias", 0.5), kw.pop("confidence_weight", 2.0),
                               tuple(weights), **kw)


def test_routing_score_formula_round_trip_and_refusals():
    s = score()
    nodes = torch.tensor([-1.0, -3.0])
    want = 0.5 + 2.0 * math.log((math.exp(-1) + math.exp(-3)) / 2) + (0.3 - 2 * 0.1)
    assert s.score(nodes, torch.tensor([0.3, 0.1])) == pytest.approx(want)
    assert router.RoutingScore.from_dict(s.to_dict()) == s
    with pytest.raises(TapsError, match="hidden state"):
        s.score(nodes, None)
    with pytest.raises(TapsError, match="2 weights .* 3 units"):
        s.score(nodes, torch.zeros(3))


@pytest.mark.parametrize("raw", [[], {"heads": ["a", "b"], "weights": [1.0]},
                                 {"fit_id": "x", "heads": ["a"], "weights": [1.0]},
                                 {"fit_id": "x", "heads": ["a", "b"], "weights": []},
                                 {"fit_id": "x", "heads": ["a", "b"], "weights": ["nan"]}])
def test_damaged_routing_scores_are_one_sentence(raw):
    with pytest.raises(TapsError, match="routing score|routing_score"):
        router.RoutingScore.from_dict(raw)


def test_heads_not_fitted_together_are_refused_naming_the_fix():
    together = [("m", score()), ("c", score(weights=(0.0, 1.0)))]
    assert len(router.check_fitted_together(together)) == 2
    for bad, match in [([("m", score()), ("c", None)], "'c' has no routing score"),
                       ([("m", score()), ("c", score(fit_id="f2"))], "not fitted together"),
                       ([("m", score()), ("x", score())], "not fitted together")]:
        with pytest.raises(TapsError, match=match) as err:
            router.check_fitted_together(bad)
        assert "fit-router on" in str(err.value)


# --- on heads the target accepts --------------------------------------------------------------


def replay_items(target, prompts: list[list[int]], source: str) -> list[ReplayPrompt]:
    return [ReplayPrompt(source, f"{source}{k}", 0, p,
                         generate_plain(target, p, GREEDY, SPECIALIST_NEW, set()).tokens)
            for k, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def routed_specialists(specialists):
    """Copies of the two over-fitted specialists with a routing score fitted on replay of
    both prompt sets (the scores are fitted on the prompts the tests decode: this checks the
    mechanics, not generalisation, which docs/results.md measures on held-out data)."""
    target, heads, own_a, own_b = specialists
    heads = [copy.deepcopy(h) for h in heads]
    for k, h in enumerate(heads):
        h.meta.name = f"specialist-{k}"
    items = replay_items(target, own_a, "a") + replay_items(target, own_b, "b")
    items = [items[0], items[2], items[1], items[3]]  # alternate: both halves hold both sets
    pairs = [confidence.collect(target, h, items, TREE) for h in heads]
    scores = routing_fit.fit_router(pairs, [h.meta.name for h in heads])
    for h, s in zip(heads, scores, strict=True):
        h.meta.extra[router.META_KEY] = s.to_dict()
    return target, heads, own_a, own_b, scores


def test_fit_router_stores_held_out_figures_and_one_fit_id(routed_specialists):
    *_, scores = routed_specialists
    assert len({s.fit_id for s in scores}) == 1 and scores[0].heads == ("specialist-0",
                                                                          "specialist-1")
    held = scores[0].fitted_on["heldout"]
    assert set(held) >= {"single specialist-0", "single specialist-1", "raw confidence",
                         "learned", "oracle"}
    assert held["learned"]["a"]["positions"] > 0 and held["learned"]["b"]["positions"] > 0


@pytest.mark.parametrize("granularity", ["step", "prompt"])
def test_learned_routing_is_lossless_and_routes_each_prompt_set_to_its_specialist(
        routed_specialists, granularity):
    target, heads, own_a, own_b, _ = routed_specialists
    engine = SpeculativeEngine(target, heads, TREE, "route-learned", granularity=granularity)
    results = []
    for owner, prompt in [(0, p) for p in own_a] + [(1, p) for p in own_b]:
        result = engine.generate(prompt, GREEDY, SPECIALIST_NEW, stop_token_ids=set())
        assert result.tokens == generate_plain(target, prompt, GREEDY, SPECIALIST_NEW,
                                               set()).tokens
        own = sum(s.route == owner for s in result.steps) / len(result.steps)
        assert own >= 0.75, f"{own:.2f} of steps to the prompt's own specialist"
        results.append(result)
    assert_accepted(results, 3.0, min_depth=3)
    sampled = SamplingParams(temperature=1.0)  # T = 1: plain sampling's tokens, seed for seed
    for seed, prompt in enumerate(own_a[:1] + own_b[:1]):
        got = engine.generate(prompt, sampled, SPECIALIST_NEW, stop_token_ids=set(), seed=seed)
        assert got.tokens == generate_plain(target, prompt, sampled, SPECIALIST_NEW, set(),
                                            seed=seed).tokens


def test_learned_routing_in_replay_equals_live(routed_specialists):
    target, heads, own_a, own_b, _ = routed_specialists
    for prompt in (own_a[1], own_b[0]):
        engine = SpeculativeEngine(target, heads, TREE, "route-learned")
        live = engine.generate(prompt, GREEDY, SPECIALIST_NEW, stop_token_ids=set())
        item = ReplayPrompt("toy", "p", 0, prompt, live.tokens)
        walked = replay(engine.sessions, make_strategy("route-learned", 2), item,
                        teacher_features(engine.runner, item), TREE)
        assert walked.routes == [s.route for s in live.steps]
        assert walked.committed == [s.committed for s in live.steps]


def test_route_learned_refuses_heads_without_a_joint_fit_when_the_engine_is_built(
        specialists, routed_specialists):
    target, heads, own_a, _ = specialists
    with pytest.raises(TapsError, match="no routing score for route-learned"):
        SpeculativeEngine(target, heads, TREE, "route-learned")
    fitted = routed_specialists[1]
    with pytest.raises(TapsError, match="not fitted together"):  # one fitted, one a stranger
        SpeculativeEngine(target, [fitted[0], copy.deepcopy(fitted[0])], TREE, "route-learned")
    alone = SpeculativeEngine(target, heads[:1], TREE, "route-learned")  # one head: no routing
    assert alone.generate(own_a[0], GREEDY, 8, stop_token_ids=set()).tokens == \
        generate_plain(target, own_a[0], GREEDY, 8, set()).tokens


def test_damaged_or_mismatched_routing_scores_are_refused_at_load(tmp_path):
    from taps_ray.evaluation.routing_fit import write_routing_scores
    from taps_ray.models.drafter import (
        META_FILE,
        DrafterMeta,
        load_drafter,
        save_drafter,
        untrained_drafter,
    )
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    folder = tmp_path / "head"
    save_drafter(untrained_drafter(target), folder, DrafterMeta(name="m", target=target.name))
    d = target.model.config.hidden_size
    write_routing_scores([str(folder)], [score(weights=(0.1,) * d)])
    assert router.routing_score_of(load_drafter(folder, target).meta) == score(weights=(0.1,) * d)
    write_routing_scores([str(folder)], [score(weights=(0.1,) * (d + 1))])
    with pytest.raises(TapsError, match=f"{d + 1} weights for a {d}-unit head"):
        load_drafter(folder, target)
    meta = json.loads((folder / META_FILE).read_text())
    meta["extra"][router.META_KEY] = {"fit_id": "x", "heads": ["m", "c"]}
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(TapsError, match="damaged routing score"):
        load_drafter(folder, target)


def test_an_eagle3_and_an_eagle2_head_are_fitted_and_routed_together_losslessly():
    from taps_ray.models.drafter import untrained_drafter
    from tests.tiny import tiny_target

    target = tiny_target("llama")
    heads = [untrained_drafter(target, seed=1, layout="eagle3"), untrained_drafter(target, seed=2)]
    heads[0].meta.name, heads[1].meta.name = "head-eagle3", "head-eagle2"
    prompts = [torch.randint(0, 32, (6 + k,), generator=torch.Generator().manual_seed(k)).tolist()
               for k in range(4)]
    items = [item for k, p in enumerate(prompts)
             for item in replay_items(target, [p], ("a", "b")[k % 2])]
    scores = routing_fit.fit_router([confidence.collect(target, h, items, TREE) for h in heads],
                                    [h.meta.name for h in heads])
    for h, s in zip(heads, scores, strict=True):
        h.meta.extra[router.META_KEY] = s.to_dict()
    engine = SpeculativeEngine(target, heads, TREE, "route-learned")
    for prompt in prompts[:2]:
        got = engine.generate(prompt, GREEDY, 20, stop_token_ids=set())
        assert got.tokens == generate_plain(target, prompt, GREEDY, 20, set()).tokens
