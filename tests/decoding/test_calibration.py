"""Confidence calibration: the fits recover a known miscalibration, the map round-trips, and
confidence routing compares heads through their calibrations (live == replay)."""

from __future__ import annotations

import math

import pytest
import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding import calibration as cal
from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
from taps_ray.decoding.proposer import DrafterSession
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import make_strategy, tree_confidence
from taps_ray.errors import TapsError
from taps_ray.evaluation.replay import ReplayPrompt, known_trees, replay, teacher_features
from taps_ray.models.drafter import untrained_drafter
from tests.tiny import tiny_target

TREE = TreeConfig(12, 3, 4)


def overconfident(n: int = 40_000, power: float = 2.0, seed: int = 0):
    """Log-confidences s and labels drawn with true acceptance exp(power * s): a head whose
    confidence c overstates its acceptance c ** power."""
    gen = torch.Generator().manual_seed(seed)
    s = -torch.rand(n, generator=gen, dtype=torch.float64) * 4
    accepted = (torch.rand(n, generator=gen, dtype=torch.float64) < (power * s).exp()).double()
    return s, accepted


def test_pav_pools_violators_into_the_weighted_mean():
    blocks = cal.pav(torch.tensor([1.0, 3.0, 2.0, 4.0]), torch.tensor([1.0, 1.0, 3.0, 1.0]))
    assert blocks == [(0, 0, 1.0), (1, 2, 2.25), (3, 3, 4.0)]
    assert cal.pav(torch.tensor([3.0, 2.0, 1.0]), torch.ones(3)) == [(0, 2, 2.0)]


def test_temperature_fit_recovers_the_known_miscalibration():
    s, a = overconfident(power=2.0)
    fitted = cal.fit_temperature(s, a)
    assert fitted.temperature == pytest.approx(0.5, rel=0.05)
    assert cal.log_loss(fitted.apply(s), a) < cal.log_loss(cal.IDENTITY.apply(s), a)


def test_isotonic_fit_is_monotone_and_recovers_the_true_curve():
    s, a = overconfident(power=2.0)
    fitted = cal.fit_isotonic(s, a)
    grid = torch.linspace(-3.9, -0.1, 50, dtype=torch.float64)
    p = fitted.apply(grid)
    assert bool((p[1:] >= p[:-1]).all())
    assert float((p - (2 * grid).exp()).abs().max()) < 0.08
    assert len(fitted.x) <= 2 * 256
    assert cal.brier(fitted.apply(s), a) < cal.brier(s.exp(), a)


def test_isotonic_handles_ties_and_a_single_value():
    s = torch.tensor([-1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    fitted = cal.fit_isotonic(s, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert fitted.x == (-1.0,) and fitted.y == (0.25,)
    assert fitted.apply(torch.tensor([-5.0, 0.0])).tolist() == [0.25, 0.25]


def two_domains(trees: int = 3000, nodes: int = 10, d: int = 8, seed: int = 0):
    """A head whose confidence is honest in one domain and 4.5x too high in the other; the
    domain shows only in its hidden state (unit 0 shifted by +-3, the rest noise)."""
    gen = torch.Generator().manual_seed(seed)
    domain = torch.arange(trees) % 2  # 0: own domain, 1: the other one
    h = torch.randn(trees, d, generator=gen, dtype=torch.float64)
    h[:, 0] += 6.0 * domain - 3.0
    tree_of = torch.arange(trees).repeat_interleave(nodes)
    s = -torch.rand(trees * nodes, generator=gen, dtype=torch.float64) * 4
    trust = torch.tensor([0.9, 0.2], dtype=torch.float64)[domain][tree_of]
    accepted = (torch.rand(s.numel(), generator=gen, dtype=torch.float64)
                < s.exp() * trust).double()
    return s, accepted, h, tree_of, domain


def test_context_fit_learns_where_a_head_is_overconfident():
    s, a, h, tree_of, domain = two_domains()
    fitted = cal.fit_context(s, a, h, tree_of, l2=1e-3)
    trust = fitted.trust(h)
    assert float(trust[domain == 0].mean()) == pytest.approx(0.9, abs=0.08)
    assert float(trust[domain == 1].mean()) == pytest.approx(0.2, abs=0.08)
    assert fitted.temperature == pytest.approx(1.0, rel=0.15)
    p = fitted.apply(s) * trust[tree_of]
    flat = cal.fit_temperature(s, a)
    assert cal.log_loss(p, a) < cal.log_loss(flat.apply(s), a) - 0.01
    # monotone in s for a fixed context; no context -> the mean trust of the fit data
    grid = torch.linspace(-4, 0, 9, dtype=torch.float64)
    one = fitted.apply(grid, h[0])
    assert bool((one[1:] >= one[:-1]).all()) and float(one.max()) <= 1.0
    assert fitted.trust(None) == pytest.approx(float(trust.mean()), abs=1e-5)
    with pytest.raises(TapsError, match="8 trust weights.*3 units"):
        fitted.apply(grid, torch.zeros(3))
    with pytest.raises(TapsError, match="fit_context"):
        cal.fit("context", s, a)


def test_calibration_round_trips_through_a_dict():
    context = cal.Calibration("context", temperature=0.9, trust_weights=(0.5, -1.25, 1e-7),
                              trust_bias=0.3, trust_default=0.6, fitted_on={"l2": 0.01})
    for c in (cal.Calibration("temperature", temperature=1.7, fitted_on={"n": 3}),
              cal.Calibration("isotonic", x=(-3.0, -1.0, 0.0), y=(0.0, 0.2, 0.9)),
              context, cal.IDENTITY):
        again = cal.Calibration.from_dict(c.to_dict())
        assert again == c and again.fitted_on == c.fitted_on
    iso = cal.Calibration("isotonic", x=(-3.0, -1.0), y=(0.1, 0.5))
    assert iso.apply(torch.tensor([-4.0, -2.0, -1.0, 0.0])).tolist() == pytest.approx(
        [0.1, 0.3, 0.5, 0.5])


@pytest.mark.parametrize("raw", [
    {"method": "platt"},
    {"method": "temperature", "temperature": 0},
    {"method": "isotonic", "x": [0.0, -1.0], "y": [0.1, 0.2]},
    {"method": "isotonic", "x": [-1.0, 0.0], "y": [0.5, 0.2]},
    {"method": "isotonic", "x": ["a"], "y": [0.5]},
    {"method": "context", "temperature": 1.0},
    {"method": "context", "trust_weights": [0.1], "trust_default": 0.0},
    [1, 2],
])
def test_damaged_calibrations_are_one_sentence(raw):
    with pytest.raises(TapsError, match="calibrat"):
        cal.Calibration.from_dict(raw)


def calibrated(drafter, calibration: cal.Calibration):
    drafter.meta.extra[cal.META_KEY] = calibration.to_dict()
    return drafter


def test_routing_picks_the_higher_calibrated_score_where_raw_confidence_picks_the_other():
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=1), untrained_drafter(target, seed=2)]
    runner = SpeculativeEngine(target, drafters, TREE, "route-confidence").runner
    sessions = [DrafterSession(d, runner.embed, runner.lm_head.weight) for d in drafters]
    prompt = torch.randint(0, 32, (9,), generator=torch.Generator().manual_seed(0))
    feats = runner.prefill(prompt)
    for s in sessions:
        s.reset(int(prompt[0]))
        s.extend(feats[:-1], prompt[1:])
    trees = [s.draft(TREE) for s in sessions]
    raw = [tree_confidence(t) for t in trees]
    sure, unsure = (0, 1) if raw[0] > raw[1] else (1, 0)
    strategy = make_strategy("route-confidence", 2)
    strategy.start()
    assert strategy.propose(sessions, TREE).route == sure
    # the surer head is overconfident: its acceptance is its confidence ** 4
    calibrated(drafters[sure], cal.Calibration("temperature", temperature=0.25))
    assert tree_confidence(trees[sure], cal.session_calibration(sessions[sure])) < raw[unsure]
    strategy = make_strategy("route-confidence", 2)
    strategy.start()
    assert strategy.propose(sessions, TREE).route == unsure


def routed(target, drafters, tokens: int) -> tuple[list[int], list[int]]:
    """Route-confidence over `drafters`: (live routes, replay routes), the live output checked
    against plain greedy decoding."""
    prompt = torch.randint(0, 32, (8,), generator=torch.Generator().manual_seed(3)).tolist()
    greedy = SamplingParams()
    plain = generate_plain(target, prompt, greedy, tokens, stop_token_ids=set()).tokens
    engine = SpeculativeEngine(target, drafters, TREE, "route-confidence")
    live = engine.generate(prompt, greedy, tokens, stop_token_ids=set())
    assert live.tokens == plain
    item = ReplayPrompt("toy", "p", 0, prompt, plain)
    feats = teacher_features(engine.runner, item)
    strategy = make_strategy("route-confidence", 2)
    walked = replay(engine.sessions, strategy, item, feats, TREE)  # KnownTrees sessions
    return [s.route for s in live.steps], walked.routes


def test_calibrated_routing_in_replay_equals_live_and_stays_lossless():
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=1), untrained_drafter(target, seed=2)]
    calibrated(drafters[0], cal.Calibration("isotonic", x=(-6.0, -1.0, 0.0), y=(0.0, 0.05, 0.1)))
    calibrated(drafters[1], cal.Calibration("isotonic", x=(-1.0,), y=(0.5,)))
    live, walked = routed(target, drafters, 24)
    assert walked == live
    assert set(walked) == {1}  # every tree of head 0 scores <= 0.1, head 1's 0.5


def test_context_calibrated_routing_in_replay_equals_live_and_stays_lossless():
    """Each head trusts itself where unit 0 of its hidden state is positive (and distrusts
    itself elsewhere): routing follows the hidden states, the same in replay as live."""
    target = tiny_target("llama")
    drafters = [untrained_drafter(target, seed=1), untrained_drafter(target, seed=2)]
    d = target.model.config.hidden_size
    for sign, drafter in zip((1.0, -1.0), drafters, strict=True):
        weights = (sign * 40.0,) + (0.0,) * (d - 1)
        calibrated(drafter, cal.Calibration("context", temperature=1.0, trust_weights=weights,
                                            trust_default=0.5))
    live, walked = routed(target, drafters, 32)
    assert walked == live and set(live) == {0, 1}
    raw = [untrained_drafter(target, seed=1), untrained_drafter(target, seed=2)]
    assert routed(target, raw, 32)[0] != live  # the hidden states decided
    # T = 1: the same seed samples the same tokens as plain decoding, whatever was routed
    sampled = SamplingParams(temperature=1.0)
    engine = SpeculativeEngine(target, drafters, TREE, "route-confidence")
    for seed in (0, 1):
        prompt = list(range(3 + seed, 11 + seed))
        got = engine.generate(prompt, sampled, 32, stop_token_ids=set(), seed=seed)
        want = generate_plain(target, prompt, sampled, 32, stop_token_ids=set(), seed=seed)
        assert got.tokens == want.tokens


def test_known_trees_expose_their_drafter_and_uncalibrated_heads_are_identity():
    target = tiny_target("llama")
    drafter = untrained_drafter(target)
    engine = SpeculativeEngine(target, [drafter], TREE, "single")
    seq = torch.arange(6)
    known = known_trees(engine.sessions[0], torch.zeros(6, 64), seq)
    assert known.drafter is drafter
    assert cal.session_calibration(known) is cal.IDENTITY
    assert cal.session_calibration(object()) is cal.IDENTITY
    s = torch.tensor([-2.0, -0.5])
    assert torch.equal(cal.IDENTITY.apply(s), s.exp())
    halved = cal.Calibration("temperature", temperature=2.0).apply(s)
    assert float(halved[0]) == pytest.approx(math.exp(-1.0))
