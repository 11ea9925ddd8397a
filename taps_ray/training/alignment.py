"""HASS harmonized context alignment: J forward passes of the drafter over one batch.

Pass 0 is teacher forcing: pair t = (f_t, x_{t+1}) with the target's features. Pass j >= 1
feeds, at pair t, the drafter's own prediction of f_t from pass j-1 (pair 0 keeps the target's
f_0) and, through the drafter's KV cache of the earlier passes, attends to exactly what decoding
at tree depth j sees:

    pass-0 keys (target features) at positions <= t - j,  and the pass-i key at t - j + i
    for i = 1..j (the drafter's own earlier predictions along the same draft path).

J = training.align_steps counts all passes (the published code's `forward_num_total`), so J = 1
is plain EAGLE-2 teacher forcing. Between passes the fed-back features and the cached keys and
values are detached (HASS detaches its history too), so each pass can be backpropagated on its
own and memory stays at one pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from taps_ray.decoding.kv import additive_mask
from taps_ray.training.extract import attention_backends


def alignment_mask(pairs: int, j: int, device: torch.device) -> torch.Tensor:
    """[P, (j+1) P] bool: which cached keys of passes 0..j pass j's query t may attend to."""
    t = torch.arange(pairs, device=device)[:, None]
    s = torch.arange(pairs, device=device)[None, :]
    blocks = [s <= t - j] + [s == t - j + i for i in range(1, j + 1)]
    return torch.cat(blocks, dim=1)


def aligned_passes(
    drafter: torch.nn.Module,  # EagleDrafter
    features: torch.Tensor,  # [B, P, d] target features f_t (right-padded pairs)
    embeds: torch.Tensor,  # [B, P, d] embeddings of x_{t+1}
    passes: int,  # J >= 1
    autocast: bool = False,  # bf16 autocast (CUDA)
) -> Iterator[torch.Tensor]:  # J predictions [B, P, d] of f_{t+1}
    """Yield pass 0..J-1's predictions; the caller may backpropagate each before the next."""
    from transformers import DynamicCache

    cache = DynamicCache(config=drafter.decoder.config) if passes > 1 else None
    first = features[:, :1]  # [B, 1, d] pair 0 always sees the target's f_0
    for j in range(passes):
        pred = _drafter_pass(drafter, features, embeds, cache, j, autocast)
        yield pred
        if j + 1 < passes:
            _detach_cache(cache)
            features = torch.cat([first, pred[:, :-1].detach().to(first.dtype)], dim=1)


def _drafter_pass(drafter, features, embeds, cache, j: int, autocast: bool) -> torch.Tensor:
    b, pairs = embeds.shape[:2]
    device = embeds.device
    pos = torch.arange(pairs, device=device)[None].expand(b, pairs)
    mask = None  # pass 0: plain causal attention (no cached passes yet)
    if j > 0:
        dtype = torch.bfloat16 if autocast else torch.float32
        mask = additive_mask(alignment_mask(pairs, j, device), dtype)  # [1, 1, P, (j+1) P]
    with attention_backends(device), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        return drafter(features, embeds, mask, pos, cache)


def _detach_cache(cache: object) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
