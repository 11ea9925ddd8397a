"""Prometheus metrics of the service, through `ray.serve.metrics` (Serve adds the deployment,
replica and application tags). Ray exports them on each node's metrics port (`/metrics`)."""

from __future__ import annotations

from typing import Protocol

from taps_ray.serving.service import RunStats

_LATENCY_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]
_TAU = [0.5, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 8]
_TOKENS_PER_S = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


class Metrics(Protocol):
    def record(
        self, endpoint: str, status: int, latency_s: float, stats: RunStats | None
    ) -> None: ...


class NullMetrics:
    """For running the HTTP app without Ray (tests)."""

    def record(
        self, endpoint: str, status: int, latency_s: float, stats: RunStats | None
    ) -> None:
        pass


class ServeMetrics:
    """Request counts and latency; per generation tau, tokens/s, time to first token, routes."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter(
            "taps_requests", "HTTP requests by endpoint and status", tag_keys=("endpoint", "status")
        )
        self.latency = Histogram(
            "taps_request_latency_s", "request latency (s)", _LATENCY_S, tag_keys=("endpoint",)
        )
        self.first_token = Histogram(
            "taps_time_to_first_token_s", "prefill latency (s)", _LATENCY_S, ("strategy",)
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

    def record(
        self, endpoint: str, status: int, latency_s: float, stats: RunStats | None
    ) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(latency_s, tags={"endpoint": endpoint})
        if stats is None:
            return
        tags = {"strategy": stats.strategy}
        self.first_token.observe(stats.first_token_s, tags=tags)
        if stats.completion_tokens:
            self.tokens.inc(stats.completion_tokens, tags=tags)
        self.tokens_per_s.observe(stats.tokens_per_s, tags=tags)
        if stats.steps:
            self.tau.observe(stats.tau, tags=tags)
            self.steps.inc(stats.steps, tags=tags)
            self.committed.inc(stats.committed, tags=tags)
        for name, steps in stats.routes.items():
            self.routes.inc(steps, tags={"drafter": name})
