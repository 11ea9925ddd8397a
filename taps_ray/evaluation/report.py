"""Paper-style tau tables from result rows: rows = drafter/strategy, columns = benchmarks + mean."""

from __future__ import annotations

BENCH_ORDER = ["mt_bench", "gsm8k", "math500", "svamp"]


def tau_table(df, temperature: float | None = None):
    """Pooled tau = sum of committed tokens / sum of steps, per (strategy label, benchmark)."""
    import pandas as pd

    if temperature is not None:
        df = df[df["temperature"] == temperature]
    df = df.assign(committed=df["tau"] * df["steps"])
    pooled = df.groupby(["strategy", "benchmark"])[["committed", "steps"]].sum()
    table = (pooled["committed"] / pooled["steps"]).unstack("benchmark")
    cols = [b for b in BENCH_ORDER if b in table.columns]
    table = table[cols + [c for c in table.columns if c not in cols]]
    table["mean"] = table.mean(axis=1)
    return pd.DataFrame(table).sort_index()


def to_markdown(table, digits: int = 2) -> str:
    header = "| drafter / strategy | " + " | ".join(table.columns) + " |"
    sep = "| --- |" + " --- |" * len(table.columns)
    lines = [header, sep]
    for label, row in table.iterrows():
        lines.append(f"| {label} | " + " | ".join(f"{v:.{digits}f}" for v in row.values) + " |")
    return "\n".join(lines)
