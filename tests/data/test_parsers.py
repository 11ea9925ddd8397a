"""Row parsers on hand-made rows: ShareGPT normalisation and benchmark field mapping."""

from __future__ import annotations

from taps_ray.data.parsers import (
    parse_gsm8k,
    parse_math500,
    parse_mathinstruct,
    parse_mt_bench,
    parse_sharegpt,
    parse_svamp,
)
from taps_ray.data.records import Message, turn_messages, user_turns


def sharegpt(*turns: tuple[str, str]) -> dict:
    return {"id": "x", "conversations": [{"from": f, "value": v} for f, v in turns]}


def roles(record) -> list[str]:
    return [m.role for m in record.messages]


def test_sharegpt_maps_roles_and_drops_system():
    rec = parse_sharegpt(sharegpt(("system", "*shared*"), ("human", "q"), ("chatgpt", "a")), 7)
    assert rec.id == "sharegpt/7"
    assert rec.messages == (Message("user", "q"), Message("assistant", "a"))


def test_sharegpt_trims_leading_assistant_and_trailing_user():
    row = sharegpt(("gpt", "cont."), ("human", "q"), ("gpt", "a"), ("human", "?"))
    rec = parse_sharegpt(row, 0)
    assert roles(rec) == ["user", "assistant"]


def test_sharegpt_merges_repeated_speaker():
    rec = parse_sharegpt(sharegpt(("human", "part 1"), ("human", "part 2"), ("gpt", "a")), 0)
    assert rec.messages[0] == Message("user", "part 1\n\npart 2")


def test_sharegpt_drops_unusable_conversations():
    assert parse_sharegpt({"id": "e", "conversations": []}, 0) is None
    assert parse_sharegpt(sharegpt(("human", "q"), ("gpt", " ")), 0) is None
    assert parse_sharegpt(sharegpt(("human", "q")), 0) is None
    assert parse_sharegpt(sharegpt(("gpt", "a")), 0) is None


def test_mathinstruct_hub_source_is_shortened():
    row = {"instruction": "i", "output": "o", "source": "data/CoT/gsm_rft.json"}
    assert parse_mathinstruct(row, 3).category == "gsm_rft"
    assert parse_mathinstruct({**row, "source": "aqua"}, 3).category == "aqua"


def test_mt_bench_local_and_hub_columns():
    local = parse_mt_bench({"question_id": 81, "category": "math", "turns": ["a", "b"],
                            "reference": ["r1", "r2"]}, 0)
    hub = parse_mt_bench({"prompt_id": 81, "category": "math", "prompt": ["a", "b"],
                          "reference": ["r1", "r2"]}, 0)
    assert local == hub
    assert local.id == "mt_bench/81" and user_turns(local) == ["a", "b"] and local.reference == "r1"


def test_turn_messages_interleaves_own_answers():
    rec = parse_mt_bench({"question_id": 1, "turns": ["q1", "q2"]}, 0)
    assert turn_messages(rec, 0, []) == (Message("user", "q1"),)
    assert [m.role for m in turn_messages(rec, 1, ["ans"])] == ["user", "assistant", "user"]


def test_benchmark_references():
    assert parse_gsm8k({"question": "q", "answer": "x <<1=1>>\n#### 1,234"}, 5).reference == "1,234"
    math = parse_math500({"problem": "p", "answer": "\\frac12", "subject": "Algebra",
                          "unique_id": "test/algebra/1.json"}, 0)
    assert (math.id, math.category, math.reference) == ("math500/test/algebra/1", "Algebra",
                                                        "\\frac12")
    svamp = parse_svamp({"ID": "chal-9", "Body": "Dan has 3.", "Question": "How many?",
                         "Answer": 3.0, "Type": "Addition"}, 0)
    assert svamp.messages[0].content == "Dan has 3. How many?" and svamp.reference == "3"
