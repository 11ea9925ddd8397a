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

from collections.abc import Iterable, Sequence

import torch

from taps_ray.errors import TapsError


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


def aux_layers_for(drafters: Sequence[object]) -> tuple[int, ...]:
    """The aux layers the target must return for `drafters`: those of their EAGLE-3 heads
    (all must agree: one target forward serves every head), () when there is none."""
    return agree_aux_layers(tuple(d.aux_layers) for d in drafters
                            if getattr(d, "kind", "eagle2") == "eagle3")


def agree_aux_layers(layer_sets: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """The one aux-layer tuple of several heads (empty ones need none); TapsError if two
    differ."""
    wanted = {tuple(layers) for layers in layer_sets if layers}
    if len(wanted) > 1:
        raise TapsError(f"EAGLE-3 heads read different target layers ({sorted(wanted)}); heads "
                        "decoded together must share aux_layers")
    return wanted.pop() if wanted else ()
