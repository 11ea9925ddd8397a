"""Live decoding speed of one replica, for `/metrics`: the recent steps of all its engines.

Each step is timed between the chunks a request's stream yields (draft + verify + commit and the
text bookkeeping around them), so tokens/s here is a per-sequence decoding speed: comparable to
`taps-ray generate`'s, and not diluted by idle time or by how many requests run at once.
`Throughput` is the other view: tokens of all the replica's requests together per second of wall
time (what batching raises), with the batch and queue sizes in `ReplicaLoad`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from taps_ray.decoding.adaptive import AdaptivePolicy


@dataclass(frozen=True)
class LiveSnapshot:
    tokens_per_s: float  # committed tokens / seconds of the steps in the window
    tokens_per_step: float  # committed tokens / steps in the window (tau, plain steps included)
    speculating: bool  # the latest step's policy drafts next (False: plain decoding)
    fallbacks: int  # times a guard turned speculation off, since the replica started


@dataclass(frozen=True)
class ReplicaLoad:
    running: int  # sequences decoding now (batching: in the batch)
    queued: int  # requests the replica holds waiting for a batch slot
    tokens_per_s: float  # tokens of all requests together over the recent window


class Throughput:
    """Tokens emitted by all requests of a replica over the last `window_s` seconds."""

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._events: deque[tuple[float, int]] = deque()  # (time, tokens)
        self._tokens = 0
        self._since: float | None = None  # first event: a young replica's window is shorter

    def add(self, tokens: int, now: float) -> None:
        with self._lock:
            self._since = now if self._since is None else self._since
            self._events.append((now, tokens))
            self._tokens += tokens
            self._expire(now)

    def rate(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        with self._lock:
            self._expire(now)
            if self._since is None:
                return 0.0
            span = min(self.window_s, now - self._since)
            return self._tokens / span if span > 0 else 0.0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._tokens -= self._events.popleft()[1]


class LiveStats:
    """Steps of the last `window_s` seconds, across threads (one lock, O(1) per step)."""

    def __init__(self, speculating: bool, window_s: float = 30.0, publish_every_s: float = 1.0):
        self.window_s, self.publish_every_s = window_s, publish_every_s
        self._lock = threading.Lock()
        self._steps: deque[tuple[float, int, float]] = deque()  # (end, committed, seconds)
        self._tokens, self._seconds = 0, 0.0  # sums over _steps
        self._speculating, self._fallbacks = speculating, 0
        self._published = float("-inf")

    def add(self, committed: int, seconds: float, speculating: bool, fallbacks: int,
            now: float) -> None:
        with self._lock:
            self._steps.append((now, committed, seconds))
            self._tokens, self._seconds = self._tokens + committed, self._seconds + seconds
            self._speculating, self._fallbacks = speculating, self._fallbacks + fallbacks
            self._expire(now)

    def due(self, now: float) -> bool:
        """True at most once per `publish_every_s`: when a snapshot should be published."""
        with self._lock:
            if now - self._published < self.publish_every_s:
                return False
            self._published = now
            return True

    def snapshot(self, now: float | None = None) -> LiveSnapshot:
        with self._lock:
            self._expire(time.perf_counter() if now is None else now)
            steps = len(self._steps)
            return LiveSnapshot(
                tokens_per_s=self._tokens / self._seconds if self._seconds > 0 else 0.0,
                tokens_per_step=self._tokens / steps if steps else 0.0,
                speculating=self._speculating,
                fallbacks=self._fallbacks,
            )

    def _expire(self, now: float) -> None:
        while self._steps and self._steps[0][0] < now - self.window_s:
            _, committed, seconds = self._steps.popleft()
            self._tokens, self._seconds = self._tokens - committed, self._seconds - seconds


def speculating(policy) -> bool:
    """Whether an engine with this speed policy drafts its next step (None: plain decoding)."""
    return policy is not None and bool(policy.speculate())


def guard_of(policy):
    """The SpeedGuard of an adaptive policy, else None."""
    return policy.guard if isinstance(policy, AdaptivePolicy) else None


def fallbacks(policy) -> int:
    """Times the policy's guard turned speculation off so far (0 without a guard)."""
    guard = guard_of(policy)
    return guard.switches if guard is not None else 0


class StepMeter:
    """Times one request's steps into LiveStats and publishes snapshots (throttled)."""

    def __init__(self, live: LiveStats, policy,
                 progress: Callable[[LiveSnapshot], None] | None = None):
        self.live, self.policy, self.progress = live, policy, progress
        self.last = time.perf_counter()
        self.seen = fallbacks(policy)

    def chunk(self, tokens: int, step: bool, final: bool) -> None:
        """After each chunk of the stream; `step` False for the prefill token."""
        now = time.perf_counter()
        if step:
            switches = fallbacks(self.policy)
            self.live.add(tokens, now - self.last, speculating(self.policy),
                          switches - self.seen, now)
            self.seen = switches
        self.last = now
        if self.progress is not None and (self.live.due(now) or final):
            self.progress(self.live.snapshot(now))
