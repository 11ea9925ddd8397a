"""Row parsers: one raw row (a dict from a local file or a hub dataset) -> one Record or None.

Local copies and hub datasets share each parser; where their column names differ
(MT-Bench `turns` vs `prompt`) the parser accepts both. Parsers are pure functions of
(row, index), so a count of rows and a count of records agree whenever a parser keeps every row.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from taps_ray.data.records import Message, Record

# ShareGPT speaker names -> our roles; anything else (e.g. "system": a "shared from
# TypingMind" banner in this dump) is dropped.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
}


def parse_sharegpt(row: dict, index: int) -> Record | None:
    """A ShareGPT conversation as alternating user/assistant turns, or None if unusable."""
    turns = [(_SHAREGPT_ROLES.get(t.get("from", "")), t.get("value") or "") for t in
             row.get("conversations") or []]
    kept = [(role, text.strip()) for role, text in turns if role is not None]
    if any(not text for _, text in kept):
        return None  # an empty turn: the conversation is broken, not worth repairing
    messages = _trim_ends(_merge_repeats(kept))
    if not messages:
        return None
    return Record(id=f"sharegpt/{index}", source="sharegpt", messages=messages)


def _merge_repeats(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Two consecutive turns of one speaker are one message split in two; join them.
    merged: list[tuple[str, str]] = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n\n" + text)
        else:
            merged.append((role, text))
    return merged


def _trim_ends(turns: list[tuple[str, str]]) -> tuple[Message, ...]:
    # The cleaned split cuts long chats into pieces, so ~1/3 of them open with the
    # assistant: drop that opening turn (as EAGLE does) and any trailing unanswered question.
    start = next((i for i, (role, _) in enumerate(turns) if role == "user"), len(turns))
    body = turns[start:]
    if body and body[-1][0] == "user":
        body = body[:-1]
    return tuple(Message(role, text) for role, text in body)


def parse_mathinstruct(row: dict, index: int) -> Record:
    """An instruction/output pair; category = sub-source (gsm8k, math, aqua, mathqa, ...)."""
    return Record(
        id=f"mathinstruct/{index}",
        source="mathinstruct",
        messages=(Message("user", row["instruction"]), Message("assistant", row["output"])),
        category=_short_source(str(row.get("source", ""))),
    )


def _short_source(source: str) -> str:
    # The hub copy names sub-sources by file ("data/CoT/gsm_rft.json"); keep the stem.
    return PurePosixPath(source).stem if "/" in source else source


def parse_mt_bench(row: dict, index: int) -> Record:
    """Two user turns; the second is asked after the model's own first answer."""
    turns = row.get("turns") or row.get("prompt") or []
    qid = row.get("question_id", row.get("prompt_id", index))
    references = row.get("reference") or []
    return Record(
        id=f"mt_bench/{qid}",
        source="mt_bench",
        messages=tuple(Message("user", text) for text in turns),
        category=str(row.get("category", "")),
        reference=str(references[0]) if references else "",
    )


def parse_gsm8k(row: dict, index: int) -> Record:
    """A test question; the reference is the number after `####` in the worked answer."""
    answer = str(row.get("answer", ""))
    return Record(
        id=f"gsm8k/test/{index}",
        source="gsm8k",
        messages=(Message("user", row["question"]),),
        reference=answer.rsplit("####", 1)[-1].strip() if "####" in answer else "",
    )


def parse_math500(row: dict, index: int) -> Record:
    """A MATH problem; id from `unique_id` (test/precalculus/807.json -> math500/test/...)."""
    unique = str(row.get("unique_id") or f"test/{index}")
    return Record(
        id=f"math500/{unique.removesuffix('.json')}",
        source="math500",
        messages=(Message("user", row["problem"]),),
        category=str(row.get("subject", "")),
        reference=str(row.get("answer", "")),
    )


def parse_svamp(row: dict, index: int) -> Record:
    """A word problem; the question text is Body + " " + Question."""
    question = f"{str(row['Body']).strip()} {str(row['Question']).strip()}"
    return Record(
        id=f"svamp/{row.get('ID', index)}",
        source="svamp",
        messages=(Message("user", question),),
        category=str(row.get("Type", "")),
        reference=_number_text(row.get("Answer")),
    )


def _number_text(value: object) -> str:
    # SVAMP answers are floats: 51.0 -> "51", 2.5 -> "2.5".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)
