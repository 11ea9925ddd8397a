"""Replay evaluation of drafters (and strategies over them) on benchmark prompts at T = 0."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from taps_ray.config.schema import EvaluationConfig, TreeConfig
from taps_ray.data.mixture import benchmark_subset
from taps_ray.decoding.features import aux_layers_for
from taps_ray.decoding.proposer import Session, make_session
from taps_ray.decoding.strategies import strategy_class
from taps_ray.decoding.target_runner import TargetRunner
from taps_ray.evaluation.replay import (
    ReplayPrompt,
    ReplayResult,
    continuations,
    item_ids,
    known_trees,
    replay,
    teacher_features,
)
from taps_ray.evaluation.results import ResultRow, route_counts_json


@dataclass
class Candidate:
    """One row label of the tau table: a strategy over named drafters."""

    label: str  # e.g. math-eagle2, or route-confidence/step
    strategy: str
    drafter_names: list[str]
    method: str = "none"
    budget_mode: str = ""
    options: dict | None = None


def replay_prompts(target, evaluation: EvaluationConfig, progress: bool = True
                   ) -> list[ReplayPrompt]:
    """Greedy continuations of the configured benchmark subsets (cached on disk)."""
    n = evaluation.prompts_per_benchmark or None
    records = [r for b in evaluation.benchmarks for r in benchmark_subset(b, n, evaluation.seed)]
    return continuations(target, records, evaluation.max_new_tokens, progress=progress)


def replay_candidates(target, drafters: dict, candidates: list[Candidate], tree: TreeConfig,
                      prompts: list[ReplayPrompt], run_id: str | None = None,
                      progress: bool = True) -> list[ResultRow]:
    """Replay every candidate on every prompt.

    Target features are computed once per prompt (and cached on disk), and each drafter's
    trees once per prompt, shared by every strategy over it: a row's `wall_s` is its walk plus
    whatever drafting no earlier row on the prompt had done.
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    combined = {c.label: _combined(drafters, c) for c in candidates}
    # one teacher pass serves every head: EAGLE-3 heads' aux layers ride along (they must agree)
    every = [*drafters.values(), *(d for ds in combined.values() for d in ds)]
    runner = TargetRunner(target.model, aux_layers_for(every))
    head = runner.lm_head.weight
    sessions = {name: make_session(d, runner.embed, head) for name, d in drafters.items()}
    prepared = {}  # candidate label -> sessions of the drafters its strategy runs
    for cand in candidates:
        chosen = [drafters[n] for n in cand.drafter_names]
        if len(combined[cand.label]) == len(chosen) and all(
            a is b for a, b in zip(combined[cand.label], chosen, strict=True)
        ):
            prepared[cand.label] = [sessions[n] for n in cand.drafter_names]
        else:  # e.g. weight averaging made a new drafter
            prepared[cand.label] = [make_session(d, runner.embed, head)
                                    for d in combined[cand.label]]
    rows = []
    for item in _progress(prompts, progress):
        feats = teacher_features(runner, item)
        seq = item_ids(item, feats.device)
        known: dict[int, Session] = {}  # one per session: its trees serve every strategy
        for cand in candidates:
            chosen = [known.setdefault(id(s), known_trees(s, feats, seq))
                      for s in prepared[cand.label]]
            strategy = strategy_class(cand.strategy)(len(chosen), **(cand.options or {}))
            start = time.perf_counter()
            result = replay(chosen, strategy, item, feats, tree)
            rows.append(_row(run_id, target, cand, item, result, tree, time.perf_counter() - start))
    return rows


def _combined(drafters: dict, cand: Candidate) -> list:
    """The drafters `cand`'s strategy runs (weight averaging makes one new drafter)."""
    options = cand.options or {}
    kind = strategy_class(cand.strategy, options)
    return kind.prepare_drafters([drafters[n] for n in cand.drafter_names], **options)


def _row(run_id, target, cand: Candidate, item: ReplayPrompt, result: ReplayResult,
         tree: TreeConfig, wall_s: float) -> ResultRow:
    steps = max(result.steps, 1)
    depth = tree.depth + 1
    by_depth = [sum(a >= d for a in result.accepted) / steps for d in range(1, depth + 1)]
    return ResultRow(
        run_id=run_id, target=str(target.name), drafters=list(cand.drafter_names),
        method=cand.method, strategy=cand.label, budget_mode=cand.budget_mode,
        benchmark=item.benchmark, prompt_id=item.prompt_id, turn=item.turn, temperature=0.0,
        seed=0, new_tokens=len(item.continuation), steps=result.steps, tau=result.tau,
        wall_s=wall_s, tokens_per_s=len(item.continuation) / wall_s if wall_s else 0.0,
        verify_tokens_per_step=sum(result.verify_tokens) / steps, accepted_by_depth=by_depth,
        route_counts=route_counts_json(result.routes, cand.drafter_names),
        total_tokens=tree.total_tokens, depth=tree.depth, top_k=tree.top_k, mode="replay",
    )


def _progress(items, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="replay", unit="prompt", leave=False)


def replay_rows(target, drafter, tree: TreeConfig, prompts: list[ReplayPrompt]):
    """Replay rows (a DataFrame) of one drafter alone at T = 0, labelled "drafter"."""
    from dataclasses import asdict

    import pandas as pd

    cand = Candidate("drafter", "single", ["drafter"])
    rows = replay_candidates(target, {"drafter": drafter}, [cand], tree, prompts, progress=False)
    return pd.DataFrame([asdict(r) for r in rows])


def taus_of(rows) -> dict[str, float]:
    """Pooled tau per benchmark and their mean ("mean") of one configuration's rows."""
    from taps_ray.evaluation.report import tau_table

    table = tau_table(rows)
    return {str(k): round(float(v), 4) for k, v in table.iloc[0].items()}


def replay_taus(target, drafter, tree: TreeConfig, prompts: list[ReplayPrompt]
                ) -> dict[str, float]:
    """Pooled replay tau per benchmark and their mean ("mean") of one drafter at T = 0: the
    per-epoch check of training runs and sweep trials."""
    return taus_of(replay_rows(target, drafter, tree, prompts))
