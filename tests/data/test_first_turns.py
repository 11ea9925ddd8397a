"""data.max_turns: conversations cut to their first N user turns (chat self-distillation
regenerates ShareGPT first turns only), and the cache keys of uncut data are unchanged."""

from __future__ import annotations

import pytest

from taps_ray.config.schema import DataConfig
from taps_ray.data.records import Message, Record, first_turns, user_turns
from taps_ray.training.examples import DataSpec


def chat(turns: int) -> Record:
    messages = [Message("system", "be brief")]
    for k in range(turns):
        messages += [Message("user", f"q{k}"), Message("assistant", f"a{k}")]
    return Record("sharegpt/1", "sharegpt", tuple(messages), "chat")


def test_first_turns_keeps_the_first_exchanges_and_the_system_message():
    cut = first_turns(chat(3), 1)
    assert [(m.role, m.content) for m in cut.messages] == [
        ("system", "be brief"), ("user", "q0"), ("assistant", "a0")]
    assert user_turns(first_turns(chat(3), 2)) == ["q0", "q1"]
    assert first_turns(chat(2), 5) == chat(2)
    assert (cut.id, cut.source, cut.category) == ("sharegpt/1", "sharegpt", "chat")


def test_max_turns_cuts_the_draw_and_only_then_enters_the_cache_key():
    whole = DataSpec.from_config(DataConfig(mixture="chat=1.0", total=40, seed=0))
    first = DataSpec.from_config(DataConfig(mixture="chat=1.0", total=40, seed=0, max_turns=1))
    assert "max_turns" not in whole.as_dict()  # caches built before the field keep their keys
    assert first.as_dict()["max_turns"] == 1
    records, counts = first.draw()
    full, _ = whole.draw()
    assert [r.id for r in records] == [r.id for r in full] and sum(counts.values()) == 40
    assert all(len(user_turns(r)) == 1 for r in records)
    assert any(len(user_turns(r)) > 1 for r in full)  # ShareGPT has longer conversations


def test_negative_max_turns_is_one_sentence():
    with pytest.raises(ValueError, match="data.max_turns must be >= 0"):
        DataConfig(max_turns=-1)
