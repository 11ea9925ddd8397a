"""logits_to_probs must equal transformers' own warpers; SamplingParams validates its fields."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from taps_ray.decoding.sampling import PositionDraws, SamplingParams, inverse_cdf, logits_to_probs

SETTINGS = [
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.0, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.9),
    SamplingParams(temperature=0.5, top_k=20, top_p=0.8),
    SamplingParams(temperature=1.0, top_k=1),
    SamplingParams(temperature=2.0, top_p=0.05),
]


def hf_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:  # [B, V]
    """The warpers `generate` builds (same skip rules and order), then softmax."""
    warpers = []
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=params.top_p))
    scores = logits.float()
    input_ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    for warp in warpers:
        scores = warp(input_ids, scores)
    return scores.softmax(dim=-1)


@pytest.mark.parametrize("params", SETTINGS, ids=str)
@pytest.mark.parametrize("shape", [(4, 50), (9, 257)])  # batched [B, V] and tree rows [n+1, V]
@pytest.mark.parametrize("scale", [3.0, 0.3])  # flat logits: top-k before top-p matters
def test_matches_hf_warpers(params, shape, scale):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1])) * scale
    ours = logits_to_probs(logits, params)
    assert torch.allclose(ours, hf_probs(logits, params), atol=1e-6, rtol=0)
    assert torch.allclose(ours.sum(-1), torch.ones(shape[0]), atol=1e-5)


@pytest.mark.parametrize("params", SETTINGS, ids=str)
def test_matches_hf_warpers_with_tied_logits(params):
    # integer logits in [-3, 3]: many exact ties at the top-k and top-p boundaries
    logits = torch.randint(-3, 4, (6, 40), generator=torch.Generator().manual_seed(1)).float()
    assert torch.allclose(logits_to_probs(logits, params), hf_probs(logits, params), atol=1e-6)


def test_single_row_matches_batched():
    params = SamplingParams(temperature=0.8, top_k=10, top_p=0.9)
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    rows = torch.stack([logits_to_probs(row, params) for row in logits])
    assert torch.equal(rows, logits_to_probs(logits, params))


def test_top_k_and_top_p_zero_out_the_tail():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert (logits_to_probs(logits, SamplingParams(1.0, top_k=2))[0, 2:] == 0).all()
    probs = logits_to_probs(logits, SamplingParams(1.0, top_p=0.5))  # p(4.0) = 0.64 >= 0.5
    assert probs[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_greedy_gives_one_hot_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 5.0, 0.0]])
    probs = logits_to_probs(logits, SamplingParams())
    assert probs.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]  # ties: first maximum


def test_inverse_cdf_respects_zeros_and_interval_edges():
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75, 0.0])  # exact in binary
    assert [inverse_cdf(probs, u) for u in (0.0, 0.2499, 0.25, 0.9999)] == [1, 1, 3, 3]
    assert inverse_cdf(probs, 1.0) == 3  # u * mass rounded up to the mass: never a zero tail
    assert inverse_cdf(probs * 5, 0.5) == 3  # unnormalised
    for bad in (torch.zeros(3), torch.full((3,), float("nan"))):
        with pytest.raises(ValueError, match="not a distribution"):
            inverse_cdf(bad, 0.5)


def test_position_draws_are_keyed_by_seed_and_position_only():
    draws = PositionDraws(7)
    ahead = [draws.uniform(k) for k in range(5)]
    taken = []
    for _ in range(5):
        taken.append(draws.uniform())
        draws.advance(1)
    assert taken == ahead == [PositionDraws(7, k).uniform() for k in range(5)]
    assert all(0.0 <= u < 1.0 for u in ahead) and len(set(ahead)) == 5
    assert PositionDraws(8).uniform() != PositionDraws(7).uniform()


def test_position_draws_sample_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    draws = PositionDraws(3)
    counts = torch.bincount(torch.tensor([draws.take(probs) for _ in range(20_000)]),
                            minlength=4).double()
    expected = probs.double() * 20_000
    stat = float(((counts[expected > 0] - expected[expected > 0]) ** 2
                  / expected[expected > 0]).sum())
    assert counts[1] == 0 and stat < 13.8  # chi-square, 2 dof: p > 0.001


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
    ],
)
def test_invalid_params_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_greedy_flag():
    assert SamplingParams().greedy
    assert not SamplingParams(temperature=1.0).greedy
