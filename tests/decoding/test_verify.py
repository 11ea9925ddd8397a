"""Verification on hand-built target outputs (named cases), and the statistical proof that
stochastic verification emits exactly the target's distribution."""

from __future__ import annotations

import pytest
import torch

from taps_ray.decoding.sampling import PositionDraws, SamplingParams, logits_to_probs
from taps_ray.decoding.tree import DraftTree
from taps_ray.decoding.verify import clip_at_stop, verify_greedy, verify_stochastic

V = 16
EOS = 2


def peaked_logits(argmax_per_row: list[int], vocab: int = V) -> torch.Tensor:  # [rows, V]
    """Target logits whose argmax at row r is argmax_per_row[r] (row 0 = after the root)."""
    logits = torch.full((len(argmax_per_row), vocab), -10.0)
    logits[torch.arange(len(argmax_per_row)), torch.tensor(argmax_per_row)] = 10.0
    return logits


# ---------------------------------------------------------------- greedy, named cases


def test_all_accepted_bonus_is_argmax_at_leaf():
    tree = DraftTree.chain([5, 6, 7])
    result = verify_greedy(tree, peaked_logits([5, 6, 7, 8]))
    assert result.accepted_nodes == [0, 1, 2]
    assert result.accepted_tokens(tree) == [5, 6, 7]
    assert result.bonus_token == 8


def test_first_token_rejected_bonus_is_argmax_at_root():
    tree = DraftTree.chain([5, 6, 7])
    result = verify_greedy(tree, peaked_logits([9, 6, 7, 8]))
    assert result.accepted_nodes == []
    assert result.bonus_token == 9


def test_rejected_mid_path():
    tree = DraftTree.chain([5, 6, 7])
    result = verify_greedy(tree, peaked_logits([5, 6, 11, 8]))
    assert result.accepted_tokens(tree) == [5, 6]
    assert result.bonus_token == 11


def test_branching_second_sibling_matches():
    # root -> 0 (tok 3, best score) | 1 (tok 4) -> 2 (tok 5); node 0 -> 3 (tok 5)
    tree = DraftTree.make_dummy([-1, -1, 1, 0], [3, 4, 5, 5])
    result = verify_greedy(tree, peaked_logits([4, 5, 5, 1, 9]))
    assert result.accepted_nodes == [1, 2]
    assert result.bonus_token == 1  # argmax at row 3 = after node 2


def test_duplicate_sibling_tokens_take_first_in_children_order():
    tree = DraftTree.make_dummy([-1, -1], [4, 4], scores=[-2.0, -1.0])  # node 1 ranks first
    assert verify_greedy(tree, peaked_logits([4, 7, 8])).accepted_nodes == [1]


def test_eos_inside_tree_is_clipped():
    tree = DraftTree.chain([5, EOS, 7])
    result = verify_greedy(tree, peaked_logits([5, EOS, 7, 8]))
    committed = result.accepted_tokens(tree) + [result.bonus_token]
    assert clip_at_stop(committed, {EOS}, max_new=10) == ([5, EOS], True)


def test_max_new_tokens_reached_mid_path():
    tree = DraftTree.chain([5, 6, 7])
    result = verify_greedy(tree, peaked_logits([5, 6, 7, 8]))
    committed = result.accepted_tokens(tree) + [result.bonus_token]
    assert clip_at_stop(committed, {EOS}, max_new=2) == ([5, 6], True)
    assert clip_at_stop(committed, {EOS}, max_new=4) == ([5, 6, 7, 8], True)
    assert clip_at_stop(committed, {EOS}, max_new=5) == ([5, 6, 7, 8], False)
    assert clip_at_stop(committed, set(), max_new=0) == ([], True)


def test_wrong_row_count_raises():
    with pytest.raises(ValueError, match=r"\[n\+1, V\]"):
        verify_greedy(DraftTree.chain([5, 6]), peaked_logits([5, 6]))


# ------------------------------------------------------------ stochastic, named cases


def test_stochastic_equals_greedy_on_one_hot_probs():
    gen, draws = torch.Generator().manual_seed(0), PositionDraws(0)
    tree = DraftTree.make_dummy([-1, -1, -1, 0, 0, 1, 3], [1, 2, 3, 4, 5, 6, 7])
    for _ in range(50):
        logits = torch.randn(tree.size + 1, 8, generator=gen)
        logits[0, 1 + int(torch.randint(0, 3, (), generator=gen))] += 5  # often accept a child
        probs = logits_to_probs(logits, SamplingParams())  # the temperature -> 0 limit
        assert verify_stochastic(tree, probs, draws) == verify_greedy(tree, logits)


def test_stochastic_is_seeded():
    tree = DraftTree.make_dummy([-1, -1, 0, 1])
    probs = torch.rand(5, V, generator=torch.Generator().manual_seed(3))
    first = [verify_stochastic(tree, probs, PositionDraws(s)) for s in range(30)]
    again = [verify_stochastic(tree, probs, PositionDraws(s)) for s in range(30)]
    assert first == again
    assert len({(r.bonus_token, tuple(r.accepted_nodes)) for r in first}) > 3  # seeds differ


def test_stochastic_rejected_token_is_never_the_bonus():
    tree = DraftTree.make_dummy([-1], [0])
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    draws = PositionDraws(0)
    for _ in range(200):
        result = verify_stochastic(tree, probs, draws)
        assert result.bonus_token == (0 if result.accepted_nodes else 1)


def test_stochastic_rejects_rows_without_mass():
    tree = DraftTree.chain([1])
    with pytest.raises(ValueError, match="row 0"):
        verify_stochastic(tree, torch.zeros(2, 4), PositionDraws(0))


# ------------------------------------------------------------- distribution (lossless)

N_TRIALS = 20_000
# root has 3 children (nodes 0, 1, 2); nodes 0 and 1 have 2 children each
TOY_PARENTS = [-1, -1, -1, 0, 0, 1, 1]
GRANDCHILD_TOKENS = [1, 4, 2, 5]  # nodes 3, 4 (under node 0) and 5, 6 (under node 1)
ROOT_ROW = [0.30, 0.08, 0.22, 0.12, 0.18, 0.10]  # most likely token: 0


def toy_probs(seed: int) -> torch.Tensor:  # [8, 6]: row 0 fixed, others random but not tiny
    rows = (torch.randn(7, 6, generator=torch.Generator().manual_seed(seed)) * 0.5).softmax(-1)
    return torch.cat([torch.tensor([ROOT_ROW]), rows]).double()


def chi_square_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    stat = ((observed - expected) ** 2 / expected).sum()
    dof = torch.tensor((observed.numel() - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, stat / 2))


def emitted_pairs(tree: DraftTree, probs: torch.Tensor) -> list[list[int]]:
    """First two emitted tokens (accepted + bonus) of N_TRIALS seeded verifications."""
    draws = PositionDraws(1234)
    out = []
    for _ in range(N_TRIALS):
        result = verify_stochastic(tree, probs, draws)
        out.append((result.accepted_tokens(tree) + [result.bonus_token])[:2])
    return out


@pytest.mark.parametrize(
    "root_tokens",
    [[0, 2, 4], [1, 3, 5]],  # with and without the target's most likely token (0)
    ids=["argmax-drafted", "argmax-not-drafted"],
)
def test_stochastic_output_matches_target_distribution(root_tokens):
    tree = DraftTree.make_dummy(TOY_PARENTS, root_tokens + GRANDCHILD_TOKENS)
    probs = toy_probs(seed=0)
    pairs = emitted_pairs(tree, probs)

    # first emitted token ~ target row 0
    first = torch.bincount(torch.tensor([p[0] for p in pairs]), minlength=6).double()
    assert chi_square_p_value(first, N_TRIALS * probs[0]) > 1e-3
    # power check: the same counts clearly reject a slightly different distribution
    assert chi_square_p_value(first, N_TRIALS * probs[0].roll(1)) < 1e-3

    # joint (x, y) for x a root child: p0(x) * p_x(y), p_x = the target row after node x;
    # every other first token is one lumped cell
    observed, expected = torch.zeros(3, 6, dtype=torch.float64), N_TRIALS * probs[0, root_tokens]
    for pair in pairs:
        if pair[0] in root_tokens:
            observed[root_tokens.index(pair[0]), pair[1]] += 1
    expected = expected[:, None] * probs[1:4]  # node k is row k + 1; root children are 0, 1, 2
    other = N_TRIALS - observed.sum()
    p_value = chi_square_p_value(
        torch.cat([observed.flatten(), other[None]]),
        torch.cat([expected.flatten(), (N_TRIALS - expected.sum())[None]]),
    )
    assert p_value > 1e-3
