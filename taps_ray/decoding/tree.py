"""Draft trees as data, and the pure functions that turn one into what the target verifies.

A draft tree hangs under an implicit *root*: the last committed token, which is not part of the
tree but is fed to the target first. In the verify inputs the root is index 0 and node k is
index k + 1. Nodes are stored in topological order (parents[k] < k, -1 = child of the root).

Glossary
    depth         1-based distance of a node from the root (root children have depth 1).
    score         cumulative draft log-prob of the root->node path; a child never outscores
                  its parent, so the `total_tokens` best nodes form a connected tree (EAGLE-2).
    total_tokens  number of draft nodes kept after reranking (the verify cost is total_tokens + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class DraftTree:
    """A draft tree under an implicit root (the last committed token, index 0 in verify inputs).
    Nodes are in topological order: parents[i] < i, and -1 means 'child of the root'."""

    tokens: torch.Tensor  # [n] long   draft token ids
    parents: torch.Tensor  # [n] long   parent node index, -1 = root
    scores: torch.Tensor  # [n] float  cumulative draft log-prob of root->node path
    entropies: torch.Tensor  # [n] float  entropy of the draft distribution this node was drawn from

    def __post_init__(self) -> None:
        n = self.tokens.numel()
        fields = (self.tokens, self.parents, self.scores, self.entropies)
        if any(t.dim() != 1 or t.numel() != n for t in fields):
            shapes = [tuple(t.shape) for t in fields]
            raise ValueError(f"DraftTree fields must all be 1-D of the same length, got {shapes}")
        bad = [k for k, p in enumerate(self.parents.tolist()) if not -1 <= p < k]
        if bad:
            raise ValueError(
                f"DraftTree parents must satisfy -1 <= parents[k] < k; bad nodes {bad}"
            )

    @property
    def size(self) -> int:
        return self.tokens.numel()

    def top(self, size: int) -> DraftTree:
        """The `size` best nodes by score (a connected tree: scores fall along every path);
        the tree itself when it has no more."""
        if size >= self.size:
            return self
        return select_tree(self.tokens, self.parents, self.scores, self.entropies, size)

    @property
    def depths(self) -> torch.Tensor:  # [n] long, 1-based
        return torch.tensor(
            _depths(self.parents.tolist()), dtype=torch.long, device=self.tokens.device
        )

    @classmethod
    def make_dummy(
        cls,
        parents: Sequence[int],
        tokens: Sequence[int] | None = None,
        scores: Sequence[float] | None = None,
    ) -> DraftTree:
        """A tree for tests. Default tokens are 1..n; default scores are -depth - 0.01 * k, so a
        child never outscores its parent and siblings rank by node index."""
        n = len(parents)
        tree = cls(
            tokens=torch.tensor(range(1, n + 1) if tokens is None else tokens, dtype=torch.long),
            parents=torch.tensor(parents, dtype=torch.long),
            scores=torch.zeros(n),
            entropies=torch.zeros(n),
        )  # validates parents before depths are computed
        if scores is None:
            scores = [-d - 0.01 * k for k, d in enumerate(tree.depths.tolist())]
        return replace(tree, scores=torch.tensor(scores, dtype=torch.float32))

    @classmethod
    def chain(cls, tokens: Sequence[int]) -> DraftTree:
        """A single path root -> tokens[0] -> tokens[1] -> ... (what a chain drafter proposes)."""
        return cls.make_dummy(list(range(-1, len(tokens) - 1)), tokens)


def select_tree(
    cand_tokens: torch.Tensor,  # [m] long   candidate token ids
    cand_parents: torch.Tensor,  # [m] long   parent candidate index, -1 = root
    cand_scores: torch.Tensor,  # [m] float  cumulative draft log-prob
    cand_entropies: torch.Tensor,  # [m] float  draft entropy at the candidate's parent
    total_tokens: int,
) -> DraftTree:
    """EAGLE-2 reranking: keep the `total_tokens` best candidates by score (ties: lower candidate
    index), order them by depth then score, and remap parent indices to the kept nodes."""
    if not all(
        t.numel() == cand_tokens.numel() for t in (cand_parents, cand_scores, cand_entropies)
    ):
        raise ValueError("select_tree: candidate tensors must all have the same length")
    if total_tokens < 0:
        raise ValueError(f"select_tree: total_tokens must be >= 0, got {total_tokens}")
    ranked = _rank_by_score(cand_scores)[:total_tokens]  # candidate ids, best first
    parents = cand_parents.tolist()
    kept = _topological(ranked, parents)  # candidate ids in the new node order
    new_index = {c: k for k, c in enumerate(kept)}
    new_parents = [new_index[parents[c]] if parents[c] >= 0 else -1 for c in kept]
    idx = torch.tensor(kept, dtype=torch.long, device=cand_tokens.device)
    return DraftTree(
        tokens=cand_tokens[idx],
        parents=torch.tensor(new_parents, dtype=torch.long, device=cand_tokens.device),
        scores=cand_scores[idx.to(cand_scores.device)],
        entropies=cand_entropies[idx.to(cand_entropies.device)],
    )


def _rank_by_score(scores: torch.Tensor) -> list[int]:  # scores [m] -> ids, best first
    """Candidate ids sorted by score descending; a stable sort breaks ties by lower index."""
    return torch.sort(-scores.float().cpu(), stable=True).indices.tolist()


def _topological(ranked: list[int], parents: list[int]) -> list[int]:
    """Order kept candidates by depth, then by rank; raise if a kept node's parent was dropped."""
    rank = {c: r for r, c in enumerate(ranked)}
    depth: dict[int, int] = {}
    for c in ranked:
        node, steps = c, 0
        while node != -1:
            if node not in rank:
                raise ValueError(
                    f"select_tree: candidate {c} is kept but its ancestor {node} is not; scores "
                    "must never increase from parent to child (cumulative log-probs)"
                )
            node, steps = parents[node], steps + 1
            if steps > len(ranked):
                raise ValueError(f"select_tree: candidate parents form a cycle through {c}")
        depth[c] = steps
    return sorted(ranked, key=lambda c: (depth[c], rank[c]))


def _depths(parents: list[int]) -> list[int]:
    """1-based depth of each node; needs topological order (parents[k] < k)."""
    depths: list[int] = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def tree_attention_mask(tree: DraftTree) -> torch.Tensor:  # [n+1, n+1] bool
    """Row i may attend to column j iff j is i or an ancestor of i (index 0 = root)."""
    n = tree.size
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    mask[0, 0] = True
    for k, p in enumerate(tree.parents.tolist()):
        mask[k + 1] = mask[p + 1]  # a node sees everything its parent sees...
        mask[k + 1, k + 1] = True  # ...and itself
    return mask.to(tree.tokens.device)


def tree_position_offsets(tree: DraftTree) -> torch.Tensor:  # [n+1] long
    """Depth of each verify position (root 0); the caller adds the prefix length."""
    root = torch.zeros(1, dtype=torch.long, device=tree.tokens.device)
    return torch.cat([root, tree.depths])


def children_lists(tree: DraftTree) -> list[list[int]]:
    """Index 0: the root's children; index k + 1: node k's children. Each list is sorted by
    score descending, ties by node index."""
    children: list[list[int]] = [[] for _ in range(tree.size + 1)]
    for k, p in enumerate(tree.parents.tolist()):
        children[p + 1].append(k)
    scores = tree.scores.tolist()
    return [sorted(kids, key=lambda k: (-scores[k], k)) for kids in children]


def tree_paths(tree: DraftTree) -> torch.Tensor:  # [num_leaves, max_depth] long
    """Each row: the node indices along one root-to-leaf path, padded with -1; leaves in index
    order. Node indices are 0-based node indices, not verify indices."""
    parents = tree.parents.tolist()
    has_child = set(parents)
    leaves = [k for k in range(tree.size) if k not in has_child]
    paths = [_path_to(leaf, parents) for leaf in leaves]
    width = max((len(p) for p in paths), default=0)
    rows = [p + [-1] * (width - len(p)) for p in paths]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), width)


def _path_to(node: int, parents: list[int]) -> list[int]:
    path = []
    while node != -1:
        path.append(node)
        node = parents[node]
    return path[::-1]


def merge_trees(trees: Sequence[DraftTree], total_tokens: int | None = None) -> DraftTree:
    """Union of trees under the shared root as a trie: identical token paths become one node.

    A node's score is the max over the trees that hold its path (its entropy comes from that
    tree); since every tree's scores fall from parent to child, so do the maxima, and the union
    stays rerankable. `total_tokens=None` keeps the whole union (budget `sum`); a number reranks
    it to that many nodes (budget `matched`: the verify cost of one tree).
    """
    index: dict[tuple[int, int], int] = {}  # (merged parent, token) -> merged node
    tokens: list[int] = []
    parents: list[int] = []
    scores: list[float] = []
    entropies: list[float] = []
    for tree in trees:
        local: list[int] = []  # this tree's node -> merged node
        for tok, par, score, ent in zip(
            tree.tokens.tolist(), tree.parents.tolist(), tree.scores.tolist(),
            tree.entropies.tolist(), strict=True,
        ):
            key = (local[par] if par >= 0 else -1, tok)
            node = index.get(key)
            if node is None:
                node = index[key] = len(tokens)
                tokens.append(tok)
                parents.append(key[0])
                scores.append(score)
                entropies.append(ent)
            elif score > scores[node]:
                scores[node], entropies[node] = score, ent
            local.append(node)
    device = trees[0].tokens.device
    merged = [
        torch.tensor(tokens, dtype=torch.long, device=device),
        torch.tensor(parents, dtype=torch.long, device=device),
        torch.tensor(scores, dtype=trees[0].scores.dtype, device=device),
        torch.tensor(entropies, dtype=trees[0].entropies.dtype, device=device),
    ]
    if total_tokens is None:
        return DraftTree(*merged)
    return select_tree(*merged, total_tokens=total_tokens)
