"""Weight-space averaging of drafters."""

from __future__ import annotations

import pytest
import torch

from taps_ray.errors import TapsError
from taps_ray.models.drafter import untrained_drafter
from taps_ray.training.averaging import average_drafters
from tests.tiny import tiny_target


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_averaging_identical_drafters_changes_nothing(target):
    a, b = untrained_drafter(target, seed=1), untrained_drafter(target, seed=1)
    assert_same_weights(average_drafters([a, b]), a)


def test_weights_one_zero_return_the_first(target):
    a, b = untrained_drafter(target, seed=1), untrained_drafter(target, seed=2)
    merged = average_drafters([a, b], [1.0, 0.0])
    assert_same_weights(merged, a)
    assert merged.meta.extra["weights"] == [1.0, 0.0]


def test_uniform_average_is_the_midpoint(target):
    a, b = untrained_drafter(target, seed=1), untrained_drafter(target, seed=2)
    merged = average_drafters([a, b], [3.0, 3.0])
    torch.testing.assert_close(merged.fc.weight, (a.fc.weight + b.fc.weight) / 2)
    assert merged.meta.name.startswith("mix")


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [1.0], [float("nan"), 1.0]])
def test_bad_weights_are_user_errors(target, weights):
    a, b = untrained_drafter(target, seed=1), untrained_drafter(target, seed=2)
    with pytest.raises(TapsError, match="weight"):
        average_drafters([a, b], weights)


def test_other_architecture_is_rejected(target):
    a = untrained_drafter(target, seed=1)
    with pytest.raises(TapsError, match="architecture"):
        average_drafters([a, untrained_drafter(tiny_target("qwen3"), seed=1)])


def test_different_draft_vocabularies_average_over_their_union(target):
    small = untrained_drafter(target, seed=1, draft_vocab_size=8)
    small.draft_vocab = torch.tensor([0, 2, 4, 6, 8, 10, 12, 14])
    other = untrained_drafter(target, seed=2, draft_vocab_size=8)  # ids 0..7
    merged = average_drafters([small, other])
    assert merged.draft_vocab.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14]
    assert merged.meta.draft_vocab_size == 12
    torch.testing.assert_close(merged.fc.weight, (small.fc.weight + other.fc.weight) / 2)
    full = average_drafters([small, untrained_drafter(target, seed=3)])
    assert full.draft_vocab is None  # one full-vocabulary drafter: the union is everything


def test_no_drafters_is_a_user_error():
    with pytest.raises(TapsError, match="at least one"):
        average_drafters([])
