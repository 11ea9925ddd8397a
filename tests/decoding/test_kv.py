"""KV-cache compaction after verification: the prefix stays, the accepted entries move down."""

from __future__ import annotations

import pytest
import torch

from taps_ray.decoding.kv import compact_cache
from tests.tiny import tiny_target


@pytest.mark.parametrize("keep", [[0, 1, 2], [0, 2, 5], [0], [0, 3, 4, 5]],
                         ids=["chain", "tree", "root-only", "deep"])
def test_compaction_keeps_prefix_and_accepted_entries_in_order(keep):
    from transformers import DynamicCache

    target = tiny_target("llama")
    cache = DynamicCache(config=target.model.config)
    with torch.inference_mode():
        target.model(torch.arange(10)[None], past_key_values=cache, use_cache=True)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    past, idx = 4, torch.tensor(keep)
    compact_cache(cache, past, idx)
    for layer, (k, v) in zip(cache.layers, before, strict=True):
        want_k = torch.cat([k[..., :past, :], k[..., past + idx, :]], dim=-2)
        want_v = torch.cat([v[..., :past, :], v[..., past + idx, :]], dim=-2)
        assert torch.equal(layer.keys, want_k) and torch.equal(layer.values, want_v)
    assert cache.get_seq_length() == past + len(keep)
