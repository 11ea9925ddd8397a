"""Draft-tree data and its pure mask / position / path functions, on hand-built trees."""

from __future__ import annotations

import pytest
import torch

from taps_ray.decoding.tree import (
    DraftTree,
    children_lists,
    select_tree,
    tree_attention_mask,
    tree_paths,
    tree_position_offsets,
)

# root -> 0 -> 2 -> 4
#      |    `-> 3
#      `-> 1 -> 5
BRANCHING_PARENTS = [-1, -1, 0, 0, 2, 1]
BRANCHING_SCORES = [-1.0, -1.5, -2.5, -2.0, -3.0, -2.2]  # node 3 outscores its sibling node 2


def branching_tree() -> DraftTree:
    return DraftTree.make_dummy(BRANCHING_PARENTS, [10, 11, 12, 13, 14, 15], BRANCHING_SCORES)


def test_chain_mask_is_causal():
    tree = DraftTree.chain([5, 6, 7, 8])
    assert torch.equal(tree_attention_mask(tree), torch.ones(5, 5, dtype=torch.bool).tril())
    assert tree_position_offsets(tree).tolist() == [0, 1, 2, 3, 4]
    assert tree_paths(tree).tolist() == [[0, 1, 2, 3]]


def test_branching_mask():
    visible = [{0}, {0, 1}, {0, 2}, {0, 1, 3}, {0, 1, 4}, {0, 1, 3, 5}, {0, 2, 6}]
    expected = torch.tensor([[j in row for j in range(7)] for row in visible])
    assert torch.equal(tree_attention_mask(branching_tree()), expected)


def test_branching_offsets_paths_children():
    tree = branching_tree()
    assert tree.depths.tolist() == [1, 1, 2, 2, 3, 2]
    assert tree_position_offsets(tree).tolist() == [0, 1, 1, 2, 2, 3, 2]
    assert tree_paths(tree).tolist() == [[0, 3, -1], [0, 2, 4], [1, 5, -1]]
    assert children_lists(tree) == [[0, 1], [3, 2], [5], [4], [], [], []]


def test_children_ties_break_by_node_index():
    tree = DraftTree.make_dummy([-1, -1, -1], scores=[-1.0, -0.5, -1.0])
    assert children_lists(tree)[0] == [1, 0, 2]


def test_empty_tree():
    tree = DraftTree.chain([])
    assert tree.size == 0
    assert tree_attention_mask(tree).tolist() == [[True]]
    assert tree_position_offsets(tree).tolist() == [0]
    assert tree_paths(tree).shape == (0, 0)
    assert children_lists(tree) == [[]]


def test_make_dummy_defaults():
    tree = DraftTree.make_dummy([-1, 0, 0, 1])
    assert tree.tokens.tolist() == [1, 2, 3, 4]
    scores = tree.scores.tolist()
    assert all(scores[k] <= scores[p] for k, p in enumerate([-1, 0, 0, 1]) if p >= 0)
    assert tree.entropies.shape == (4,)


def test_tree_rejects_non_topological_parents():
    with pytest.raises(ValueError, match="parents"):
        DraftTree.make_dummy([-1, 2, 0])
    with pytest.raises(ValueError, match="same length"):
        DraftTree(torch.tensor([1, 2]), torch.tensor([-1]), torch.zeros(2), torch.zeros(2))


def candidates(scores, parents):
    m = len(scores)
    return (
        torch.arange(100, 100 + m),  # token = 100 + candidate index
        torch.tensor(parents),
        torch.tensor(scores),
        torch.arange(m) * 0.1,  # entropy = candidate index / 10
    )


# candidates as a proposer emits them: layer by layer, not yet ranked
CAND_SCORES = [-0.1, -1.0, -3.0, -0.5, -2.0, -1.2, -0.9, -4.0]
CAND_PARENTS = [-1, -1, -1, 0, 0, 1, 3, 3]


def test_select_tree_keeps_best_and_remaps_parents():
    tree = select_tree(*candidates(CAND_SCORES, CAND_PARENTS), total_tokens=5)
    # kept: c0 -0.1, c3 -0.5, c6 -0.9, c1 -1.0, c5 -1.2; ordered by depth then score
    assert tree.tokens.tolist() == [100, 101, 103, 105, 106]
    assert tree.parents.tolist() == [-1, -1, 0, 1, 2]
    assert tree.scores.tolist() == pytest.approx([-0.1, -1.0, -0.5, -1.2, -0.9])
    assert tree.entropies.tolist() == pytest.approx([0.0, 0.1, 0.3, 0.5, 0.6])


def test_select_tree_keeps_all_when_budget_is_large():
    tree = select_tree(*candidates(CAND_SCORES, CAND_PARENTS), total_tokens=20)
    assert sorted(tree.tokens.tolist()) == list(range(100, 108))
    assert tree.depths.tolist() == [1, 1, 1, 2, 2, 2, 3, 3]


def test_select_tree_ties_keep_lower_candidate_index():
    tree = select_tree(*candidates([-1.0, -0.5, -0.5], [-1, -1, -1]), total_tokens=2)
    assert tree.tokens.tolist() == [101, 102]


def test_select_tree_raises_on_disconnected_selection():
    with pytest.raises(ValueError, match="ancestor"):
        select_tree(*candidates([-2.0, -1.0], [-1, 0]), total_tokens=1)


def test_select_tree_on_random_eagle_candidates():
    gen = torch.Generator().manual_seed(0)
    scores, parents = [], []
    frontier = [-1]
    for _ in range(4):  # 4 rounds, each expanding up to 3 best nodes into 3 children
        base = len(scores)
        for p in frontier:
            logp = torch.rand(3, generator=gen).log()
            scores += [(scores[p] if p >= 0 else 0.0) + float(lp) for lp in logp]
            parents += [p] * 3
        layer = range(base, len(scores))
        frontier = sorted(layer, key=lambda c: -scores[c])[:3]
    tree = select_tree(*candidates(scores, parents), total_tokens=10)
    kept = [t - 100 for t in tree.tokens.tolist()]
    assert set(kept) == set(sorted(range(len(scores)), key=lambda c: -scores[c])[:10])
    for k, p in enumerate(tree.parents.tolist()):
        assert p < k
        assert (kept[p] if p >= 0 else -1) == parents[kept[k]]  # remapped to the same parent
    assert tree.depths.tolist() == sorted(tree.depths.tolist())


def test_top_keeps_the_best_connected_nodes_or_the_tree_itself():
    tree = DraftTree.make_dummy([-1, -1, 0, 0, 2], scores=[-0.1, -2.0, -0.3, -3.0, -0.5])
    assert tree.top(5) is tree and tree.top(9) is tree
    small = tree.top(3)
    assert small.tokens.tolist() == [1, 3, 5] and small.parents.tolist() == [-1, 0, 1]
    assert tree.top(0).size == 0
