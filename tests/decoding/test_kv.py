"""KV-cache compaction after verification: the prefix stays, the accepted entries move down."""

from __future__ import annotations

import pytest
import torch

from taps_ray.decoding.kv import cache_argument, compact_cache
from tests.tiny import tiny_target


@pytest.mark.parametrize("keep", [[0, 1, 2], [0, 2, 5], [0], [0, 3, 4, 5]],
                         ids=["chain", "tree", "root-only", "deep"])
def test_compaction_keeps_prefix_and_accepted_entries_in_order(keep):
    from transformers import DynamicCache

    target = tiny_target("llama")
    cache = DynamicCache(config=target.model.config)
    with torch.inference_mode():
        target.model(torch.arange(10)[None], use_cache=True,
                     **{cache_argument(target.model): cache})
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    past, idx = 4, torch.tensor(keep)
    compact_cache(cache, past, idx)
    for layer, (k, v) in zip(cache.layers, before, strict=True):
        want_k = torch.cat([k[..., :past, :], k[..., past + idx, :]], dim=-2)
        want_v = torch.cat([v[..., :past, :], v[..., past + idx, :]], dim=-2)
        assert torch.equal(layer.keys, want_k) and torch.equal(layer.values, want_v)
    assert cache.get_seq_length() == past + len(keep)


def test_the_cache_keyword_is_the_one_the_model_takes_and_raises_no_deprecation():
    import warnings

    from taps_ray.config.schema import TreeConfig
    from taps_ray.decoding.engine import SpeculativeEngine
    from taps_ray.decoding.kv import cache_argument
    from taps_ray.decoding.sampling import SamplingParams
    from taps_ray.models.drafter import untrained_drafter

    class New(torch.nn.Module):
        def forward(self, x, cache=None): ...

    class Old(torch.nn.Module):
        def forward(self, x, past_key_values=None): ...

    assert cache_argument(New()) == "cache" and cache_argument(Old()) == "past_key_values"
    with pytest.raises(TypeError, match="no KV cache argument"):
        cache_argument(torch.nn.Linear(2, 2))
    target = tiny_target("llama")
    drafters = [untrained_drafter(target), untrained_drafter(target, layout="eagle3")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecated keyword would raise here
        for drafter in drafters:
            engine = SpeculativeEngine(target, [drafter], TreeConfig(8, 2, 2))
            engine.generate([1, 2, 3], SamplingParams(), 6, stop_token_ids=set())
