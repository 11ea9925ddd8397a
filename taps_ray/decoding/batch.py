"""One target KV cache holding many sequences of different lengths (continuous batching).

Layout: a transformers DynamicCache with batch dimension B. Row i's committed entries sit at
cache offsets [0, len_i); offsets [len_i, L) are padding (L = max len_i) that no query attends
to. A forward feeds row i's q_i new tokens padded to q = max q_i at offsets [L, L + q):

    positions  [B, q]            len_i + depth of each new token (padding: len_i)
    mask       [B, 1, q, L + q]  query j of row i sees [0, len_i) and its own ancestors in
                                 the new block; padded queries see only themselves

`commit` then moves each row's kept entries from L + keep_i down to [len_i, len_i + m_i) and
cuts the cache at max(len_i + m_i). Keys are stored already rotated (RoPE), so moving an entry
does not change it. Everything goes through the target's public forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taps_ray.decoding.features import final_features, with_aux
from taps_ray.decoding.kv import additive_mask, cache_argument


class BatchedRunner:
    """The target over a batch of sequences sharing one padded KV cache."""

    def __init__(self, model: torch.nn.Module, aux_layers: Sequence[int] = ()):
        self.model = model
        self.aux_layers = tuple(aux_layers)  # hidden-state indices appended to feature rows
        self.base = model.get_decoder()
        self.cache_arg = cache_argument(self.base)
        self.lm_head = model.get_output_embeddings()
        self.hidden_size = self.lm_head.weight.shape[1]  # d: the final state's width
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.cache = None  # DynamicCache [B, heads, L, head_dim] per layer, None when empty
        self.lengths: list[int] = []  # committed entries per row

    @property
    def size(self) -> int:
        return len(self.lengths)

    @property
    def padded_length(self) -> int:  # L
        return max(self.lengths, default=0)

    def logits(self, features: torch.Tensor) -> torch.Tensor:  # [..., d or 4d] -> [..., V] fp32
        return self.lm_head(final_features(features, self.hidden_size)).float()

    @torch.inference_mode()
    def add(self, cache: object, length: int) -> int:
        """Append a sequence prefilled alone (a batch-1 DynamicCache of `length` entries);
        returns its row. Rows are padded to a common length."""
        if self.cache is None:
            self.cache, self.lengths = cache, [length]
            _cut(self.cache, length)
            return 0
        width = max(self.padded_length, length)
        for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
            for name in ("keys", "values"):
                own = _pad(getattr(mine, name), width)
                new = _pad(getattr(theirs, name)[..., :length, :], width)
                setattr(mine, name, torch.cat([own, new], dim=0))
        self.lengths.append(length)
        return self.size - 1

    @torch.inference_mode()
    def remove(self, rows: Sequence[int]) -> None:
        """Drop rows (their cache entries are freed); the others keep their order."""
        drop = set(rows)
        keep = [i for i in range(self.size) if i not in drop]
        self.lengths = [self.lengths[i] for i in keep]
        if not keep:
            self.cache = None
            return
        index = torch.tensor(keep, device=self.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        _cut(self.cache, self.padded_length)

    def forward(
        self,
        tokens: Sequence[torch.Tensor],  # B x [q_i] new tokens per row (q_i >= 1)
        offsets: Sequence[torch.Tensor],  # B x [q_i] depth of each token (root 0)
        masks: Sequence[torch.Tensor],  # B x [q_i, q_i] bool ancestor-or-self
    ) -> torch.Tensor:  # [B, q, d] features, [B, q, 4d] with aux layers (row i valid in [:q_i])
        """One forward of every row's new tokens; the cache grows by q = max q_i per row."""
        if len(tokens) != self.size:
            raise ValueError(f"forward needs one token block per row ({self.size}), "
                             f"got {len(tokens)}")
        q = max(t.numel() for t in tokens)
        ids = torch.zeros(self.size, q, dtype=torch.long)
        pos = torch.tensor(self.lengths).unsqueeze(1).repeat(1, q)  # [B, q]
        for i, (tok, off) in enumerate(zip(tokens, offsets, strict=True)):
            ids[i, : tok.numel()] = tok.cpu()
            pos[i, : off.numel()] += off.cpu()
        mask = batch_tree_mask(self.lengths, q, masks, self.dtype, self.device)
        return self._forward(ids.to(self.device), pos.to(self.device), mask)

    @torch.inference_mode()
    def commit(self, keeps: Sequence[torch.Tensor]) -> None:
        """After a forward: row i keeps its new entries at offsets keeps[i] [m_i] (in order),
        moved to [len_i, len_i + m_i); every other new entry is dropped."""
        if len(keeps) != self.size:
            raise ValueError(f"commit needs one keep list per row ({self.size}), got {len(keeps)}")
        width = self.padded_length  # L: the new block starts here
        rows, dst, src = [], [], []
        for i, keep in enumerate(keeps):
            for r, k in enumerate(keep.tolist()):
                if self.lengths[i] + r != width + k:  # already in place (a full row's chain)
                    rows.append(i)
                    dst.append(self.lengths[i] + r)
                    src.append(width + k)
            self.lengths[i] += keep.numel()
        if rows:
            b, to, frm = (torch.tensor(v, dtype=torch.long, device=self.device)
                          for v in (rows, dst, src))
            for layer in _layers(self.cache):
                layer.keys[b, :, to] = layer.keys[b, :, frm]  # the right side is read first
                layer.values[b, :, to] = layer.values[b, :, frm]
        _cut(self.cache, self.padded_length)

    @torch.inference_mode()
    def discard(self) -> None:
        """Drop the last forward's new entries (calibration repeats one forward)."""
        _cut(self.cache, self.padded_length)

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor):
        out = self.base(
            input_ids=ids,
            position_ids=pos,
            attention_mask=mask,
            **{self.cache_arg: self.cache},
            use_cache=True,
            output_hidden_states=bool(self.aux_layers),
        )
        return with_aux(out.last_hidden_state, out.hidden_states, self.aux_layers)


def batch_tree_mask(
    lengths: Sequence[int],  # committed entries per row
    q: int,  # padded block width
    masks: Sequence[torch.Tensor],  # B x [q_i, q_i] bool ancestor-or-self
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:  # [B, 1, q, L + q] additive
    """Row i's query j sees its prefix [0, len_i) and its tree ancestors in the new block;
    a padded query (j >= q_i) sees only itself, so no softmax row is empty."""
    width = max(lengths)
    allowed = torch.zeros(len(lengths), q, width + q, dtype=torch.bool)
    allowed[:, :, width:] = torch.eye(q, dtype=torch.bool)
    for i, (n, tree) in enumerate(zip(lengths, masks, strict=True)):
        k = tree.shape[0]
        allowed[i, :k, :n] = True
        allowed[i, :k, width : width + k] = tree.cpu()
    return additive_mask(allowed.to(device), dtype)[0, 0].unsqueeze(1)


def _layers(cache: object) -> list:
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def _pad(tensor: torch.Tensor, width: int) -> torch.Tensor:  # [b, h, n, d] -> [b, h, width, d]
    extra = width - tensor.shape[-2]
    if extra <= 0:
        return tensor
    shape = (*tensor.shape[:-2], extra, tensor.shape[-1])
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=-2)


def _cut(cache: object, width: int) -> None:
    for layer in _layers(cache):
        layer.keys = layer.keys[..., :width, :]
        layer.values = layer.values[..., :width, :]
