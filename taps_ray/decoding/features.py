"""The target's feature rows, with or without EAGLE-3's auxiliary hidden states.

    plain row = final                            # [..., d]  what EAGLE-2 / HASS heads read
    EAGLE-3   = [final | aux_1 | aux_2 | aux_3]  # [..., 4d] aux_k = hidden_states[aux_layers[k]]

`final` is the post-norm last hidden state (the target's LM head reads it, so logits always
read columns [:d]); an EAGLE-3 head reads the aux columns [d:] and fuses them with its `fc`.

Hidden-state indices are HF `output_hidden_states` ones (transformers 5.x, checked on 5.24):
index i < L is the input of layer i (0 = the embeddings, pre-norm residual stream, as vLLM's
EAGLE-3 collects them) and index L is the post-norm last hidden state (= `final`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def final_features(feats: torch.Tensor, d: int) -> torch.Tensor:  # [..., d or 4d] -> [..., d]
    """The post-norm last hidden state: what the LM head and EAGLE-2 / HASS heads read."""
    return feats[..., :d]


def aux_features(feats: torch.Tensor, d: int) -> torch.Tensor:  # [..., 4d] -> [..., 3d]
    """The auxiliary hidden states an EAGLE-3 head projects with `fc`."""
    if feats.shape[-1] <= d:
        raise ValueError(f"features of width {feats.shape[-1]} carry no auxiliary hidden states "
                         f"(hidden size {d}): the target ran without EAGLE-3 aux layers")
    return feats[..., d:]


def with_aux(
    final: torch.Tensor,  # [..., d] post-norm last hidden state
    hidden_states: Sequence[torch.Tensor],  # L + 1 x [..., d] HF output_hidden_states
    aux_layers: Sequence[int],  # hidden-state indices, e.g. (2, L // 2, L - 3)
) -> torch.Tensor:  # [..., d * (1 + len(aux_layers))]; `final` itself when there are none
    """One feature row per position: the final state followed by the aux hidden states."""
    if not aux_layers:
        return final
    return torch.cat([final, *(hidden_states[i] for i in aux_layers)], dim=-1)
