"""The serving core without Ray: models loaded once, requests checked against them, decoded.

`prepare` turns a parsed request into a `Job` (or an `ApiError`): everything that can be wrong
with a request is found there, before any response byte is sent. `run` decodes a job as a
stream of `Event`s; it is synchronous and meant to run in a worker thread. Each job gets its
own engine (cheap to build: the models are shared), so concurrent jobs share no decoding state,
and its own speed policy (adaptive by default), which starts from the plain decoding speed the
replica last measured.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from taps_ray.decoding.adaptive import make_policy
from taps_ray.decoding.engine import Chunk, SpeculativeEngine, default_stop_ids, stream_plain
from taps_ray.decoding.sampling import SamplingParams
from taps_ray.decoding.strategies import strategy_names
from taps_ray.errors import TapsError
from taps_ray.serving.config import PLAIN, ServeConfig, missing_folders
from taps_ray.serving.live import LiveSnapshot, LiveStats, StepMeter, guard_of
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
    first_token_s: float = 0.0  # time to the first token (prefill)
    wall_s: float = 0.0
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


class CompletionService:
    """One replica's models and the rules requests are checked against."""

    def __init__(self, config: ServeConfig, target, drafters: list, plain_reason: str = "",
                 profile=None):
        """`profile`: this machine's CostProfile for the adaptive policy (None: online)."""
        self.config, self.target, self.profile = config, target, profile
        self.drafters = {d.meta.name: d for d in drafters}
        if len(self.drafters) != len(drafters):
            raise TapsError("drafters must have distinct names (taps.json 'name'); rename one")
        self.default_strategy = PLAIN if plain_reason or not drafters else config.strategy
        self.plain_reason = plain_reason  # why drafters were skipped ("" if they were not)
        self.context = config.max_context or _model_context(target)
        self.stop_ids = default_stop_ids(target)
        self.failures = 0  # consecutive internal errors
        self.live = LiveStats(speculating=self.default_strategy != PLAIN)
        self.plain_rate: float | None = None  # plain tokens/s a guard measured last (a prior)

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
            ) -> Iterator[Event]:
        """Decode `job`; the last event carries the finish reason and the stats. `progress`
        receives the replica's live speed now and then (and after the last step)."""
        start = time.perf_counter()
        stats = RunStats(len(job.prompt_ids), job.strategy)
        meter = StepMeter(self.live, job.policy, progress)
        tokens: list[int] = []
        text = StopText(job.request.stop)
        for chunk in self._chunks(job):
            if not tokens:
                stats.first_token_s = time.perf_counter() - start
            step = bool(tokens)
            tokens += chunk.tokens
            stats.add(chunk, job.route_names)
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


def _model_context(target) -> int:
    return int(getattr(target.model.config, "max_position_embeddings", 0) or 2048)


def load_service(config: ServeConfig, log: Callable[[str], None] = print) -> CompletionService:
    """Load the target and drafters of a resolved config (once per replica).

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
        return CompletionService(config, target, [], reason, profile)
    drafters = [load_drafter_spec(path, target) for path in config.drafters]
    log(f"serving {config.served_name} with drafters "
        f"{', '.join(d.meta.name for d in drafters) or '(none)'}, strategy {config.strategy}, "
        f"policy {config.policy or 'adaptive'}")
    return CompletionService(config, target, drafters, profile=profile)
