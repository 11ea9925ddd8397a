"""Routing shares and accepted-vs-rejected diagnostics of result rows (DESIGN.md §1 diagnostics).

Pure functions from result rows / diagnostics rows to small DataFrames; `report` renders them.
"""

from __future__ import annotations

import json


def routing_shares(df):
    """Per routed label and benchmark: share of steps and of prompt turns won by each drafter.

    A drafter wins a prompt turn when it got the most steps; ties split the turn evenly.
    Routed labels: strategies named route-*/bandit*, or any label whose rows routed steps to
    two or more drafters (single drafters, averages and merged trees route to one name).
    """
    import pandas as pd

    counts = df["route_counts"].map(_route_dict) if "route_counts" in df else None
    if counts is None:
        return pd.DataFrame()
    names = counts.map(lambda c: set(c) - {"merged"}).groupby(df["strategy"]).agg(
        lambda s: set().union(*s))
    routed = {label for label, used in names.items()
              if len(used) >= 2 or label.startswith(("route", "bandit"))}
    records = []
    sub = df.assign(_counts=counts)[df["strategy"].isin(routed)]
    for (temp, label, bench), group in sub.groupby(["temperature", "strategy", "benchmark"]):
        records += _shares(group["_counts"].tolist(), temp, label, bench)
    shares = pd.DataFrame(records, columns=["temperature", "label", "benchmark", "drafter",
                                            "step_share", "prompt_share"])
    from taps_ray.evaluation.report import BENCH_ORDER

    rank = shares["benchmark"].map(lambda b: (BENCH_ORDER + [b]).index(b))  # paper order first
    order = shares.assign(_rank=rank).sort_values(["temperature", "label", "_rank", "benchmark"])
    return order.drop(columns="_rank").reset_index(drop=True)


def _shares(rows: list[dict], temp: float, label: str, bench: str) -> list[dict]:
    steps: dict[str, float] = {}
    wins: dict[str, float] = {}
    for counts in rows:
        for name, n in counts.items():
            steps[name] = steps.get(name, 0) + n
        top = max(counts.values(), default=0)
        winners = [name for name, n in counts.items() if n == top and top > 0]
        for name in winners:
            wins[name] = wins.get(name, 0) + 1 / len(winners)
    total_steps, total_prompts = sum(steps.values()) or 1, len(rows) or 1
    return [dict(temperature=float(temp), label=label, benchmark=bench, drafter=name,
                 step_share=steps[name] / total_steps,
                 prompt_share=wins.get(name, 0) / total_prompts) for name in sorted(steps)]


def _route_dict(value) -> dict[str, float]:
    if not isinstance(value, str) or not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return {}
    return {str(k): float(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}


def diagnostics_summary(diag):
    """Mean draft confidence / entropy of accepted vs rejected tokens per temperature and label."""
    import pandas as pd

    if diag is None or diag.empty:
        return pd.DataFrame()
    stats = diag.groupby(["temperature", "strategy", "kind"]).agg(
        confidence=("confidence", "mean"), entropy=("entropy", "mean"), n=("confidence", "size"))
    wide = stats.unstack("kind")
    wide.columns = [f"{stat}_{kind}" for stat, kind in wide.columns]
    order = [f"{s}_{k}" for s in ("confidence", "entropy", "n") for k in ("accepted", "rejected")]
    return wide.reindex(columns=[c for c in order if c in wide.columns]).reset_index()
