"""HASS alignment parity: pass j of training equals decoding j draft steps after a prefix."""

from __future__ import annotations

import pytest
import torch

from taps_ray.models.drafter import untrained_drafter
from taps_ray.training.alignment import aligned_passes
from tests.tiny import tiny_target


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_aligned_pass_equals_sequential_decoding(family):
    target = tiny_target(family)
    drafter = untrained_drafter(target, seed=1)
    ids = torch.randint(0, 32, (14,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = target.model.get_decoder()(input_ids=ids[None]).last_hidden_state  # [1, 14, d]
        embeds = target.model.get_input_embeddings()(ids[None, 1:])  # x_{t+1}, [1, 13, d]
        pairs = feats[:, :-1]  # f_t, [1, 13, d]
        preds = list(aligned_passes(drafter, pairs, embeds, passes=4))
        for j in (1, 2, 3):
            for t in (j, 7, 12):
                # Decoding: target pairs up to t - j, then j draft pairs fed own predictions.
                own = [preds[i - 1][0, t - j + i - 1] for i in range(1, j + 1)]
                seq_feats = torch.cat([pairs[0, : t - j + 1], torch.stack(own)])[None]
                out = drafter(seq_feats, embeds[:, : t + 1])  # causal, positions 0..t
                for i in range(1, j + 1):
                    torch.testing.assert_close(out[0, t - j + i], preds[i][0, t - j + i],
                                               atol=1e-5, rtol=1e-4)


def test_pass_zero_is_plain_teacher_forcing():
    target = tiny_target("llama")
    drafter = untrained_drafter(target, seed=2)
    feats, embeds = torch.randn(2, 9, 64), torch.randn(2, 9, 64)
    with torch.inference_mode():
        first = next(aligned_passes(drafter, feats, embeds, passes=3))
        torch.testing.assert_close(first, drafter(feats, embeds), atol=1e-5, rtol=1e-4)
