"""EAGLE-2 trees at many positions of one known sequence in one batched pass per round (replay).

At T = 0 the committed tokens are known in advance, so the trees of `block` positions are
drafted together over one drafter cache holding every teacher pair; each query row is masked
to its own prefix and its own tree. Any `DrafterSession` kind (EAGLE-2 / HASS, EAGLE-3) works:
the session supplies `log_probs`, `run_pairs` and its drafter's `to_target_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.kv import additive_mask, crop_cache
from taps_ray.decoding.proposer import CandidateLayer, DrafterSession
from taps_ray.decoding.tree import DraftTree, select_tree


@torch.inference_mode()
def draft_at_positions(
    session: DrafterSession,
    cache: object,  # drafter cache holding teacher pairs 0..P-1, P >= max(lengths) - 1
    hidden: torch.Tensor,  # [P, d] the drafter's output at each of those pairs
    lengths: Sequence[int],  # committed lengths S; each tree's root is x_{S-1}
    tree: TreeConfig,
) -> list[DraftTree]:
    """`session.draft` at several positions of one known sequence, one batched call per round.

    A tree at committed length S uses only pairs 0..S-2 and its own ancestors, so each query
    row is masked to its own prefix and tree; the other positions' entries in the shared
    cache are invisible to it. Equals drafting at each position in turn up to float summation
    order (tested against `draft`). The cache is cropped back to P pairs on return.
    """
    b, k, d = len(lengths), tree.top_k, hidden.shape[-1]
    device, dtype = session.device, session.dtype
    pairs = cache.get_seq_length()
    s = torch.tensor(lengths, device=device)
    last = hidden[s - 2]  # [b, d] output at pair S-2: the parent feature of depth 1
    layer = _children_at(session, session.log_probs(last)[:, None],
                         torch.zeros(b, 1, device=device),
                         torch.full((b, 1), -1, device=device), k)
    layers, frontier_hidden = [layer], last[:, None].expand(b, k, d)
    see_prefix = torch.arange(pairs, device=device)[None] < (s - 1)[:, None]  # [b, P]
    see_prefix = see_prefix.repeat_interleave(k, dim=0)
    same_tree = torch.eye(b, dtype=torch.bool, device=device)[:, None, None, :, None]
    ancestors = torch.zeros(b, 0, 0, dtype=torch.bool, device=device)  # [b, e, e] or self
    offset = 0
    for depth in range(1, tree.depth + 1):
        best = layer.scores.topk(k, dim=-1).indices  # [b, k] frontier of each tree
        ancestors = _grow_ancestors(ancestors, best, k)
        # cache columns: P pairs, then per round b*k entries in (position, frontier) order
        own = ancestors[:, -k:].view(b, k, depth, 1, k) & same_tree
        allowed = torch.cat([see_prefix, own.reshape(b * k, depth * b * k)], dim=1)
        parent_hidden = frontier_hidden.gather(1, best[..., None].expand(-1, -1, d))
        h = session.run_pairs(
            parent_hidden.reshape(b * k, d),
            layer.tokens.gather(1, best).flatten(),
            (s - 2 + depth).repeat_interleave(k),
            additive_mask(allowed, dtype),
            cache,
        )
        frontier = offset + best
        offset += layer.tokens.shape[1]
        logp = session.log_probs(h).view(b, k, -1)
        layer = _children_at(session, logp, layer.scores.gather(1, best), frontier, k)
        layers.append(layer)
        frontier_hidden = h.view(b, k, d).repeat_interleave(k, dim=1)
    crop_cache(cache, pairs)
    cat = [torch.cat([getattr(lay, f) for lay in layers], dim=1)
           for f in CandidateLayer.__dataclass_fields__]
    return [select_tree(*(c[i] for c in cat), total_tokens=tree.total_tokens) for i in range(b)]


def _children_at(session, logp, parent_scores, parent_ids, top_k) -> CandidateLayer:
    """`_children` for b trees at once: logp [b, n, V'] -> layers of [b, n * top_k]."""
    entropy = -(logp.exp() * logp).sum(-1)  # [b, n]
    top = logp.topk(top_k, dim=-1)  # [b, n, top_k]
    return CandidateLayer(
        tokens=session.drafter.to_target_ids(top.indices).flatten(1),
        parents=parent_ids.repeat_interleave(top_k, dim=1),
        scores=(parent_scores[..., None] + top.values).flatten(1),
        entropies=entropy.repeat_interleave(top_k, dim=1),
    )


def _grow_ancestors(ancestors: torch.Tensor, best: torch.Tensor, k: int) -> torch.Tensor:
    """[b, e, e] ancestor-or-self among expanded entries -> [b, e + k, e + k] with the new
    frontier `best` [b, k] (indices into the newest layer, whose parents are the last k
    entries; the first frontier's parent is the root)."""
    b, e = ancestors.shape[:2]
    if e:
        parent = e - k + torch.div(best, k, rounding_mode="floor")
        rows = ancestors.gather(1, parent[..., None].expand(-1, -1, e))
    else:
        rows = ancestors.new_zeros(b, k, 0)
    own = torch.eye(k, dtype=torch.bool, device=ancestors.device).expand(b, k, k)
    upper = torch.cat([ancestors, ancestors.new_zeros(b, e, k)], dim=2)
    return torch.cat([upper, torch.cat([rows, own], dim=2)], dim=1)
