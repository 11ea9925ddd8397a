"""The EAGLE-3 draft head (the layout vLLM and SGLang load as LlamaForCausalLMEagle3).

    aux     = cat(h_low, h_mid, h_high)               # [T, 3d] target hidden states entering
                                                      # layers aux_layers (default 2, L//2, L-3)
    g_t     = fc(aux_t)                                # [T, d] only for the target's positions
    x       = cat(input_norm(embed(x_{t+1})), hidden_norm(g))   # [T, 2d] (q/k/v read 2d)
    h       = g + attn(x);  h = h + mlp(post_norm(h))  # one decoder layer of the target family
    logits  = lm_head(norm(h))                         # its own head over V' draft tokens

A drafted node feeds its own output h (not fc of anything) as the next depth's g: the head
runs on its own hidden states after the first step, which training-time test teaches it
(training/eagle3.py). Draft-vocabulary index i is target token i + d2t[i]; t2d marks the target
tokens the head can propose.

Parameter names are the published ones (fc, midlayer.*, norm, lm_head, d2t, t2d), so the saved
file needs no renaming to be loaded by vLLM / SGLang. Sources read (not copied) for the names:
vLLM `vllm/model_executor/models/llama_eagle3.py`, SGLang `python/sglang/srt/models/
llama_eagle3.py`, EAGLE `eagle/model/cnets.py`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from taps_ray.decoding.kv import cache_argument, causal_mask
from taps_ray.errors import TapsError
from taps_ray.models.drafter import decoder_config


def default_aux_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low / mid / high layers (vLLM's default: 2, L // 2, L - 3)."""
    if num_layers < 4:  # tiny test targets: still three distinct, valid layers
        return (0, num_layers // 2, num_layers)
    return (2, num_layers // 2, num_layers - 3)


def check_aux_layers(aux_layers, num_layers: int) -> tuple[int, int, int]:
    layers = tuple(int(i) for i in aux_layers)
    if len(layers) != 3 or not all(0 <= i <= num_layers for i in layers):
        raise TapsError(f"eagle3 aux_layers {list(aux_layers)} must be 3 hidden-state indices "
                        f"in 0..{num_layers} (0 = embeddings, i = the input of layer i)")
    return layers


class Eagle3Drafter(nn.Module):
    """EAGLE-3 head built from a target config; its own LM head over `draft_vocab` [V'] (sorted
    target ids; None = the full vocabulary)."""

    kind = "eagle3"
    layout = "eagle3"

    def __init__(
        self,
        target_config: object,
        draft_vocab: torch.Tensor | None = None,
        aux_layers: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        from transformers import AutoModel

        hidden, vocab = target_config.hidden_size, target_config.vocab_size
        layers = target_config.num_hidden_layers
        self.target_config = target_config
        self.aux_layers = check_aux_layers(aux_layers or default_aux_layers(layers), layers)
        ids = torch.arange(vocab) if draft_vocab is None else draft_vocab.long().sort().values
        if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= vocab or \
                ids.unique().numel() != ids.numel():
            raise TapsError("eagle3 draft vocabulary must be distinct target ids in "
                            f"0..{vocab - 1}")
        self.fc = nn.Linear(3 * hidden, hidden, bias=False)
        decoder = AutoModel.from_config(decoder_config(target_config))
        self.midlayer = decoder.layers[0]
        attn = self.midlayer.self_attn
        self.cache_arg = cache_argument(attn)
        for name in ("q_proj", "k_proj", "v_proj"):  # attention reads cat(embed, hidden): 2d
            old = getattr(attn, name)
            setattr(attn, name, nn.Linear(2 * hidden, old.out_features, bias=old.bias is not None))
        self.midlayer.hidden_norm = copy.deepcopy(self.midlayer.input_layernorm)
        self.rotary_emb = decoder.rotary_emb  # non-persistent buffers only
        self.norm = decoder.norm
        self.lm_head = nn.Linear(hidden, ids.numel(), bias=False)
        self.register_buffer("d2t", ids - torch.arange(ids.numel()))  # draft i -> i + d2t[i]
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[ids] = True
        self.register_buffer("t2d", t2d)
        self.decoder_config = decoder.config  # the caches' config (one layer)

    @property
    def draft_vocab(self) -> torch.Tensor:  # [V'] target ids of the draft vocabulary
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    @property
    def draft_vocab_size(self) -> int:
        return int(self.d2t.numel())

    def project(self, aux: torch.Tensor) -> torch.Tensor:  # [..., 3d] -> [..., d]
        """g_t = fc(aux_t): the hidden input of a position the target has seen."""
        return self.fc(aux)

    def forward(
        self,
        hidden: torch.Tensor,  # [B, T, d] g (projected aux) or the head's own previous output
        token_embeds: torch.Tensor,  # [B, T, d] embeddings of x_{t+1}
        attention_mask: torch.Tensor | None = None,  # [B, 1, T, past+T] additive; None = causal
        position_ids: torch.Tensor | None = None,  # [B, T]
        past_key_values: object | None = None,  # transformers Cache (decoder_config)
    ) -> torch.Tensor:  # [B, T, d] the head's output h (before the final norm)
        past = 0 if past_key_values is None else past_key_values.get_seq_length()
        if position_ids is None:
            position_ids = torch.arange(past, past + hidden.shape[1], device=hidden.device)[None]
        if attention_mask is None:  # explicit: sdpa's own is_causal ignores a cached prefix
            attention_mask = causal_mask(past, hidden.shape[1], hidden.dtype, hidden.device)
        layer = self.midlayer
        x = torch.cat([layer.input_layernorm(token_embeds), layer.hidden_norm(hidden)], dim=-1)
        attn, _ = layer.self_attn(
            hidden_states=x,
            position_embeddings=self.rotary_emb(hidden, position_ids),
            attention_mask=attention_mask,
            **{self.cache_arg: past_key_values},
        )
        h = hidden + attn
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., V']
        return self.lm_head(self.norm(hidden))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocab indices to target token ids."""
        return draft_ids + self.d2t[draft_ids]

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.decoder_config)
