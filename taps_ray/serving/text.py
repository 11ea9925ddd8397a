"""Incremental text of a growing token sequence, cut before the first stop string.

Streaming must never retract text it already sent, so `StopText` holds back a tail that could
still become a stop string, and a trailing U+FFFD (the tokenizer's stand-in for a UTF-8
character whose remaining bytes are in the next token).
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the tail of `text` that must wait for more tokens before it can be sent."""
    partial = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), partial, -1):
            if stop.startswith(text[-k:]):
                partial = k
                break
    unfinished = len(text) - len(text.rstrip(REPLACEMENT))
    return max(partial, unfinished)


class StopText:
    """Feed the full decoded text after each chunk; get the new text that is safe to send."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.sent = 0  # characters of the text already handed out

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """(delta, stopped): `stopped` means a stop string was found and generation must end."""
        cut = first_stop(text, self.stops)
        if cut is not None:
            return self._take(text, max(cut, self.sent)), True
        end = len(text) if final else len(text) - held_back(text, self.stops)
        return self._take(text, max(end, self.sent)), False

    def _take(self, text: str, end: int) -> str:
        delta, self.sent = text[self.sent : end], end
        return delta
