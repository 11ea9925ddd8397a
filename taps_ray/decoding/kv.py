"""KV-cache and attention-mask helpers for tree decoding through a model's public forward.

Masks are additive float masks `[1, 1, q, past + q]` (0 = attend, dtype-min = blocked) because
transformers passes 4-D masks through unchanged to both the eager and SDPA attention paths.
"""

from __future__ import annotations

import inspect

import torch


def additive_mask(
    allowed: torch.Tensor,  # [q, past + q] bool, True = may attend
    dtype: torch.dtype,
) -> torch.Tensor:  # [1, 1, q, past + q]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def prefix_tree_mask(
    past_len: int,
    tree_mask: torch.Tensor,  # [q, q] bool, ancestor-or-self
    dtype: torch.dtype,
) -> torch.Tensor:  # [1, 1, q, past + q]
    """Every query sees the whole committed prefix plus its own ancestors in the tree."""
    q = tree_mask.shape[0]
    prefix = torch.ones(q, past_len, dtype=torch.bool, device=tree_mask.device)
    return additive_mask(torch.cat([prefix, tree_mask], dim=1), dtype)


def causal_mask(past_len: int, q: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 1, q, past + q] ordinary causal mask (prefix visible)."""
    tri = torch.ones(q, q, dtype=torch.bool, device=device).tril()
    return prefix_tree_mask(past_len, tri, dtype)


@torch.inference_mode()  # the cache's tensors are inference tensors: edit them in that mode
def compact_cache(
    cache: object,  # transformers DynamicCache
    past_len: int,  # entries before the verified block, kept as they are
    keep: torch.Tensor,  # [m] long, offsets inside the verified block to keep, in order
) -> None:
    """Keep prefix + the accepted path's entries and drop the rest of the tree, in place.

    The kept entries move down to offsets 0..m-1 of the block (nothing moves when they are
    already there, as on a chain) and the cache is cut after them: no copy of the prefix, which
    grows with the sequence and was the larger part of a step's bookkeeping.
    """
    m = keep.numel()
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        idx = keep.to(layer.keys.device)
        if not torch.equal(idx, torch.arange(m, device=idx.device)):
            rows = idx + past_len
            layer.keys[..., past_len : past_len + m, :] = layer.keys[..., rows, :]
            layer.values[..., past_len : past_len + m, :] = layer.values[..., rows, :]
        layer.keys = layer.keys[..., : past_len + m, :]
        layer.values = layer.values[..., : past_len + m, :]


def crop_cache(cache: object, length: int) -> None:
    """Drop every entry past `length` (e.g. the drafter's tree-expansion entries)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def cache_argument(module: torch.nn.Module) -> str:
    """The keyword `module.forward` takes its KV cache under: `cache` in current transformers
    (where `past_key_values` is deprecated, to be removed in 5.40), else `past_key_values` or
    `past_key_value` (older releases). Looked up once per module, not per step."""
    params = inspect.signature(module.forward).parameters
    for name in ("cache", "past_key_values", "past_key_value"):
        if name in params:
            return name
    raise TypeError(f"{type(module).__name__}.forward takes no KV cache argument")
