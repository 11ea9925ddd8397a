"""Reduced draft vocabulary: the N target tokens the drafter scores instead of all V.

Ranking: frequency over the assistant (loss-masked) tokens, i.e. the tokens the drafter is
trained to predict; ties, and the rest when fewer than N distinct assistant tokens exist, are
ranked by frequency over all tokens, then by id. Special tokens (EOS, BOS, PAD and the
tokenizer's specials) are always included so a draft can end a turn.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from taps_ray.errors import TapsError


def token_counts(
    arrays: Iterable[tuple[torch.Tensor, torch.Tensor]],  # (input_ids [N], loss_mask [N]) pairs
    vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # (assistant counts [V], all-token counts [V]) int64
    assistant = torch.zeros(vocab_size, dtype=torch.int64)
    every = torch.zeros(vocab_size, dtype=torch.int64)
    for ids, mask in arrays:
        ids = ids.long()
        every += torch.bincount(ids, minlength=vocab_size)[:vocab_size]
        assistant += torch.bincount(ids[mask.bool()], minlength=vocab_size)[:vocab_size]
    return assistant, every


def special_token_ids(target: object) -> list[int]:
    """EOS/BOS/PAD from the model config plus every special id of the tokenizer (if any)."""
    ids: set[int] = set()
    config = target.model.config
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(config, key, None)
        ids.update([value] if isinstance(value, int) else list(value or []))
    tokenizer = getattr(target, "tokenizer", None)
    if tokenizer is not None:
        ids.update(tokenizer.all_special_ids)
    return sorted(ids)


def rank_tokens(assistant: torch.Tensor, every: torch.Tensor) -> torch.Tensor:
    """[V] token ids, most useful first: assistant count, then all-token count, then id."""
    order = torch.arange(assistant.numel())
    order = order[torch.argsort(-every[order], stable=True)]
    return order[torch.argsort(-assistant[order], stable=True)]


def build_draft_vocab(
    arrays: Iterable[tuple[torch.Tensor, torch.Tensor]],  # (input_ids [N], loss_mask [N]) pairs
    size: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
) -> torch.Tensor:  # [min(size, V)] int64, sorted ascending
    """The `size` most frequent target ids of the training data, specials always included."""
    if size <= 0:
        raise TapsError(f"drafter.draft_vocab_size must be > 0 here (got {size}); 0 means full")
    if size >= vocab_size:
        return torch.arange(vocab_size)
    specials = sorted({i for i in special_ids if 0 <= i < vocab_size})
    if size < len(specials):
        raise TapsError(
            f"drafter.draft_vocab_size {size} is smaller than the {len(specials)} special "
            "tokens it must hold; raise it"
        )
    ranked = rank_tokens(*token_counts(arrays, vocab_size))
    chosen = torch.zeros(vocab_size, dtype=torch.bool)
    chosen[specials] = True
    rest = ranked[~chosen[ranked]][: size - len(specials)]
    chosen[rest] = True
    return chosen.nonzero().flatten()
