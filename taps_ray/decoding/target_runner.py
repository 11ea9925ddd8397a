"""The target side of decoding: prefill, tree verification and one-token steps over one KV cache.

Features are the target's last hidden states (after the final norm), the EAGLE convention; logits
are computed from them only where needed, through the target's own LM head. With `aux_layers`
(an EAGLE-3 head drafts) each feature row also carries those hidden states: [final | aux...],
4d wide (see features.py); logits read [:d].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taps_ray.decoding.features import final_features, with_aux
from taps_ray.decoding.kv import cache_argument, causal_mask, compact_cache, prefix_tree_mask


class TargetRunner:
    """Holds the target's KV cache for one sequence; all calls go through the public forward."""

    def __init__(self, model: torch.nn.Module, aux_layers: Sequence[int] = ()):
        self.model = model
        self.aux_layers = tuple(aux_layers)  # hidden-state indices appended to each feature row
        self.base = model.get_decoder()  # the transformer without the LM head
        self.cache_arg = cache_argument(self.base)
        self.lm_head = model.get_output_embeddings()
        self.hidden_size = self.lm_head.weight.shape[1]  # d: the final state's width
        self.embed = model.get_input_embeddings()
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.cache = None
        self.length = 0  # tokens in the KV cache

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.length = 0

    def logits(self, features: torch.Tensor) -> torch.Tensor:  # [..., d or 4d] -> [..., V] fp32
        return self.lm_head(final_features(features, self.hidden_size)).float()

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [L] -> features [L, d] ([L, 4d] with aux layers); the cache then holds L
        entries."""
        self.reset()
        ids = input_ids.to(self.device)
        return self._forward(ids, torch.arange(ids.numel(), device=self.device), None)

    def extend(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Continue a prefill (chunked prefill): input_ids [n] after the cached ones ->
        features [n, d]; the cache then holds n more entries."""
        if self.cache is None:
            return self.prefill(input_ids)
        ids = input_ids.to(self.device)
        pos = torch.arange(self.length, self.length + ids.numel(), device=self.device)
        mask = causal_mask(self.length, ids.numel(), self.dtype, self.device)
        return self._forward(ids, pos, mask)

    def step(self, token: int) -> torch.Tensor:
        """One plain decoding step: feature [1, d] of `token` at the next position."""
        ids = torch.tensor([token], device=self.device)
        pos = torch.tensor([self.length], device=self.device)
        return self._forward(ids, pos, causal_mask(self.length, 1, self.dtype, self.device))

    def verify(
        self,
        tokens: torch.Tensor,  # [q] root + draft tokens
        position_offsets: torch.Tensor,  # [q] depth of each token (root 0)
        tree_mask: torch.Tensor,  # [q, q] bool ancestor-or-self
    ) -> torch.Tensor:  # [q, d] features
        pos = position_offsets.to(self.device) + self.length
        mask = prefix_tree_mask(self.length, tree_mask.to(self.device), self.dtype)
        return self._forward(tokens.to(self.device), pos, mask)

    def commit(self, past_len: int, keep: torch.Tensor) -> None:
        """Keep the cache prefix and the verified entries at offsets `keep` [m]."""
        compact_cache(self.cache, past_len, keep)
        self.length = past_len + keep.numel()

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None):
        out = self.base(
            input_ids=ids[None],
            position_ids=pos[None],
            attention_mask=mask,
            **{self.cache_arg: self.cache},
            use_cache=True,
            output_hidden_states=bool(self.aux_layers),
        )
        self.length += ids.numel()
        return with_aux(out.last_hidden_state, out.hidden_states, self.aux_layers)[0]
