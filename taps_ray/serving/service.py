"""The serving core without Ray: models loaded once, requests checked against them, decoded.

`prepare` turns a parsed request into a `Job` (or an `ApiError`): everything that can be wrong
with a request is found there, before any response byte is sent. `run` starts a job and returns
a `Decoding`: a stream of `Event`s, synchronous and meant to be read in a worker thread, that any
thread may cancel. Each job gets its own engine (cheap to build: the models are shared) and its
own speed policy (adaptive by default), which starts from the plain decoding speed the replica
last measured.

Two modes (`ServeConfig.batching`). `continuous`: the replica owns one `BatchScheduler`; `run`
submits the job to it (a 503 when its queue is full) and reads the sequence's chunks; all running
sequences advance together, one batched step at a time. `off`: each job decodes alone in the
thread that reads it. Either way the chunks become Events in one place (`_events`).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from taps_ray.decoding.adaptive import make_policy
from taps_ray.decoding.engine import Chunk, SpeculativeEngine, default_stop_ids, stream_plain
from taps_ray.decoding.features import aux_layers_for
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import strategy_names
from taps_ray.errors import TapsError
from taps_ray.serving.config import PLAIN, ServeConfig, missing_folders
from taps_ray.serving.events import Decoding, Event, RunStats
from taps_ray.serving.live import (
    LiveSnapshot,
    LiveStats,
    ReplicaLoad,
    StepMeter,
    Throughput,
    guard_of,
)
from taps_ray.serving.protocol import ApiError, GenerationRequest, bad
from taps_ray.serving.text import StopText

UNHEALTHY_AFTER = 3  # consecutive internal failures before check_health fails


@dataclass
class Job:
    """A request that passed every check, ready to decode."""

    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    seed: int
    strategy: str  # "none" = plain decoding
    route_names: list[str]  # name of each engine drafter index (for route counts)
    engine: SpeculativeEngine | None  # None for plain decoding

    @property
    def policy(self):
        return self.engine.policy if self.engine is not None else None


class CompletionService:
    """One replica's models, the rules requests are checked against, and (batching) its batch.

    With batching, `start()` starts the batch's decoding thread (load_service does) and
    `close()` stops it; as a context manager it does both.
    """

    def __init__(self, config: ServeConfig, target, drafters: list, plain_reason: str = "",
                 profile=None):
        """`profile`: this machine's CostProfile for the adaptive policy (None: online)."""
        self.config, self.target, self.profile = config, target, profile
        self.drafters = {d.meta.name: d for d in drafters}
        if len(self.drafters) != len(drafters):
            raise TapsError("drafters must have distinct names (taps.json 'name'); rename one")
        # one target forward serves every head: EAGLE-3 heads must agree on their aux layers,
        # refused here at start rather than per request
        self.aux_layers = aux_layers_for(drafters)
        self.default_strategy = PLAIN if plain_reason or not drafters else config.strategy
        self.plain_reason = plain_reason  # why drafters were skipped ("" if they were not)
        self.context = config.max_context or _model_context(target)
        self.stop_ids = default_stop_ids(target)
        self.failures = 0  # consecutive internal errors
        self.live = LiveStats(speculating=self.default_strategy != PLAIN)
        self.plain_rate: float | None = None  # plain tokens/s a guard measured last (a prior)
        self.throughput = Throughput()
        self._active = 0  # batching off: jobs decoding now
        self._lock = threading.Lock()
        self.scheduler = self._scheduler() if config.batched else None

    def _scheduler(self):
        from taps_ray.decoding.scheduler import BatchScheduler, BatchSettings

        config = self.config
        settings = BatchSettings(max_batch_size=config.max_batch_size,
                                 max_queue=config.batch_queue,
                                 prefill_chunk=config.prefill_chunk,
                                 speculation=config.batch_speculation)
        return BatchScheduler(self.target, settings, profile=self.profile,
                              aux_layers=self.aux_layers)

    def start(self) -> CompletionService:
        """Start the batch's decoding thread (nothing to start without batching)."""
        if self.scheduler is not None:
            self.scheduler.start()
        return self

    def close(self) -> None:
        """Stop the batch (requests still in it end with an error)."""
        if self.scheduler is not None:
            self.scheduler.stop()

    def __enter__(self) -> CompletionService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> ReplicaLoad:
        """What the replica is doing now (for the batch size / queue gauges)."""
        if self.scheduler is None:
            return ReplicaLoad(self._active, 0, self.throughput.rate())
        snap = self.scheduler.snapshot()  # running: in the batch, decoding or prefilling
        return ReplicaLoad(snap.running, snap.queue_length, self.throughput.rate())

    @property
    def model_name(self) -> str:
        return self.config.served_name

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "taps-ray",
            "target": self.config.target,
            "strategy": self.default_strategy,
            "policy": self.config.policy or "adaptive",
            "drafters": list(self.drafters),
            "strategies": [PLAIN, *strategy_names()] if self.drafters else [PLAIN],
            "max_tokens_limit": self.config.max_tokens_limit,
            "context": self.context,
        }

    def prepare(self, request: GenerationRequest) -> Job:
        """All checks that need the models; raises ApiError naming the bad field."""
        if request.model not in (None, self.model_name, self.config.target):
            raise ApiError(404, f"model '{request.model}' is not served here; use "
                           f"'{self.model_name}' (see /v1/models)", "model", "model_not_found")
        max_tokens = self._max_tokens(request)
        prompt_ids = self._prompt_ids(request, max_tokens)
        strategy = request.strategy or self.default_strategy
        names = self._drafter_names(request, strategy)
        try:
            sampling = SamplingParams(request.temperature, request.top_p, request.top_k)
        except ValueError as err:
            raise bad("temperature", str(err)) from None
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        engine, route_names = self._engine(strategy, names)
        return Job(request, prompt_ids, max_tokens, sampling, seed, strategy, route_names, engine)

    def run(self, job: Job, progress: Callable[[LiveSnapshot], None] | None = None
            ) -> Decoding:
        """Start decoding `job` (batching: it joins the replica's batch now, or ApiError 503 when
        the batch's queue is full). The last event carries the finish reason and the stats.
        `progress` receives the replica's live speed now and then (and after the last step)."""
        start, cancelled = time.perf_counter(), threading.Event()
        if self.scheduler is None:
            chunks = self._chunks(job)
            events = self._events(job, chunks, progress, start, cancelled, chunks.close)
            return Decoding(events, cancelled, _nothing)
        handle = self._submit(job)
        events = self._events(job, handle.chunks(), progress, start, cancelled, handle.cancel)
        return Decoding(events, cancelled, handle.cancel)

    def _events(self, job: Job, chunks: Iterator[Chunk], progress, start: float,
                cancelled: threading.Event, finish: Callable[[], None]) -> Iterator[Event]:
        """Chunks -> Events (text cut at stop strings, stats). `finish` runs however it ends: a
        stop string, a cancel or a reader that goes away frees the sequence at once."""
        stats = RunStats(len(job.prompt_ids), job.strategy)
        meter = StepMeter(self.live, job.policy, progress)
        tokens: list[int] = []
        text, last = StopText(job.request.stop), start
        self._count(1)
        try:
            for chunk in chunks:
                if cancelled.is_set():
                    return
                now = time.perf_counter()
                if tokens:
                    stats.gaps_s.append(now - last)
                else:
                    stats.first_token_s = now - start
                step, last = bool(tokens), now
                tokens += chunk.tokens
                stats.add(chunk, job.route_names)
                self.throughput.add(len(chunk.tokens), now)
                decoded = self.target.tokenizer.decode(tokens, skip_special_tokens=True)
                delta, stopped = text.feed(decoded, final=chunk.finish_reason is not None)
                reason = "stop" if stopped else chunk.finish_reason
                meter.chunk(len(chunk.tokens), step, final=reason is not None)
                if reason is not None:
                    stats.wall_s = time.perf_counter() - start
                    self._remember(job.policy)
                    yield Event(delta, reason, stats)
                    return
                if delta:
                    yield Event(delta)
        finally:
            finish()
            self._count(-1)

    def _count(self, delta: int) -> None:
        with self._lock:
            self._active += delta

    def _submit(self, job: Job):
        """The job's SequenceHandle in the batch; ApiError 503 when the queue is full."""
        from taps_ray.decoding.scheduler import QueueFull, SequenceRequest

        request = SequenceRequest(job.prompt_ids, job.sampling, job.max_tokens, self.stop_ids,
                                  job.seed, job.engine)
        try:
            return self.scheduler.submit(request)
        except QueueFull:
            wait = math.ceil(self.config.retry_after_s)
            raise ApiError(503, f"this replica's batch and queue are full; retry in {wait} s",
                           None, "server_busy") from None

    def note_result(self, ok: bool) -> None:
        self.failures = 0 if ok else self.failures + 1

    def check_health(self) -> None:
        if self.failures >= UNHEALTHY_AFTER:
            raise RuntimeError(f"{self.failures} requests in a row failed inside the replica")

    def _max_tokens(self, request: GenerationRequest) -> int:
        limit = self.config.max_tokens_limit
        max_tokens = request.max_tokens or self.config.default_max_tokens
        if max_tokens > limit:
            raise bad("max_tokens", f"max_tokens must be <= {limit} on this server, got "
                      f"{max_tokens}")
        return max_tokens

    def _prompt_ids(self, request: GenerationRequest, max_tokens: int) -> list[int]:
        param = "messages" if request.kind == "chat" else "prompt"
        try:
            ids = self._tokenize(request)
        except Exception as err:  # the chat template or tokenizer refused this input
            raise bad(param, f"could not tokenize '{param}': {err}") from None
        if not ids:
            raise bad(param, f"'{param}' renders to no tokens; send some text")
        vocab = self.target.model.config.vocab_size
        if any(t >= vocab for t in ids):
            raise bad(param, f"token ids in '{param}' must be < {vocab} (the vocabulary size)")
        if len(ids) + max_tokens > self.context:
            raise bad(param, f"the prompt is {len(ids)} tokens; with max_tokens {max_tokens} "
                      f"it exceeds the context of {self.context} tokens: shorten the prompt "
                      "or lower max_tokens", "context_length_exceeded")
        return ids

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        from taps_ray.data.render import render_prompt

        tokenizer = self.target.tokenizer
        if request.kind == "chat":
            return render_prompt(tokenizer, request.messages)
        if isinstance(request.prompt, tuple):
            return list(request.prompt)
        return list(tokenizer(request.prompt)["input_ids"])

    def _drafter_names(self, request: GenerationRequest, strategy: str) -> list[str]:
        if strategy != PLAIN and strategy not in strategy_names():
            valid = ", ".join([PLAIN, *strategy_names()])
            raise bad("strategy", f"unknown strategy '{strategy}'; valid: {valid}")
        if strategy != PLAIN and not self.drafters:
            reason = f" ({self.plain_reason})" if self.plain_reason else ""
            raise bad("strategy", f"this server has no drafters loaded{reason}; only strategy "
                      f"'{PLAIN}' (plain decoding) is available")
        names = list(request.drafters or self.drafters)
        unknown = [n for n in names if n not in self.drafters]
        if unknown:
            valid = ", ".join(self.drafters) or "none loaded"
            raise bad("drafters", f"unknown drafter '{unknown[0]}'; loaded: {valid}")
        return names

    def _engine(self, strategy: str, names: list[str]) -> tuple[SpeculativeEngine | None, list]:
        if strategy == PLAIN:
            return None, []
        if strategy == "single":
            names = names[:1]  # single drafts with one: the first of the request's subset
        options = self.config.strategy_options if strategy == self.config.strategy else {}
        drafters = [self.drafters[n] for n in names]
        try:
            engine = SpeculativeEngine(
                self.target, drafters, self.config.tree, strategy, policy=self._policy(),
                **options,
            )
        except TapsError as err:
            raise bad("strategy", str(err)) from None
        return engine, ["average"] if strategy == "average" else names

    def _policy(self):
        """A fresh policy per request; its guard starts from the plain speed measured last."""
        policy = make_policy(self.config.policy or "adaptive", self.profile)
        guard = guard_of(policy)
        if guard is not None and self.plain_rate:
            guard.plain_rate = self.plain_rate
        return policy

    def _remember(self, policy) -> None:
        guard = guard_of(policy)
        if guard is not None and guard.plain_rate:
            self.plain_rate = guard.plain_rate

    def _chunks(self, job: Job) -> Iterator[Chunk]:
        args = (job.prompt_ids, job.sampling, job.max_tokens, self.stop_ids, job.seed)
        if job.engine is None:
            return stream_plain(self.target, *args)
        return job.engine.stream(*args)


def _nothing() -> None:
    """An unbatched job has no batch to leave: its events stop at the next chunk."""


def _model_context(target) -> int:
    return int(getattr(target.model.config, "max_position_embeddings", 0) or 2048)


def load_service(config: ServeConfig, log: Callable[[str], None] = print) -> CompletionService:
    """Load the target and drafters of a resolved config (once per replica); with batching,
    the returned service's batch is running (close() stops it).

    With `missing_drafters: plain`, missing drafter folders are logged and the replica serves
    plain decoding; a restart picks the drafters up once they exist.
    """
    from taps_ray.decoding.prompt_lookup import load_drafter_spec
    from taps_ray.models.target import load_target
    from taps_ray.serving.policy import machine_profile

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    target = load_target(config.target, device=config.device)
    missing = missing_folders(config.drafters)
    if missing and config.missing_drafters == "error":
        raise TapsError(f"drafter folder '{missing[0]}' does not exist; train it or fix the path")
    # a profile the user named is always checked; this machine's is read when it will be used
    speculates = (config.policy or "adaptive") == "adaptive" and config.drafters and not missing
    profile = machine_profile(target, config.profile, log) if config.profile or speculates \
        else None
    if missing:
        reason = f"drafter folders missing: {', '.join(missing)}"
        log(f"{reason}; serving plain decoding (strategy {PLAIN}) until they exist "
            "(restart the app to pick them up)")
        return CompletionService(config, target, [], reason, profile).start()
    drafters = [load_drafter_spec(path, target) for path in config.drafters]
    log(f"serving {config.served_name} with drafters "
        f"{', '.join(d.meta.name for d in drafters) or '(none)'}, strategy {config.strategy}, "
        f"policy {config.policy or 'adaptive'}, batching {config.batching}")
    return CompletionService(config, target, drafters, profile=profile).start()
