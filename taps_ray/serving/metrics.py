"""Prometheus metrics of the service, through `ray.serve.metrics` (Serve adds the deployment,
replica and application tags). Ray exports them on each node's metrics port (`/metrics`) with
the prefix `ray_`: per request (histograms, counters) and live per replica (gauges: decoding
tokens/s and tokens per step over the last 30 s, whether speculation is on; a counter of the
speed guard's fallbacks to plain decoding; the replica's load: sequences in its batch, requests in
its queue, tokens/s of all its requests together, published every second)."""

from __future__ import annotations

import threading
from typing import Protocol

from taps_ray.serving.events import RunStats
from taps_ray.serving.live import LiveSnapshot, ReplicaLoad

_LATENCY_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]
_TAU = [0.5, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 8]
_TOKENS_PER_S = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
_GAP_S = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 4, 8]


class Metrics(Protocol):
    def record(
        self, endpoint: str, status: int, latency_s: float, stats: RunStats | None
    ) -> None: ...

    def live(self, snapshot: LiveSnapshot) -> None: ...

    def load(self, load: ReplicaLoad) -> None: ...


class NullMetrics:
    """For running the HTTP app without Ray (tests)."""

    def record(
        self, endpoint: str, status: int, latency_s: float, stats: RunStats | None
    ) -> None:
        pass

    def live(self, snapshot: LiveSnapshot) -> None:
        pass

    def load(self, load: ReplicaLoad) -> None:
        pass


class ServeMetrics:
    """Request counts and latency; per generation tau, tokens/s, time to first token, routes."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = Counter(
            "taps_requests", "HTTP requests by endpoint and status", tag_keys=("endpoint", "status")
        )
        self.latency = Histogram(
            "taps_request_latency_s", "request latency (s)", _LATENCY_S, tag_keys=("endpoint",)
        )
        self.first_token = Histogram(
            "taps_time_to_first_token_s", "prefill latency (s)", _LATENCY_S, ("strategy",)
        )
        self.inter_token = Histogram(
            "taps_inter_token_latency_s", "seconds between a request's consecutive chunks (one "
            "step; a speculative step's chunk holds several tokens)", _GAP_S, ("strategy",)
        )
        self.tau = Histogram("taps_tau", "acceptance length per request", _TAU, ("strategy",))
        self.tokens_per_s = Histogram(
            "taps_tokens_per_s", "generated tokens/s per request", _TOKENS_PER_S, ("strategy",)
        )
        self.tokens = Counter("taps_generated_tokens", "tokens generated", ("strategy",))
        self.routes = Counter("taps_route_steps", "steps verified per drafter", ("drafter",))
        # pooled tau = increase(taps_committed_tokens) / increase(taps_steps), exact (the
        # histogram's sum is approximated from its buckets)
        self.steps = Counter("taps_steps", "verification steps after prefill", ("strategy",))
        self.committed = Counter("taps_committed_tokens", "tokens the steps emitted", ("strategy",))
        self.live_tokens_per_s = Gauge(
            "taps_live_tokens_per_s", "decoding tokens/s of this replica's recent steps (30 s)"
        )
        self.live_tau = Gauge(
            "taps_live_tokens_per_step", "tokens per step of this replica's recent steps (30 s)"
        )
        self.speculating = Gauge(
            "taps_speculating", "1 while the replica's speed policy drafts, 0 when decoding plainly"
        )
        self.fallbacks = Counter(
            "taps_guard_fallbacks", "times the speed guard turned speculation off (slower)"
        )
        self.batch_size = Gauge("taps_batch_size", "sequences this replica decodes now")
        self.queue_length = Gauge(
            "taps_queue_length", "requests this replica holds waiting for a batch slot"
        )
        self.replica_tokens_per_s = Gauge(
            "taps_replica_tokens_per_s", "tokens/s of all this replica's requests together (30 s)"
        )
        self._fallbacks_seen = 0
        self._lock = threading.Lock()  # decoding threads publish concurrently

    def record(
        self, endpoint: str, status: int, latency_s: float, stats: RunStats | None
    ) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(latency_s, tags={"endpoint": endpoint})
        if stats is None:
            return
        tags = {"strategy": stats.strategy}
        self.first_token.observe(stats.first_token_s, tags=tags)
        for gap in stats.gaps_s:
            self.inter_token.observe(gap, tags=tags)
        if stats.completion_tokens:
            self.tokens.inc(stats.completion_tokens, tags=tags)
        self.tokens_per_s.observe(stats.tokens_per_s, tags=tags)
        if stats.steps:
            self.tau.observe(stats.tau, tags=tags)
            self.steps.inc(stats.steps, tags=tags)
            self.committed.inc(stats.committed, tags=tags)
        for name, steps in stats.routes.items():
            self.routes.inc(steps, tags={"drafter": name})

    def live(self, snapshot: LiveSnapshot) -> None:
        with self._lock:
            self.live_tokens_per_s.set(snapshot.tokens_per_s)
            self.live_tau.set(snapshot.tokens_per_step)
            self.speculating.set(1.0 if snapshot.speculating else 0.0)
            if snapshot.fallbacks > self._fallbacks_seen:
                self.fallbacks.inc(snapshot.fallbacks - self._fallbacks_seen)
                self._fallbacks_seen = snapshot.fallbacks

    def load(self, load: ReplicaLoad) -> None:
        self.batch_size.set(load.running)
        self.queue_length.set(load.queued)
        self.replica_tokens_per_s.set(load.tokens_per_s)
