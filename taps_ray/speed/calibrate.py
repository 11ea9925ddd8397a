"""Measure a cost profile on this machine through the decoding code's own paths.

Every timing is a median of `repeats` runs after `warmup` runs, synchronised on CUDA. Caches are
rewound after each run so every run sees the same KV length:

    T1      TargetRunner.step + the LM-head row + argmax, after a prefill of `ref_kv_len` tokens
    Tv(n)   tree mask/positions of an n-token tree, TargetRunner.verify, the root's LM-head row
            and the tree's child lists (what greedy verification reads), at each KV length
    rounds  DrafterSession.draft_rounds driven as `draft` drives it, at each frontier width
    Tb(B,q) BatchedRunner.forward of B rows (KV `ref_kv_len` each) of q tokens each (a tree
            per row) and the B roots' LM-head rows: continuous batching's verify cost
    others  prompt lookup's `draft`, route scoring and trie merging of default-shape trees, and
            the engine's per-step bookkeeping from a short real speculative run
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import torch

from taps_ray.config.schema import TreeConfig
from taps_ray.decoding.tree import (
    DraftTree,
    children_lists,
    merge_trees,
    select_tree,
    tree_attention_mask,
    tree_position_offsets,
)
from taps_ray.errors import TapsError
from taps_ray.speed.profile import CostProfile, HardwareKey, machine_key

Progress = Callable[[str], None]
_EMPTY = torch.empty(0, dtype=torch.long)  # commit nothing: the cache returns to its prefix


@dataclass(frozen=True)
class CalibrationSettings:
    kv_lens: tuple[int, ...] = (128, 512)  # KV lengths Tv(n) is measured at
    ref_kv_len: int = 256  # KV length of T1 and of the drafters' caches
    n_list: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # verify sizes
    widths: tuple[int, ...] = (1, 2, 4, 8, 10)  # drafter frontier widths (tree top_k values)
    repeats: int = 15  # timed runs per measurement (the median is kept)
    warmup: int = 3  # untimed runs first (allocator, oneDNN/cuBLAS plans)
    draft_depth: int = 3  # expansion rounds per timed draft
    overhead_trees: int = 2  # trees scored / merged per overhead timing
    step_tokens: int = 16  # new tokens of the real run that measures per-step bookkeeping
    seed: int = 0  # random token ids and synthetic trees
    batch_rows: tuple[int, ...] = (1, 2, 4, 8, 16)  # batch sizes B of Tb(B, q)
    batch_q: tuple[int, ...] = (1, 2, 4, 8, 16)  # tokens per row q of Tb(B, q)

    def __post_init__(self) -> None:
        for name in ("ref_kv_len", "repeats", "draft_depth", "overhead_trees", "step_tokens"):
            if int(getattr(self, name)) < 1:
                raise TapsError(f"calibration {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise TapsError(f"calibration warmup must be >= 0, got {self.warmup}")
        for name in ("kv_lens", "n_list", "widths", "batch_rows", "batch_q"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise TapsError(f"calibration {name} must be a non-empty list of integers >= 1, "
                                f"got {list(values)}")

    @classmethod
    def quick(cls) -> CalibrationSettings:
        """A few seconds on a tiny model: smoke tests, not numbers to use."""
        return cls(kv_lens=(16, 48), ref_kv_len=32, n_list=(1, 2, 4, 8), widths=(1, 2, 4),
                   repeats=3, warmup=1, draft_depth=2, step_tokens=4, batch_rows=(1, 2, 4),
                   batch_q=(1, 4))


def median_seconds(run: Callable[[], object], settings: CalibrationSettings,
                   sync: Callable[[], None], reset: Callable[[], None] | None = None) -> float:
    """Median wall time of `run` after warm-up; `reset` runs untimed after every call."""
    times = []
    for i in range(settings.warmup + settings.repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        if i >= settings.warmup:
            times.append(time.perf_counter() - start)
        if reset is not None:
            reset()
    return statistics.median(times)


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def calibrate(
    target,
    drafters: Mapping[str, object],
    settings: CalibrationSettings | None = None,
    key: HardwareKey | None = None,
    progress: Progress | None = None,
) -> CostProfile:
    """Measure T1, Tv(n), every drafter's rounds and the overheads for `target` (a Target).

    `drafters`: name -> EagleDrafter or PromptLookupDrafter; prompt lookup is always added.
    """
    from taps_ray.decoding.features import aux_layers_for
    from taps_ray.decoding.prompt_lookup import DRAFTER_NAME, PromptLookupDrafter
    from taps_ray.decoding.target_runner import TargetRunner
    from taps_ray.evaluation.results import git_rev

    settings = settings or CalibrationSettings()
    say = progress or (lambda _line: None)
    eagle3 = [d for d in drafters.values() if getattr(d, "kind", "") == "eagle3"]
    runner = TargetRunner(target.model, aux_layers_for(eagle3))  # what decoding will run
    ctx = _Context(runner, settings, _sync_for(runner.device), say)
    t1 = ctx.plain_step()
    verify = {kv: ctx.verify_curve(kv) for kv in settings.kv_lens}
    batch = ctx.batch_table()
    everyone = {DRAFTER_NAME: PromptLookupDrafter(), **drafters}
    rounds, calls = {}, {}
    for name, drafter in everyone.items():
        rounds[name], calls[name] = ctx.drafter_costs(name, drafter)
    eagle = [d for d in everyone.values() if not isinstance(d, PromptLookupDrafter)]
    overheads = ctx.overheads(target, eagle[0] if eagle else None)
    return CostProfile(
        key=key or machine_key(target),
        t1_s=t1, verify_s=verify, draft_round_s=rounds, overhead_s=overheads,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_rev=git_rev(), ref_kv_len=settings.ref_kv_len, draft_call_s=calls,
        batch_verify_s=batch,
    )


@dataclass
class _Context:
    """What every measurement needs: the runner, the settings, a sync and a progress line."""

    runner: object  # TargetRunner
    settings: CalibrationSettings
    sync: Callable[[], None]
    say: Progress

    def __post_init__(self) -> None:
        self.gen = torch.Generator().manual_seed(self.settings.seed)
        self.vocab = self.runner.lm_head.weight.shape[0]

    def ids(self, n: int, high: int | None = None) -> torch.Tensor:  # [n] random token ids
        return torch.randint(0, high or self.vocab, (n,), generator=self.gen)

    def time(self, label: str, run, reset=None) -> float:
        seconds = median_seconds(run, self.settings, self.sync, reset)
        self.say(f"calibrate: {label}: {seconds * 1e3:.2f} ms")
        return seconds

    def plain_step(self) -> float:
        runner, kv = self.runner, self.settings.ref_kv_len
        runner.prefill(self.ids(kv))
        token = int(self.ids(1))
        return self.time(
            f"T1 (plain step, kv {kv})",
            lambda: runner.logits(runner.step(token)).argmax(-1).item(),
            lambda: runner.commit(kv, _EMPTY),
        )

    def verify_curve(self, kv: int) -> dict[int, float]:
        self.runner.prefill(self.ids(kv))
        return {n: self.verify_one(kv, n) for n in self.settings.n_list}

    def verify_one(self, kv: int, n: int) -> float:
        runner = self.runner
        tree = probe_tree(n - 1, self.ids(n - 1))
        root = self.ids(1)

        def run() -> None:
            ids = torch.cat([root, tree.tokens])
            feats = runner.verify(ids, tree_position_offsets(tree), tree_attention_mask(tree))
            children_lists(tree)  # greedy verification's walk structure
            runner.logits(feats[:1]).argmax(-1).item()

        return self.time(f"Tv(n={n}), kv {kv}", run, lambda: runner.commit(kv, _EMPTY))

    def batch_table(self) -> dict[int, dict[int, float]]:
        """Tb(B, q) for every B in batch_rows and q in batch_q, at ref_kv_len per row."""
        import copy

        from taps_ray.decoding.batch import BatchedRunner

        kv = self.settings.ref_kv_len
        self.runner.prefill(self.ids(kv))
        table = {}
        for rows in self.settings.batch_rows:
            batch = BatchedRunner(self.runner.model)
            for _ in range(rows):  # every row its own copy of one prefilled prompt
                batch.add(copy.deepcopy(self.runner.cache), kv)
            table[rows] = {q: self.batch_one(batch, q) for q in self.settings.batch_q}
        return table

    def batch_one(self, batch, q: int) -> float:
        tree = probe_tree(q - 1, self.ids(q - 1))
        blocks = [torch.cat([self.ids(1), tree.tokens]), tree_position_offsets(tree),
                  tree_attention_mask(tree)]

        def run() -> None:
            feats = batch.forward(*([b] * batch.size for b in blocks))
            batch.logits(feats[:, 0]).argmax(-1).tolist()  # every row's root

        return self.time(f"Tb(B={batch.size}, q={q}), kv {self.settings.ref_kv_len}", run,
                         batch.discard)

    def drafter_costs(self, name: str, drafter) -> tuple[dict[int, float], float]:
        """(seconds per round by width, seconds per draft outside rounds) of one drafter."""
        from taps_ray.decoding.prompt_lookup import PromptLookupDrafter

        if isinstance(drafter, PromptLookupDrafter):
            return {1: 0.0}, self.prompt_lookup(name, drafter)
        return self.eagle_rounds(name, drafter), 0.0

    def eagle_rounds(self, name: str, drafter) -> dict[int, float]:
        from taps_ray.decoding.proposer import make_session

        runner, kv = self.runner, self.settings.ref_kv_len
        session = make_session(drafter, runner.embed, runner.lm_head.weight)
        prefix = self.ids(kv + 1)
        feats = runner.prefill(prefix[:-1])  # [kv, d]: real target features
        session.reset()
        session.extend(feats, prefix[1:].to(runner.device))
        session.flush()
        widths = sorted({min(w, session.head.shape[0]) for w in self.settings.widths})
        out = {}
        for w in widths:
            tree = TreeConfig(total_tokens=TreeConfig().total_tokens,
                              depth=self.settings.draft_depth, top_k=w)
            out[w] = self.round_time(session, tree, feats[-2:], prefix[-2:])
            self.say(f"calibrate: {name} draft round, width {w}: {out[w] * 1e3:.2f} ms")
        return out

    def round_time(self, session, tree: TreeConfig, feats, tokens) -> float:
        """Median seconds of one expansion round at width tree.top_k, after flushing the two
        committed pairs a typical step queues; the final reranking is shared by the rounds."""
        base = session.length
        times = []
        for i in range(self.settings.warmup + self.settings.repeats):
            session.extend(feats, tokens.to(feats.device))
            root_s, total_s = _timed_draft(session, tree, self.sync)
            if i >= self.settings.warmup:
                times.append((total_s - root_s) / tree.depth)
            rewind_session(session, base)
        return statistics.median(times)

    def prompt_lookup(self, name: str, drafter) -> float:
        from taps_ray.decoding.prompt_lookup import PromptLookupSession

        session = PromptLookupSession(drafter)
        history = self.ids(self.settings.ref_kv_len, high=min(self.vocab, 64))  # repetitive
        step, tree = history[-2:], TreeConfig()

        def reset() -> None:  # the same history before every run
            session.reset(int(history[0]))
            session.extend(None, history[1:])

        def run() -> None:
            session.extend(None, step)
            session.draft(tree)

        reset()
        return self.time(f"{name} draft", run, reset)

    def overheads(self, target, drafter) -> dict[str, float]:
        trees = [eagle_shaped_tree(TreeConfig(), self.vocab, self.gen)
                 for _ in range(self.settings.overhead_trees)]
        n = len(trees)
        out = {
            "route": self.time(f"route score of {n} trees", lambda: _route(trees)) / n,
            "merge": self.time(f"trie merge of {n} trees", lambda: merge_trees(trees)) / n,
            "logits_row": self.logits_row(),
        }
        out["step"] = self.step_bookkeeping(target, drafter) if drafter is not None else 0.0
        return out

    def logits_row(self) -> float:
        runner = self.runner
        feat = runner.prefill(self.ids(2))[-1:]
        return self.time("one LM-head row + argmax", lambda: runner.logits(feat).argmax().item())

    def step_bookkeeping(self, target, drafter) -> float:
        """Per-step seconds of a real speculative run outside drafting and verifying."""
        from taps_ray.decoding.engine import SpeculativeEngine
        from taps_ray.decoding.sampling import SamplingParams

        engine = SpeculativeEngine(target, [drafter], TreeConfig(8, 2, 2))
        prompt = self.ids(self.settings.ref_kv_len)
        per_step = []
        for _ in range(2):  # the first run warms up
            result = engine.generate(prompt, SamplingParams(0.0), self.settings.step_tokens,
                                     stop_token_ids=set())
            split = result.time_split()
            steps = max(len(result.steps), 1)
            glue = result.wall_s - result.prefill_s - split["draft"] - split["verify"]
            per_step.append(max(glue, 0.0) / steps)
        self.say(f"calibrate: engine bookkeeping per step: {per_step[-1] * 1e3:.2f} ms")
        return per_step[-1]


def _timed_draft(session, tree: TreeConfig, sync) -> tuple[float, float]:
    """`DrafterSession.draft`, driven here to stamp the root round: (root_s, total_s)."""
    sync()
    start = time.perf_counter()
    rounds = session.draft_rounds(tree)
    hidden = next(rounds)  # flushes the queued pairs
    logp = session.log_probs(hidden)
    sync()
    root = time.perf_counter()
    try:
        while True:
            logp = session.log_probs(rounds.send(logp))
    except StopIteration:
        pass
    sync()
    return root - start, time.perf_counter() - start


def rewind_session(session, length: int) -> None:
    """Drop a DrafterSession's pairs past `length` (calibration repeats one step many times)."""
    from taps_ray.decoding.kv import crop_cache

    crop_cache(session.cache, length)
    session.length = length


def _route(trees: Sequence[DraftTree]) -> int:
    from taps_ray.decoding.strategies import tree_confidence

    values = [tree_confidence(t) for t in trees]
    return max(range(len(values)), key=values.__getitem__)


def probe_tree(size: int, tokens: torch.Tensor) -> DraftTree:
    """A binary tree of `size` draft nodes (heap order: node k's parent is (k - 1) // 2)."""
    parents = [(k - 1) // 2 for k in range(size)]  # node 0: (-1) // 2 == -1, the root
    tree = DraftTree.make_dummy(parents)
    return replace(tree, tokens=tokens[:size].clone())


def eagle_shaped_tree(tree: TreeConfig, vocab: int, gen: torch.Generator) -> DraftTree:
    """A tree shaped as EAGLE-2 builds it (top_k children of the root, `depth` rounds expanding
    the best top_k nodes, rerank to total_tokens) from random log-probs and tokens."""
    k = tree.top_k
    tokens, parents, scores = [], [], []
    layer, layer_scores = [-1], torch.zeros(1)
    for _ in range(tree.depth + 1):
        best = layer_scores.topk(min(k, len(layer))).indices.tolist()
        new_layer, new_scores = [], []
        for b in best:
            logp = torch.log_softmax(torch.randn(k, generator=gen) * 3, dim=-1)
            for value in logp.tolist():
                new_layer.append(len(tokens))
                new_scores.append(float(layer_scores[b]) + value)
                tokens.append(int(torch.randint(0, vocab, (1,), generator=gen)))
                parents.append(layer[b])
                scores.append(new_scores[-1])
        layer, layer_scores = new_layer, torch.tensor(new_scores)
    m = len(tokens)
    return select_tree(torch.tensor(tokens), torch.tensor(parents), torch.tensor(scores),
                       torch.zeros(m), total_tokens=tree.total_tokens)
