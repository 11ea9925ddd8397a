"""What a finished sweep leaves under `<storage_path>/<name>/`, next to Tune's own files:

    sweep_table.parquet / .md   one row per trial: swept values, mixture, final metrics, status
                                (the Parquet file also has each trial's checkpoint and error)
    tau_vs_math_fraction.png    tau per benchmark against the math share (when it was swept)
    drafters/<name>/            the chosen trials' drafters (their last checkpoints, loadable)
    best_config.yaml            target, drafters, strategy, strategy_options, tree, metric, value

best_config.yaml lists the best trial's drafter and, for a sweep over math fractions, also the
best math-heavy (fraction > .5, ranked on the math benchmarks) and chat-heavy (< .5, ranked on
MT-Bench) drafters, so a router (strategy route-confidence) can use the specialists.
Storage may be a local folder or a pyarrow URI; every file is written under a temp name, then
renamed.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from pyarrow import fs as pafs

from taps_ray.distributed.sweep import SweepConfig, trial_config
from taps_ray.training.checkpoint import STATE_FILE, publish_folder

MATH_BENCHMARKS = ("gsm8k", "math500", "svamp")
CHAT_BENCHMARKS = ("mt_bench",)
PLOT_FILE = "tau_vs_math_fraction.png"


@dataclass
class SweepOutputs:
    path: str  # <storage_path>/<name>
    table: object  # pandas DataFrame, one row per trial, best first
    best: dict | None  # the best_config.yaml contents; None when no trial reported


def write_outputs(cfg: SweepConfig, results, path: str) -> SweepOutputs:
    """Table, plot, drafters and best configuration of the trials in `results` (a ResultGrid)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    results = list(results)
    table = sweep_table(cfg, results)
    _put_bytes(f"{path}/sweep_table.md", (table_markdown(table) + "\n").encode())
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), sink)
    _put_bytes(f"{path}/sweep_table.parquet", sink.getvalue())
    png = plot_tau_vs_fraction(table, cfg)
    if png is not None:
        _put_bytes(f"{path}/{PLOT_FILE}", png)
    checkpoints = {_trial_id(r): r.checkpoint for r in results if r.checkpoint is not None}
    best = best_config(cfg, table, checkpoints, path)
    if best is not None:
        _put_bytes(f"{path}/best_config.yaml", yaml.safe_dump(best, sort_keys=False).encode())
    return SweepOutputs(path, table, best)


def sweep_table(cfg: SweepConfig, results: list):
    """One row per trial (swept values, mixture, method, metrics, status), best first."""
    import pandas as pd

    benches = [f"tau_{b}" for b in cfg.base.evaluation.benchmarks]
    rows = []
    for result in results:
        config, metrics = dict(result.config or {}), dict(result.metrics or {})
        trial = trial_config(cfg.base, config)
        row = {"trial_id": _trial_id(result)}
        row.update({k: config.get(k) for k in cfg.space.swept()})
        row.update(mixture=trial.data.mixture, method=trial.drafter.method,
                   drafter=metrics.get("drafter", ""), epochs_done=metrics.get("epoch", 0))
        row.update({k: metrics.get(k) for k in ["mean_tau", *benches]})
        row.update(status="error" if result.error else "ok",
                   error=_error_line(result.error),
                   checkpoint=result.checkpoint.path if result.checkpoint else "")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(cfg.metric, ascending=False, na_position="last",
                             ignore_index=True)


def table_markdown(table) -> str:
    from taps_ray.evaluation.report import fmt

    shown = table.drop(columns=["checkpoint", "error"], errors="ignore")
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * len(shown.columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(fmt(v, 3) for v in row.values) + " |")
    return "\n".join(lines)


def plot_tau_vs_fraction(table, cfg: SweepConfig) -> bytes | None:
    """PNG: tau per benchmark (and the mean) against the math fraction, the best trial at each
    fraction; one line style per method when methods were swept. None without a fraction sweep."""
    if "math_fraction" not in table or table["math_fraction"].nunique() < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [f"tau_{b}" for b in cfg.base.evaluation.benchmarks] + ["mean_tau"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = ["-", "--", ":", "-."]
    for m, (method, part) in enumerate(table.groupby("method")):
        best = part.groupby("math_fraction")[columns].max().sort_index()
        for c, column in enumerate(columns):
            name = "mean" if column == "mean_tau" else column.removeprefix("tau_")
            label = name + (f" ({method})" if table["method"].nunique() > 1 else "")
            ax.plot(best.index, best[column], marker="o", linestyle=styles[m % len(styles)],
                    color=f"C{c}", linewidth=2.5 if column == "mean_tau" else 1.5, label=label)
    ax.set(xlabel="math fraction of the training mixture (rest: chat)",
           ylabel="replay tau (T = 0)", title=f"sweep {cfg.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    sink = io.BytesIO()
    fig.tight_layout()
    fig.savefig(sink, format="png", dpi=120)
    plt.close(fig)
    return sink.getvalue()


def choose_trials(table, cfg: SweepConfig) -> list[dict]:
    """Best trial by the sweep metric, then the best math-heavy and chat-heavy trials (when
    math fractions were swept); distinct drafter names only, best first."""
    ok = table[(table["status"] == "ok") & (table["checkpoint"] != "")] if len(table) else table
    ok = ok[ok[cfg.metric].notna()] if len(ok) else ok
    if ok.empty:
        return []
    picks = [ok.loc[ok[cfg.metric].idxmax()]]
    if "math_fraction" in ok:
        for heavy, benches in ((ok["math_fraction"] > 0.5, MATH_BENCHMARKS),
                               (ok["math_fraction"] < 0.5, CHAT_BENCHMARKS)):
            group = ok[heavy]
            if not group.empty:
                picks.append(group.loc[_score(group, benches, cfg.metric).idxmax()])
    chosen, names = [], set()
    for row in picks:
        if row["drafter"] not in names:
            names.add(row["drafter"])
            chosen.append(row.to_dict())
    return chosen


def best_config(cfg: SweepConfig, table, checkpoints: dict, path: str) -> dict | None:
    """Copy the chosen drafters to `<path>/drafters/` and describe the configuration to serve."""
    chosen = choose_trials(table, cfg)
    if not chosen:
        return None
    local = "://" not in path
    drafters = []
    for row in chosen:
        dest = f"{path}/drafters/{row['drafter']}"
        _publish_drafter(checkpoints[row["trial_id"]], dest)
        drafters.append(dest if local else f"drafters/{row['drafter']}")  # URI: next to the YAML
    routed = len(drafters) > 1
    return {
        "target": cfg.base.target.name,
        "drafters": drafters,
        "strategy": "route-confidence" if routed else "single",
        "strategy_options": {"granularity": "step"} if routed else {},
        "tree": asdict(cfg.base.tree),
        "metric": cfg.metric,
        "value": round(float(chosen[0][cfg.metric]), 4),
    }


def _score(group, benches: tuple[str, ...], metric: str):
    columns = [f"tau_{b}" for b in benches if f"tau_{b}" in group]
    return group[columns].mean(axis=1) if columns else group[metric]


def _error_line(error) -> str:
    """The error's last line (the exception itself, below any remote traceback), shortened."""
    lines = [line for line in str(error or "").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else ""


def _trial_id(result) -> str:
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)


def _publish_drafter(checkpoint, dest: str) -> None:
    """The checkpoint minus its trainer state is a drafter folder; copy it to `dest`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(checkpoint.to_directory(f"{tmp}/drafter"))
        (folder / STATE_FILE).unlink(missing_ok=True)
        if "://" not in dest:
            publish_folder(folder, Path(dest))
            return
        filesystem, root = pafs.FileSystem.from_uri(dest)
        filesystem.create_dir(root, recursive=True)
        pafs.copy_files(str(folder), root, destination_filesystem=filesystem)


def _put_bytes(dest: str, data: bytes) -> None:
    """Write one file (local path or URI) under a temp name, then rename it."""
    filesystem, root = pafs.FileSystem.from_uri(dest if "://" in dest else str(Path(dest)))
    parent, _, name = root.rpartition("/")
    filesystem.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.tmp"
    with filesystem.open_output_stream(tmp) as out:
        out.write(data)
    filesystem.move(tmp, root)
