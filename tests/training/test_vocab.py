"""Reduced draft vocabulary: most frequent assistant tokens first, specials always in."""

from __future__ import annotations

import pytest
import torch

from taps_ray.errors import TapsError
from taps_ray.training.vocab import build_draft_vocab, rank_tokens, token_counts


def arrays():
    # Assistant tokens: 7 x4, 5 x3, 9 x1; prompt tokens: 3 x6, 4 x1.
    ids = torch.tensor([3, 3, 3, 3, 3, 3, 4, 7, 7, 7, 7, 5, 5, 5, 9])
    mask = torch.tensor([0] * 7 + [1] * 8)
    return [(ids[:9], mask[:9]), (ids[9:], mask[9:])]


def test_counts_split_assistant_and_all_tokens():
    assistant, every = token_counts(arrays(), vocab_size=12)
    assert assistant[[7, 5, 9, 3]].tolist() == [4, 3, 1, 0]
    assert every[[3, 7, 4]].tolist() == [6, 4, 1]


def test_ranking_assistant_then_all_then_id():
    ranked = rank_tokens(*token_counts(arrays(), vocab_size=12)).tolist()
    assert ranked[:6] == [7, 5, 9, 3, 4, 0]


def test_vocab_holds_the_most_frequent_ids_and_the_specials():
    vocab = build_draft_vocab(arrays(), size=4, vocab_size=12, special_ids=[11])
    assert vocab.tolist() == [5, 7, 9, 11]
    assert vocab.dtype == torch.int64


def test_vocab_at_least_the_full_size_is_everything():
    assert build_draft_vocab(arrays(), size=50, vocab_size=12).tolist() == list(range(12))


def test_vocab_smaller_than_the_specials_is_a_user_error():
    with pytest.raises(TapsError, match="draft_vocab_size 1"):
        build_draft_vocab(arrays(), size=1, vocab_size=12, special_ids=[0, 11])
