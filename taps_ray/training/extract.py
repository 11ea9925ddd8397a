"""Teacher-forced target passes that turn token ids into target features.

Features f_t are the target's last hidden states after the final norm: the output of
`model.get_decoder()`. For an EAGLE-3 run (`aux_layers` given) each row also carries the hidden
states of those layers: [final | aux_1 | aux_2 | aux_3] ([T, 4d], decoding/features.py).

Conversations are sorted by length and grouped into right-padded batches under a token budget,
so little compute goes to padding. Right padding needs no padding mask:
under the causal mask a real token never attends to a later (pad) position, so its feature is
exactly the unpadded one, and SDPA keeps its fast causal path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from taps_ray.data.render import RenderedExample
from taps_ray.errors import TapsError

PAD_ID = 0  # any valid id: right pads are never attended to by real tokens


@dataclass
class ConversationFeatures:
    """One conversation's token ids, assistant mask and target features."""

    input_ids: torch.Tensor  # [T] int32
    loss_mask: torch.Tensor  # [T] uint8, 1 on assistant tokens
    features: torch.Tensor  # [T, d] fp16/fp32 final features (after the final norm), or
    # [T, 4d] = [final | aux_1 | aux_2 | aux_3] for EAGLE-3 (decoding/features.py)

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def attention_backends(device: torch.device) -> AbstractContextManager:
    """On CUDA, SDPA without cuDNN: cuDNN builds a new plan for every new sequence length
    (~70 ms of host time per shape, measured on an H100), and training batches rarely repeat
    one. Flash / memory-efficient kernels have no such cost. Elsewhere: the defaults."""
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(backends)


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per target forward: small on CPU (no gain past that), large on GPUs."""
    return 65536 if device.type == "cuda" else 4096


def length_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first; each batch's padded size B * T_max stays <= the budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        # The first index of a batch is its longest, so it fixes the padded length.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.inference_mode()
def forward_features(
    decoder: torch.nn.Module,  # target.model.get_decoder()
    id_lists: Sequence[Sequence[int]],  # B conversations of token ids
    device: torch.device,
    aux_layers: Sequence[int] = (),  # EAGLE-3 hidden-state indices; () = final features only
) -> list[torch.Tensor]:  # B tensors [T_i, d or 4d] on `device`, in the target's dtype
    """One right-padded batched forward; returns each conversation's unpadded features."""
    from taps_ray.decoding.features import with_aux

    longest = max(len(ids) for ids in id_lists)
    batch = torch.full((len(id_lists), longest), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(id_lists):
        batch[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    with attention_backends(device):
        out = decoder(input_ids=batch.to(device), use_cache=False,
                      output_hidden_states=bool(aux_layers))
        hidden = with_aux(out.last_hidden_state, out.hidden_states, aux_layers)  # [B, T, d|4d]
    return [hidden[row, : len(ids)] for row, ids in enumerate(id_lists)]


def iter_conversation_features(
    target: object,
    examples: Sequence[RenderedExample],
    store_dtype: torch.dtype,
    max_batch_tokens: int | None = None,
    aux_layers: Sequence[int] = (),  # EAGLE-3 hidden-state indices (rows become [T, 4d])
) -> Iterator[tuple[int, ConversationFeatures]]:
    """(index into `examples`, its features on CPU) in length-batched order."""
    budget = max_batch_tokens or default_batch_tokens(target.device)
    decoder = target.model.get_decoder()
    for batch in length_batches([len(ex.input_ids) for ex in examples], budget):
        ids = [examples[i].input_ids for i in batch]
        feats = forward_features(decoder, ids, target.device, aux_layers)
        # One cast, one overflow check and one device-to-host copy per batch, then split.
        flat = torch.cat(feats).to(store_dtype)  # [sum T_i, d]
        if store_dtype == torch.float16 and not bool(torch.isfinite(flat).all()):
            raise TapsError("target features overflow fp16; set training.feature_dtype to fp32")
        flat = flat.cpu()
        for i, f in zip(batch, flat.split([len(f) for f in feats]), strict=True):
            yield i, to_conversation(examples[i], f)


def to_conversation(example: RenderedExample, features: torch.Tensor) -> ConversationFeatures:
    return ConversationFeatures(
        input_ids=torch.as_tensor(example.input_ids, dtype=torch.int32),
        loss_mask=torch.as_tensor(example.loss_mask, dtype=torch.uint8),
        features=features,
    )
