"""User-facing errors: one sentence naming the field and the fix; the CLI exits 2 on them."""

from __future__ import annotations


class TapsError(Exception):
    """An error caused by the user's input or environment, printed without a traceback."""

    exit_code = 2
