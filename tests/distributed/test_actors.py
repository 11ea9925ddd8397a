"""Decoding over actors equals in-process decoding: same tokens, same accepted count per step,
same routes (target on one node, drafters on the other)."""

from __future__ import annotations

import pytest

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.engine import SpeculativeEngine
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.distributed.actors import ActorEngine
from taps_ray.errors import TapsError
from taps_ray.models.drafter import untrained_drafter
from tests.tiny import tiny_target

TREE = TreeConfig(total_tokens=8, depth=3, top_k=3)
PROMPT = [1, 5, 7, 3, 9, 2, 4]


@pytest.fixture(scope="module")
def setup(ray_cluster):
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=s) for s in (0, 1)]
    engine = ActorEngine.create(
        target, drafters, TREE, "route-confidence",
        target_options={"num_cpus": 0, "resources": {"node_a": 0.5}},
        drafter_options=[{"num_cpus": 0, "resources": {"node_b": 0.25}}] * 2,
    )
    yield target, drafters, engine
    engine.close()


@pytest.mark.parametrize(
    ("strategy", "options", "n", "temperature"),
    [("single", {}, 1, 0.0), ("route-confidence", {"granularity": "step"}, 2, 0.0),
     ("merged", {"budget": "sum"}, 2, 0.0), ("merged", {"budget": "matched"}, 2, 1.0)],
)
def test_actor_decoding_equals_in_process(setup, strategy, options, n, temperature):
    target, drafters, actors = setup
    sampling = SamplingParams(temperature=temperature)
    local = SpeculativeEngine(target, drafters[:n], TREE, strategy, **options)
    remote = ActorEngine(actors.target, actors.drafters[:n], TREE, strategy, **options)
    want = local.generate(PROMPT, sampling, 40, seed=7)
    got = remote.generate(PROMPT, sampling, 40, seed=7)
    assert got.tokens == want.tokens and len(got.tokens) == 40
    assert [s.accepted for s in got.steps] == [s.accepted for s in want.steps]
    assert [s.route for s in got.steps] == [s.route for s in want.steps]
    assert [s.verify_tokens for s in got.steps] == [s.verify_tokens for s in want.steps]


def test_stream_chunks_add_up_to_generate(setup):
    _, _, actors = setup
    remote = ActorEngine(actors.target, actors.drafters, TREE, "merged")
    chunks = list(remote.stream(PROMPT, SamplingParams(), 12, seed=0))
    assert chunks[0].stat is None and chunks[-1].finish_reason == "length"
    assert sum(len(c.tokens) for c in chunks) == 12
    assert [t for c in chunks for t in c.tokens] == remote.generate(PROMPT, SamplingParams(),
                                                                     12).tokens


def test_strategies_that_read_hidden_states_are_refused_for_drafter_actors():
    from taps_ray.distributed.actors import remote_strategy_class

    assert remote_strategy_class("route-confidence", {"granularity": "prompt"}) is not None
    with pytest.raises(TapsError, match="route-learned.*hidden state.*in-process engine"):
        remote_strategy_class("route-learned", {})
