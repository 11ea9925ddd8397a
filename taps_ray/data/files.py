"""Reading the local copies: JSON Lines (plain or gzip) and JSON arrays, streamed row by row."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from taps_ray.errors import TapsError


def iter_rows(path: Path) -> Iterator[dict]:
    """Rows of a .jsonl, .jsonl.gz or .json (array) file, in file order."""
    if path.name.endswith(".json"):
        yield from _json_array(path)
        return
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield _decode(line, path, number)


def count_lines(path: Path) -> int:
    """Non-blank lines of a JSON Lines file, without decoding any JSON (fast)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as raw:
        return sum(1 for line in raw if line.strip())


def is_json_lines(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _decode(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise TapsError(
            f"line {number} of {path} is not valid JSON; restore the file from its source "
            "(see the SOURCE.md next to it)"
        ) from None
    if not isinstance(row, dict):
        raise TapsError(f"line {number} of {path} is not a JSON object; restore the file")
    return row


def _json_array(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise TapsError(f"{path} is not valid JSON; restore the file from its source") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise TapsError(f"{path} must hold a JSON array of objects; restore the file")
    return rows
