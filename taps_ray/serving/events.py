"""What decoding a request yields: `Event`s (text deltas; the last carries the finish reason and
the `RunStats`, whose `usage()` is the response's usage object), read from a `Decoding` that any
thread may cancel."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from taps_ray.decoding.engine import Chunk
from taps_ray.serving.config import PLAIN


@dataclass
class RunStats:
    """Counts of one decoded request; `usage()` is the response's usage object."""

    prompt_tokens: int
    strategy: str
    completion_tokens: int = 0
    steps: int = 0  # target forwards after prefill
    committed: int = 0  # tokens those steps emitted (accepted + bonus)
    drafted: int = 0  # draft tokens verified
    speculative_steps: int = 0  # steps that verified a draft (the rest: the policy's plain steps)
    accepted: int = 0  # draft tokens accepted
    routes: Counter = field(default_factory=Counter)  # drafter name -> steps it was verified
    first_token_s: float = 0.0  # time to the first token (queue + prefill)
    wall_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)  # seconds between consecutive chunks
    prefilled: bool = False  # the first chunk (prefill token) was seen

    @property
    def tau(self) -> float:
        return self.committed / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def add(self, chunk: Chunk, route_names: list[str]) -> None:
        self.completion_tokens += len(chunk.tokens)
        if not self.prefilled:
            self.prefilled = True
            return  # the prefill token is not a step
        self.steps += 1
        self.committed += len(chunk.tokens)
        if chunk.stat is None:
            return
        self.drafted += chunk.stat.verify_tokens - 1
        self.accepted += chunk.stat.accepted
        self.speculative_steps += chunk.stat.speculative
        route = chunk.stat.route
        if not chunk.stat.speculative:
            self.routes[PLAIN] += 1  # the speed policy decoded this step plainly
        else:
            self.routes[route_names[route] if route is not None else self.strategy] += 1

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "tau": round(self.tau, 4),
            "steps": self.steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "speculative_steps": self.speculative_steps,
            "routes": dict(self.routes),
        }


@dataclass
class Event:
    text: str  # new text since the last event
    finish_reason: str | None = None  # set on the last event: "stop" or "length"
    stats: RunStats | None = None  # set on the last event


class Decoding:
    """A started job: iterate for its Events (in one thread); `cancel()` from any thread ends it:
    a batched sequence leaves the batch at the next step (its cache freed) and the events stop;
    an unbatched one stops after its current step."""

    def __init__(self, events: Iterator[Event], cancelled: threading.Event,
                 leave: Callable[[], None]):
        self.events, self.cancelled, self._leave = events, cancelled, leave

    def __iter__(self) -> Iterator[Event]:
        return self.events

    def cancel(self) -> None:
        self.cancelled.set()
        self._leave()
