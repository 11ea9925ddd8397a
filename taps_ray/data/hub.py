"""The Hugging Face hub as a fallback source: a fast reachability check and a row loader.

Offline machines must fail at once, so reachability is a 2 s TCP connect done in a daemon
thread (a hung DNS lookup cannot block the caller) and `HF_HUB_OFFLINE=1` skips it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from taps_ray.errors import TapsError

HUB_HOST = ("huggingface.co", 443)


@dataclass(frozen=True)
class HubSource:
    """Where a dataset lives on the hub: `datasets.load_dataset(repo, config, split=split)`."""

    repo: str  # e.g. "openai/gsm8k"
    split: str  # e.g. "test", or "train+test"
    config: str | None = None  # e.g. "main"


def hub_offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """True when huggingface.co:443 accepts a TCP connection within `timeout_s`."""
    if hub_offline_by_env():
        return False
    result: list[bool] = []
    probe = threading.Thread(target=_probe, args=(timeout_s, result), daemon=True)
    probe.start()
    probe.join(timeout_s + 0.5)  # a stuck DNS lookup is abandoned, not waited for
    return bool(result and result[0])


def _probe(timeout_s: float, result: list[bool]) -> None:
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            result.append(True)
    except OSError:
        result.append(False)


def load_hub_rows(source: HubSource, streaming: bool = False) -> Iterable[dict]:
    """Rows of a hub dataset through `datasets`; any failure becomes one TapsError."""
    import datasets  # lazy: heavy, and only needed when the hub is actually used

    try:
        return datasets.load_dataset(
            source.repo, source.config, split=source.split, streaming=streaming
        )
    except Exception as err:  # network, auth, schema: all mean "use a local copy instead"
        raise TapsError(
            f"could not load '{source.repo}' from the Hugging Face hub ({type(err).__name__}: "
            f"{err}); set TAPS_DATA_DIR to a folder with a local copy"
        ) from None
