"""The one normalized record type shared by training sources and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Record:
    """One conversation (training) or one prompt (benchmark), whatever file it came from."""

    id: str  # stable id, e.g. "gsm8k/test/17", "mt_bench/81"
    source: str  # registry name: sharegpt, mathinstruct, mt_bench, gsm8k, math500, svamp
    messages: tuple[Message, ...]  # training: user/assistant turns; benchmarks: user turns only
    category: str = ""  # mt_bench category, mathinstruct sub-source, math500 subject, svamp type
    reference: str = ""  # reference answer if any (mt_bench: the first turn's)


def user_turns(record: Record) -> list[str]:
    """The user messages of a record, in order (MT-Bench: two, other benchmarks: one)."""
    return [m.content for m in record.messages if m.role == "user"]


def first_turns(record: Record, n: int) -> Record:
    """`record` cut before its (n+1)-th user message (the first n exchanges; the system message
    and anything before the first user turn are kept)."""
    seen, keep = 0, []
    for message in record.messages:
        if message.role == "user":
            seen += 1
            if seen > n:
                break
        keep.append(message)
    return Record(record.id, record.source, tuple(keep), record.category)


def turn_messages(record: Record, turn: int, answers: Sequence[str]) -> tuple[Message, ...]:
    """The conversation that asks user turn `turn` (0-based) after the model's own `answers`.

    MT-Bench asks its second question after the model's first answer, so turn k needs the
    k earlier answers interleaved with the earlier questions.
    """
    questions = user_turns(record)
    if not 0 <= turn < len(questions) or len(answers) < turn:
        raise ValueError(f"turn {turn} needs {turn} answers; {record.id} has {len(questions)}")
    history: list[Message] = []
    for question, answer in zip(questions[:turn], answers[:turn], strict=True):
        history += [Message("user", question), Message("assistant", answer)]
    return (*history, Message("user", questions[turn]))
