"""Continuous batching: many requests decoded together, one target forward per step.

One decoding thread owns a `BatchedRunner` (one KV cache, one row per running sequence) and
loops over scheduler steps:

    admit     waiting requests join while fewer than max_batch_size run
    prefill   newcomers' prompts, alone and in chunks of prefill_chunk tokens (a bounded amount
              per step while others decode, so running sequences do not stall for long)
    begin     every running sequence proposes its tokens (a draft tree, or its last token)
    forward   ONE batched target forward over all rows
    finish    each sequence verifies, emits its chunk, commits; finished rows leave at once

Requests join and leave between steps. Each sequence keeps its own sampling parameters, seeded
generator, stop ids, budget and (for speculative requests) its own `SpeculativeEngine`, whose
per-sequence logic (`begin_step` / `finish_step`) is the single-sequence engine's own, so every
request decodes exactly as it would alone. A failure inside one sequence fails that request only.

EAGLE-3 heads read aux hidden states, so the batch's forward returns [final | aux] rows (every
other reader takes [:d]). Its aux layers are the constructor's, else the first EAGLE-3
request's (kept from then on); a request whose heads need other layers is refused at submit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from taps_ray.decoding.batch import BatchedRunner
from taps_ray.decoding.batch_cost import BatchSpeedChooser, SequenceSpeed
from taps_ray.decoding.engine import (
    Chunk,
    SpeculativeEngine,
    StepPlan,
    as_ids,
    default_stop_ids,
    finish_reason,
    pick_token,
    sampling_draws,
)
from taps_ray.decoding.sampling import PositionDraws, SamplingParams
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.decoding.verify import clip_at_stop

SPECULATION = ("cost", "sequence", "off")
_END = object()  # a cancelled sequence's stream ends here


class QueueFull(RuntimeError):
    """The scheduler's waiting queue is at max_queue (serving answers 503 + Retry-After)."""


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int = 16  # sequences decoded together (cache rows)
    max_queue: int = 64  # waiting requests beyond which submit raises QueueFull
    prefill_chunk: int = 128  # prompt tokens per prefill forward, and per step while others decode
    # who decides speculation per step: "cost" the batch cost model (each sequence's own
    # policy when it runs alone), "sequence" each sequence's policy as if alone, "off" plain
    speculation: str = "cost"
    idle_wait_s: float = 0.5  # the loop's wake-up interval when nothing runs

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "prefill_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"batch {name} must be >= 1, got {getattr(self, name)}")
        if self.speculation not in SPECULATION:
            raise ValueError(f"batch speculation '{self.speculation}' is unknown; use one of "
                             f"{', '.join(SPECULATION)}")


@dataclass
class SequenceRequest:
    prompt_ids: Sequence[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 16
    stop_ids: set[int] | None = None  # None: the target's EOS ids
    seed: int = 0
    engine: SpeculativeEngine | None = None  # None: plain decoding; else this request's own


@dataclass(frozen=True)
class SchedulerSnapshot:
    batch_size: int  # sequences in the decoding batch (cache rows)
    queue_length: int  # requests waiting to be admitted
    running: int  # admitted sequences: decoding + prefilling
    steps: int  # batched target forwards so far
    tokens: int  # tokens emitted so far (all requests)
    speculative_steps: int  # steps that verified at least one draft token


class SequenceHandle:
    """The caller's side of one submitted request: its chunks, and a way to cancel it."""

    def __init__(self, wake):
        self._queue: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._wake = wake

    def chunks(self, timeout: float | None = None) -> Iterator[Chunk]:
        """The request's chunks as they come (the prefill token first, the last one with
        finish_reason). Re-raises the exception the sequence failed with; TimeoutError when no
        chunk came within `timeout` seconds; ends early after `cancel`."""
        while True:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no tokens within {timeout} s") from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    def cancel(self) -> None:
        """Leave the batch at the next step boundary; the sequence's cache row is freed."""
        self._cancelled.set()
        self._queue.put(_END)
        self._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _put(self, item) -> None:
        self._queue.put(item)


@dataclass
class _Sequence:
    """A request's decoding state inside the scheduler."""

    request: SequenceRequest
    handle: SequenceHandle
    prompt: torch.Tensor  # [P]
    stops: set[int]
    draws: PositionDraws
    tokens: list[int] = field(default_factory=list)  # emitted so far
    prefill: TargetRunner | None = None  # the batch-1 runner of a prompt being prefilled
    feats: list[torch.Tensor] = field(default_factory=list)  # prompt features so far
    plan: StepPlan | None = None  # this step's share of the batched forward
    speed: SequenceSpeed = field(default_factory=SequenceSpeed)  # for the batch's choice

    @property
    def budget(self) -> int:
        return self.request.max_new_tokens - len(self.tokens)


class BatchScheduler:
    """Continuous batching of `SequenceRequest`s over one target, on one decoding thread."""

    def __init__(self, target, settings: BatchSettings | None = None, profile=None,
                 aux_layers: Sequence[int] = ()):
        """`profile`: this machine's CostProfile (batched verify costs, Tb(B, q)), or None to
        learn the costs online. `aux_layers`: the target hidden states every forward returns
        (EAGLE-3 heads' layers; () = taken from the first EAGLE-3 request)."""
        self.target = target
        self.settings = settings or BatchSettings()
        self.aux_layers = tuple(aux_layers)
        self.batch = BatchedRunner(target.model, self.aux_layers)
        self.chooser = BatchSpeedChooser(profile)
        self.default_stops = default_stop_ids(target)
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._prefilling: list[_Sequence] = []
        self._decoding: list[_Sequence] = []  # aligned with the batch's rows
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._steps = self._tokens = self._spec_steps = 0

    # ---- the caller's side (any thread) ----

    def submit(self, request: SequenceRequest) -> SequenceHandle:
        """Queue a request; raises QueueFull beyond max_queue, ValueError on a bad request."""
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
        prompt = as_ids(request.prompt_ids, self.batch.device)
        stops = self.default_stops if request.stop_ids is None else set(request.stop_ids)
        handle = SequenceHandle(self._wake)
        seq = _Sequence(request, handle, prompt, stops,
                        sampling_draws(request.seed))
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batch scheduler is stopped")
            self._check_aux(request.engine)
            if len(self._waiting) >= self.settings.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue "
                                f"{self.settings.max_queue}); retry later")
            self._waiting.append(seq)
            self._cond.notify()
        return handle

    def _check_aux(self, engine: SpeculativeEngine | None) -> None:
        """Adopt the first EAGLE-3 request's aux layers; refuse a request needing others (one
        forward serves every row). Called under the lock, before the request is queued."""
        need = () if engine is None else engine.runner.aux_layers
        if not need or need == self.aux_layers:
            return
        if self.aux_layers:
            raise ValueError(f"this request's EAGLE-3 heads read target layers {list(need)}, but "
                             f"the batch serves layers {list(self.aux_layers)}; use heads "
                             "trained on the same aux_layers")
        self.aux_layers = self.batch.aux_layers = need  # rows already running read [:d] only

    def snapshot(self) -> SchedulerSnapshot:
        with self._cond:
            return SchedulerSnapshot(len(self._decoding), len(self._waiting),
                                     len(self._decoding) + len(self._prefilling), self._steps,
                                     self._tokens, self._spec_steps)

    def start(self) -> BatchScheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="batch-scheduler",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop; requests still waiting or running fail with a RuntimeError."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        gone = [*self._waiting, *self._prefilling, *self._decoding]
        self._waiting.clear()
        self._prefilling, self._decoding = [], []
        self.batch = BatchedRunner(self.target.model, self.aux_layers)
        for seq in gone:
            seq.handle._put(RuntimeError("the batch scheduler stopped before this request ended"))

    def __enter__(self) -> BatchScheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---- the decoding thread ----

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._prefilling
                           or self._decoding):
                    self._cond.wait(self.settings.idle_wait_s)
                if self._stopping:
                    return
            self.step()

    def step(self) -> None:
        """One scheduler iteration: drop cancelled, admit, prefill (bounded), decode one step.
        Runs on the decoding thread (or in a test, with no thread started)."""
        self._drop_cancelled()
        self._admit()
        self._prefill_some()
        if self._decoding:
            try:
                self._decode()
            except Exception as err:  # the shared forward failed: no row can be trusted
                self._fail_batch(err)

    def _drop_cancelled(self) -> None:
        with self._cond:
            self._waiting = deque(s for s in self._waiting if not s.handle.cancelled)
        self._prefilling = [s for s in self._prefilling if not s.handle.cancelled]
        self._leave([i for i, s in enumerate(self._decoding) if s.handle.cancelled])

    def _admit(self) -> None:
        with self._cond:
            while self._waiting and (len(self._prefilling) + len(self._decoding)
                                     < self.settings.max_batch_size):
                self._prefilling.append(self._waiting.popleft())

    def _prefill_some(self) -> None:
        """Up to prefill_chunk prompt tokens while others decode (several short prompts may
        share them); with none decoding, until someone can decode."""
        budget = self.settings.prefill_chunk
        while self._prefilling and (budget > 0 or not self._decoding):
            seq = self._prefilling[0]
            try:
                fed = self._prefill_chunk(seq, budget if self._decoding else None)
            except Exception as err:
                self._prefilling.pop(0)
                seq.handle._put(err)
                continue
            budget -= fed
            if seq.prefill.length == seq.prompt.numel():
                self._prefilling.pop(0)
                self._join(seq)

    def _prefill_chunk(self, seq: _Sequence, budget: int | None) -> int:
        """Feed the next chunk of seq's prompt (at most `budget` tokens); returns its size."""
        if seq.prefill is None:
            seq.prefill = TargetRunner(self.target.model, self.aux_layers)
        done, chunk = seq.prefill.length, self.settings.prefill_chunk
        part = seq.prompt[done : done + min(chunk, budget or chunk)]
        feats = seq.prefill.prefill(part) if done == 0 else seq.prefill.extend(part)
        seq.feats = [*seq.feats, feats] if seq.request.engine is not None else [feats[-1:]]
        return part.numel()

    def _join(self, seq: _Sequence) -> None:
        """The prompt is in: pick the first token, emit it, and give the sequence a row."""
        try:
            root = self._first_token(seq)
        except Exception as err:
            seq.handle._put(err)
            return
        done = self._emit(seq, [root])
        runner, seq.prefill, seq.feats = seq.prefill, None, []
        if not done:
            self.batch.add(runner.cache, runner.length)
            self._decoding.append(seq)

    def _first_token(self, seq: _Sequence) -> int:
        feats, request = torch.cat(seq.feats), seq.request
        if request.engine is None:
            return pick_token(self.batch.logits(feats[-1:]), request.sampling, seq.draws)
        root = request.engine.start(seq.prompt, feats, request.sampling, seq.draws)
        request.engine.strategy.start()
        return root

    def _emit(self, seq: _Sequence, tokens: list[int], stat=None) -> bool:
        """Clip at stop/length, send the chunk; True when the sequence has finished."""
        committed, finished = clip_at_stop(tokens, seq.stops, seq.budget)
        seq.tokens += committed
        reason = finish_reason(seq.tokens, seq.stops) if finished else None
        with self._cond:
            self._tokens += len(committed)
        seq.handle._put(Chunk(committed, stat, reason))
        return finished

    def _decode(self) -> None:
        """begin every row -> one batched forward -> finish every row -> commit, leave."""
        self._leave(self._begin_all())
        if not self._decoding:
            return
        plans = [seq.plan for seq in self._decoding]
        if self.settings.speculation == "cost" and len(plans) > 1:
            plans = self.chooser.cut(plans, [s.request.engine for s in self._decoding])
        start = time.perf_counter()
        feats = self.batch.forward([p.tokens for p in plans], [p.offsets for p in plans],
                                   [p.mask for p in plans])
        # every row reads its root's logits: one LM-head matmul for the batch, not B
        root_logits = self.batch.logits(feats[:, 0])  # [B, V]
        forward_s = time.perf_counter() - start
        keeps, leaving = [], []
        for i, (seq, plan) in enumerate(zip(self._decoding, plans, strict=True)):
            keep, done = self._finish(seq, plan, feats[i, : plan.tokens.numel()], forward_s,
                                      root_logits[i])
            keeps.append(keep)
            if done:
                leaving.append(i)
        self.batch.commit(keeps)
        self.chooser.observe(len(plans), max(p.tokens.numel() for p in plans), forward_s)
        with self._cond:
            self._steps += 1
            self._spec_steps += any(p.tokens.numel() > 1 for p in plans)
        self._leave(leaving)

    def _begin_all(self) -> list[int]:
        """Each row's plan (seq.plan); returns the rows whose proposal failed."""
        modes = self.chooser.modes([s.speed for s in self._decoding],
                                   [s.request.engine is not None for s in self._decoding],
                                   self.settings.speculation)
        failed = []
        for i, (seq, mode) in enumerate(zip(self._decoding, modes, strict=True)):
            try:
                seq.plan = self._begin(seq, mode)
            except Exception as err:
                seq.handle._put(err)
                failed.append(i)
        return failed

    def _begin(self, seq: _Sequence, speculate: bool | None) -> StepPlan:
        root = seq.tokens[-1]
        if seq.request.engine is None:
            return StepPlan.plain(root)
        return seq.request.engine.begin_step(root, speculate)

    def _finish(self, seq: _Sequence, plan: StepPlan, feats, forward_s: float,
                root_logits: torch.Tensor):
        """(cache offsets to keep, finished) of one row; a failure ends only this sequence."""
        request = seq.request
        try:
            if request.engine is None:
                token = pick_token(root_logits[None], request.sampling, seq.draws)
                return plan.keep_root, self._emit(seq, [token])
            out = request.engine.finish_step(plan, feats, request.sampling, seq.draws, seq.stops,
                                             seq.budget, forward_s,
                                             solo=len(self._decoding) == 1,
                                             root_logits=root_logits)
            seq.speed.observe(plan, len(out.committed))
            self.chooser.observe_sequence(plan, len(out.committed))
            return out.keep, self._emit(seq, out.committed, out.stat)
        except Exception as err:
            seq.handle._put(err)
            return plan.keep_root, True

    def _leave(self, rows: list[int]) -> None:
        if not rows:
            return
        self.batch.remove(rows)
        gone = set(rows)
        self._decoding = [s for i, s in enumerate(self._decoding) if i not in gone]

    def _fail_batch(self, err: Exception) -> None:
        for seq in self._decoding:
            seq.handle._put(err)
        self._decoding = []
        self.batch = BatchedRunner(self.target.model, self.aux_layers)
