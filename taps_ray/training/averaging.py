"""Weight-space combination of drafters: the element-wise weighted mean of their parameters.

EAGLE-2/HASS heads score with the target's LM head, so different reduced vocabularies average
over their union; an EAGLE-3 head's own LM head rows belong to its draft vocabulary (d2t), so
EAGLE-3 heads average only with EAGLE-3 heads of the same aux layers and draft vocabulary."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from taps_ray.errors import TapsError
from taps_ray.models.drafter import DrafterMeta, EagleDrafter


def normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Uniform when None; else checked (>= 0, finite, positive sum) and scaled to sum to 1."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise TapsError(f"got {len(weights)} averaging weights for {n} drafters; give one each")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise TapsError(f"averaging weights {weights} must be finite and >= 0; fix the weights")
    total = sum(weights)
    if total <= 0:
        raise TapsError("averaging weights sum to 0; give at least one drafter a positive weight")
    return [w / total for w in weights]


def check_same_architecture(drafters: Sequence[EagleDrafter]) -> None:
    """Same parameter names and shapes (and, for EAGLE-3 heads, the same aux layers and draft
    vocabulary), or a TapsError."""
    eagle3 = [getattr(d, "layout", "") == "eagle3" for d in drafters]
    if any(eagle3) and not all(eagle3):
        k = eagle3.index(not eagle3[0])
        raise TapsError(
            f"drafter {k} is {'an EAGLE-3' if eagle3[k] else 'an EAGLE-2/HASS'} head and drafter "
            f"0 is {'an EAGLE-3' if eagle3[0] else 'an EAGLE-2/HASS'} head (another "
            "architecture); average only heads of one method family"
        )
    ref = _weights(drafters[0])
    for k, drafter in enumerate(drafters[1:], start=1):
        state = _weights(drafter)
        if state.keys() != ref.keys() or any(state[n].shape != ref[n].shape for n in ref):
            raise TapsError(
                f"drafter {k} has another architecture than drafter 0; average only drafters "
                "trained for the same target"
            )
    if all(eagle3):
        _check_same_eagle3_inputs(drafters)


def _check_same_eagle3_inputs(drafters: Sequence[object]) -> None:
    """fc reads the same target layers and lm_head rows mean the same tokens, or no average."""
    ref = drafters[0]
    for k, drafter in enumerate(drafters[1:], start=1):
        if tuple(drafter.aux_layers) != tuple(ref.aux_layers):
            raise TapsError(
                f"EAGLE-3 drafter {k} reads target layers {list(drafter.aux_layers)} but drafter "
                f"0 reads {list(ref.aux_layers)}; average only heads trained on the same layers"
            )
        if not torch.equal(drafter.d2t.cpu(), ref.d2t.cpu()):
            raise TapsError(
                f"EAGLE-3 drafter {k} has another draft vocabulary (d2t) than drafter 0; average "
                "only heads trained with the same draft vocabulary"
            )


def average_drafters(
    drafters: Sequence[EagleDrafter], weights: Sequence[float] | None = None
) -> EagleDrafter:
    """A new drafter whose every parameter is sum_k w_k * theta_k (weights normalised)."""
    if not drafters:
        raise TapsError("averaging needs at least one drafter; pass one or more drafter folders")
    check_same_architecture(drafters)
    w = normalised_weights(weights, len(drafters))
    states = [_weights(d) for d in drafters]
    merged = {}
    for name, ref in states[0].items():
        parts = zip(w, states, strict=True)
        acc = sum(wk * s[name].to(ref.device, torch.float32) for wk, s in parts)
        merged[name] = acc.to(ref.dtype)
    out = copy.deepcopy(drafters[0])
    out.load_state_dict(merged, strict=False)
    if getattr(out, "layout", "") != "eagle3":  # EAGLE-3: d2t / t2d equal, kept from drafter 0
        vocab = union_vocab([d.draft_vocab for d in drafters])
        out.draft_vocab = None if vocab is None else vocab.to(drafters[0].draft_vocab.device)
    out.meta = _averaged_meta(drafters, w)
    out.meta.draft_vocab_size = out.draft_vocab_size
    return out


def union_vocab(vocabs: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Sorted union of reduced draft vocabularies; None (full) if any drafter uses the full one.

    The head scores with the target's frozen LM head, so drafters trained with different reduced
    vocabularies average fine over the union of their rows.
    """
    if any(v is None for v in vocabs):
        return None
    return torch.unique(torch.cat([v.cpu() for v in vocabs]))


_VOCAB_MAPS = ("draft_vocab", "d2t", "t2d")  # token-id maps, not weights: never averaged


def _weights(drafter: EagleDrafter) -> dict[str, torch.Tensor]:
    """The trained parameters (fc + layer, EAGLE-3: + norm + lm_head)."""
    return {k: v for k, v in drafter.state_dict().items() if k not in _VOCAB_MAPS}


def _averaged_meta(drafters: Sequence[EagleDrafter], weights: list[float]) -> DrafterMeta:
    metas = [getattr(d, "meta", None) or DrafterMeta() for d in drafters]
    methods = {m.method for m in metas}
    method = methods.pop() if len(methods) == 1 else "mixed"
    extra = {"averaged": [m.name for m in metas], "weights": weights}
    return replace(metas[0], name=f"mixavg-{method}", method=method, data={}, extra=extra)
