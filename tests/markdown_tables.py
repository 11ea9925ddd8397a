"""Markdown tables of the docs as data, and numbers checked at the precision they are shown."""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
SOURCE = re.compile(r"^Source: `([^`]+)`")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    line: int  # 1-based line of the header in the file
    source: str | None  # the path of the "Source: `path` ..." line right after the table

    def cells(self):
        """(row label, column label, cell text) of every body cell but the row label."""
        for row in self.rows:
            for col, cell in zip(self.header[1:], row[1:], strict=True):
                yield row[0], col, cell


def tables(text: str) -> list[Table]:
    """Every pipe table of a markdown text, with the source named on the line after it."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if _is_row(lines[i]) and i + 1 < len(lines) and re.match(r"^\|[\s|:-]+\|$", lines[i + 1]):
            start, i = i, i + 2
            rows = []
            while i < len(lines) and _is_row(lines[i]):
                rows.append(split_row(lines[i]))
                i += 1
            after = next((ln for ln in lines[i:i + 3] if ln.strip()), "")
            match = SOURCE.match(after)
            out.append(Table(split_row(lines[start]), rows, start + 1,
                             match[1] if match else None))
        else:
            i += 1
    return out


def split_row(line: str) -> list[str]:
    return [plain(c) for c in line.strip().strip("|").split("|")]


def plain(cell: str) -> str:
    """A cell without markdown emphasis or code marks."""
    return cell.replace("**", "").replace("`", "").strip()


def numbers(cell: str) -> list[str]:
    """The numbers of a cell as written ("24.20 (0.98x)" -> ["24.20", "0.98"])."""
    return [n for n in NUMBER.findall(cell)]


def shown_equal(shown: str, value: float) -> bool:
    """`value` rounds to `shown` at the precision it is written with (half a last digit)."""
    digits = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown.replace(",", "")) - value) <= 0.5 * 10.0**-digits + 1e-9


def _is_row(line: str) -> bool:
    return line.startswith("|") and line.rstrip().endswith("|")
