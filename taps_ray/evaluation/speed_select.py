"""Choosing a configuration by speed on this hardware (DESIGN.md §2, the cost model).

1. `tree_grid`: the tree shapes each candidate is replayed with (chains, small trees, the
   published 60/5/10); `grid_configs` turns one replay BenchConfig into one per shape.
2. `rank_predicted`: replay rows priced by a machine profile (predicted tokens/s), averaged as a
   speedup over plain decoding across benchmarks, per (label, tree); fastest first.
3. `confirm_live`: plain decoding and the top candidates decoded live in one run, interleaved
   prompt by prompt, with the policy serving uses: measured tokens/s, never inferred.
4. `choose_fastest`: the candidate with the best mean live speedup, or plain decoding when none
   beats it by `min_speedup` (then the reason says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from taps_ray.config.schema import BenchConfig, TreeConfig
from taps_ray.errors import TapsError
from taps_ray.evaluation.results import ResultRow

PLAIN = "plain"
MIN_SPEEDUP = 1.05  # a configuration must beat plain decoding by 5 % live to be served


def chain(tokens: int) -> TreeConfig:
    """A chain of `tokens` draft tokens: top-1 children only."""
    return TreeConfig(total_tokens=tokens, depth=max(tokens - 1, 1), top_k=1)


def tree_grid(published: TreeConfig | None = None) -> list[TreeConfig]:
    """Chains of 1-6 tokens, small trees, and the published 60/5/10 (or the run's own tree)."""
    small = [TreeConfig(4, 2, 2), TreeConfig(8, 3, 2), TreeConfig(12, 3, 4), TreeConfig(20, 4, 5)]
    grid = [chain(d) for d in range(1, 7)] + small + [published or TreeConfig(60, 5, 10)]
    unique = {tree_tag(t): t for t in reversed(grid)}  # a run tree equal to a small one: once
    return [unique[tag] for tag in dict.fromkeys(tree_tag(t) for t in grid)]


def tree_tag(tree: TreeConfig) -> str:
    return f"{tree.total_tokens}-{tree.depth}-{tree.top_k}"


def grid_configs(base: BenchConfig, trees: Sequence[TreeConfig]) -> list[BenchConfig]:
    """Replay-only copies of `base`, one per tree; run ids carry the tree (resumable each)."""
    prefix = base.run_id or "grid"
    return [replace(base, tree=t, run_id=f"{prefix}-tree{tree_tag(t)}",
                    live_prompts_per_benchmark=0) for t in trees]


@dataclass(frozen=True)
class Choice:
    """One configuration: a row label over named drafters with its strategy and tree."""

    label: str  # row label, e.g. math-hass or merged/sum (hass)
    drafters: tuple[str, ...]  # drafter names
    strategy: str  # bench label: single | merged/sum | route-confidence/step | ...
    tree: TreeConfig
    predicted_speedup: float = math.nan  # mean over benchmarks of predicted / plain tokens/s
    mean_tau: float = math.nan

    @property
    def key(self) -> str:
        return f"{self.label} @ {tree_tag(self.tree)}"


def rank_predicted(rows, profile) -> list[Choice]:
    """Replay rows -> configurations by mean predicted speedup over plain, fastest first."""
    from taps_ray.evaluation.speed_columns import add_predicted_speed, strategy_name
    from taps_ray.speed.predict import plain_tokens_per_s

    replay = rows[rows["mode"] == "replay"]
    if replay.empty:
        raise TapsError("no replay rows to rank by predicted speed; run the T = 0 replay first")
    priced = add_predicted_speed(replay, profile)
    plain = plain_tokens_per_s(profile)
    keys = ["strategy", "total_tokens", "depth", "top_k"]
    choices = []
    for (label, total, depth, top_k), group in priced.groupby(keys, sort=True):
        per_bench = group.groupby("benchmark").apply(_pooled_predicted, include_groups=False)
        drafters = tuple(group["drafters"].iloc[0])
        choices.append(Choice(
            label=str(label), drafters=drafters,
            strategy=strategy_name(str(label), list(drafters)),
            tree=TreeConfig(int(total), int(depth), int(top_k)),
            predicted_speedup=float((per_bench / plain).mean()),
            mean_tau=float(group.groupby("benchmark")["tau"].mean().mean()),
        ))
    return sorted(choices, key=lambda c: -c.predicted_speedup)


def predicted_speedup(rows, profile, cost_as: str) -> float:
    """Mean predicted speedup over plain of one drafter's replay rows, its draft cost taken from
    the profile's head `cost_as` (a calibrated head of the same shape): a sweep's speed metric."""
    if cost_as not in profile.draft_round_s:
        have = ", ".join(sorted(profile.draft_round_s)) or "none"
        raise TapsError(f"speed_cost_as '{cost_as}' is not a drafter of the cost profile (it "
                        f"has: {have}); name one of them, calibrated with the trials' shape")
    priced = rows.assign(drafters=[[cost_as]] * len(rows), strategy=cost_as)
    return rank_predicted(priced, profile)[0].predicted_speedup


def _pooled_predicted(group) -> float:
    """Committed tokens over predicted time of the benchmark's rows."""
    seconds = (group["new_tokens"] / group["predicted_tokens_per_s"]).sum()
    return float(group["new_tokens"].sum() / seconds)


def confirm_live(target, drafters: dict, choices: Sequence[Choice], prompts: dict[str, list],
                 max_new_tokens: int, run_id: str, policy: str = "adaptive", profile=None,
                 log: Callable[[str], None] = print) -> list[ResultRow]:
    """Plain decoding and every choice on the same prompts, interleaved prompt by prompt, T = 0.

    `prompts`: benchmark -> list of (prompt_id, token ids). One engine per choice is built up
    front and reused, as a server would (its speed policy learns across prompts).
    """
    from taps_ray.decoding.adaptive import make_policy
    from taps_ray.decoding.engine import SpeculativeEngine

    engines = {}
    for c in choices:
        kind, options = engine_strategy(c)
        engines[c.key] = SpeculativeEngine(target, [drafters[n] for n in c.drafters], c.tree,
                                           kind, policy=make_policy(policy, profile), **options)
    rows = []
    for bench, items in prompts.items():
        for i, (prompt_id, ids) in enumerate(items):
            rows.append(_decode_row(target, None, None, bench, prompt_id, ids, max_new_tokens,
                                    run_id))
            for c in choices:
                rows.append(_decode_row(target, engines[c.key], c, bench, prompt_id, ids,
                                        max_new_tokens, run_id))
            log(f"  live {bench} {i + 1}/{len(items)}: " + ", ".join(
                f"{r.strategy} {r.tokens_per_s:.1f}" for r in rows[-1 - len(choices):]))
    return rows


def engine_strategy(choice: Choice) -> tuple[str, dict]:
    """The engine's strategy name and options behind a choice's bench label."""
    from taps_ray.evaluation.bench import candidates_for

    methods = dict.fromkeys(choice.drafters, "none")
    cand = candidates_for([choice.strategy], list(choice.drafters), methods)
    if choice.strategy == "single":
        cand = [c for c in cand if c.drafter_names == list(choice.drafters)]
    return cand[0].strategy, dict(cand[0].options or {})


def _decode_row(target, engine, choice: Choice | None, bench: str, prompt_id: str, ids,
                max_new: int, run_id: str) -> ResultRow:
    """One greedy decode (plain when `engine` is None) as a live result row."""
    from taps_ray.decoding.engine import generate_plain
    from taps_ray.decoding.sampling import SamplingParams
    from taps_ray.evaluation.bench import BenchUnit, live_row
    from taps_ray.evaluation.runner import Candidate

    if engine is None:
        result = generate_plain(target, ids, SamplingParams(), max_new)
        cand, tree = Candidate(PLAIN, PLAIN, []), TreeConfig(1, 1, 1)
    else:
        result = engine.generate(ids, SamplingParams(), max_new)
        cand, tree = Candidate(choice.key, choice.strategy, list(choice.drafters)), choice.tree
    unit = BenchUnit("speed", "live", 0.0, bench)
    return live_row(run_id, target, cand, unit, prompt_id, 0, 0, result, tree)


def live_speedups(rows: Sequence[ResultRow]) -> dict[str, dict[str, float]]:
    """label -> benchmark -> pooled live tokens/s over plain's on the same prompts."""
    speed: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        entry = speed.setdefault(r.strategy, {}).setdefault(r.benchmark, [0.0, 0.0])
        entry[0] += r.new_tokens
        entry[1] += r.wall_s
    plain = {b: t / s for b, (t, s) in speed.pop(PLAIN).items()}
    return {label: {b: (t / s) / plain[b] for b, (t, s) in benches.items()}
            for label, benches in speed.items()}


def choose_fastest(choices: Sequence[Choice], rows: Sequence[ResultRow],
                   min_speedup: float = MIN_SPEEDUP) -> tuple[Choice | None, dict]:
    """(the fastest choice live, or None for plain decoding; a summary with the reason).

    Eligible: not slower than plain decoding on any benchmark, and `min_speedup` on the mean.
    """
    speedups = live_speedups(rows)
    means = {c.key: sum(speedups[c.key].values()) / len(speedups[c.key]) for c in choices}
    never_slower = [c for c in choices if min(speedups[c.key].values()) >= 1.0]
    best = max(never_slower or choices, key=lambda c: means[c.key])
    summary = {"live_speedup": {k: round(v, 4) for k, v in means.items()},
               "per_benchmark": {k: {b: round(x, 4) for b, x in v.items()}
                                 for k, v in speedups.items()}}
    if never_slower and means[best.key] >= min_speedup:
        summary["reason"] = (f"{best.key} is the fastest live: {means[best.key]:.2f}x plain "
                             "decoding (mean over benchmarks)")
        return best, summary
    summary["reason"] = (f"no configuration beat plain decoding by {min_speedup - 1:.0%} live "
                         "without being slower on some benchmark (best: "
                         f"{best.key} at {means[best.key]:.2f}x); serving plain decoding")
    return None, summary


def choice_to_dict(choice: Choice) -> dict:
    return {**asdict(choice), "tree": asdict(choice.tree), "drafters": list(choice.drafters)}
