"""Paper-style tables from result rows (DESIGN.md §2-3) and the `taps-ray report` pipeline.

Glossary:
    label          the `strategy` column: a single drafter (`math-eagle2`) or a strategy
                   (`route-confidence/step`, `merged/sum`); one table row.
    cell           (label, benchmark) at one temperature.
    pooled tau     sum(tau * steps) / sum(steps): every step of every prompt weighs the same
                   (the paper's tau; tau * steps is the tokens a row committed).
    per-prompt tau mean over result rows (one prompt turn each, steps > 0) of their own tau.
    mean column    mean of the row's benchmark cells (empty cells are skipped).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from taps_ray.errors import TapsError
from taps_ray.evaluation.routing import diagnostics_summary, routing_shares  # noqa: F401 (API)

BENCH_ORDER = ["mt_bench", "gsm8k", "math500", "svamp"]
# A result row is unique by this key; a repeat means the same file was given twice.
KEY = ["run_id", "strategy", "benchmark", "prompt_id", "turn", "temperature", "seed"]
REQUIRED = [*KEY, "steps", "tau"]
# Optional diagnostics table written by the bench runner, one row per verified draft token.
DIAG_PREFIX = "diagnostics-"
DIAG_COLUMNS = ["run_id", "strategy", "benchmark", "temperature", "kind", "confidence", "entropy"]


# ---------------------------------------------------------------------------------------------
# label x benchmark tables


def tau_table(df, temperature: float | None = None):
    """Pooled tau per (label, benchmark) + mean; all temperatures pooled when None."""
    df = _at(df, temperature)
    committed = (df["tau"] * df["steps"]).groupby([df["strategy"], df["benchmark"]]).sum()
    steps = df.groupby(["strategy", "benchmark"])["steps"].sum()
    return _pivot(committed / steps.where(steps > 0))


def per_prompt_tau_table(df, temperature: float | None = None):
    """Mean of each prompt turn's own tau (rows without steps have no tau and are skipped)."""
    df = _at(df, temperature)
    tau = df["tau"].where(df["steps"] > 0)
    return _pivot(tau.groupby([df["strategy"], df["benchmark"]]).mean())


def verify_table(df, temperature: float | None = None):
    """Tree tokens verified per step, pooled over steps (merged sum vs matched shows here)."""
    df = _at(df, temperature)
    verified = (df["verify_tokens_per_step"] * df["steps"]).groupby(
        [df["strategy"], df["benchmark"]]).sum()
    steps = df.groupby(["strategy", "benchmark"])["steps"].sum()
    return _pivot(verified / steps.where(steps > 0))


@dataclass(frozen=True)
class TableKind:
    name: str  # id prefix and the `table` column of tables.csv
    title: str
    build: Callable  # (df, temperature) -> label x benchmark DataFrame
    needs: tuple[str, ...] = ()  # optional columns; the table is skipped when one is absent
    digits: int = 2


TABLES = [
    TableKind("pooled-tau", "Acceptance length tau (pooled over steps)", tau_table),
    TableKind("per-prompt-tau", "Acceptance length tau (mean over prompt turns)",
              per_prompt_tau_table),
    TableKind("verify-tokens", "Verified tree tokens per step", verify_table,
              ("verify_tokens_per_step",), 1),
]


def build_tables(df) -> dict[float, dict[str, object]]:
    """{temperature: {table name: label x benchmark DataFrame}}, temperatures ascending."""
    kinds = [k for k in TABLES if all(c in df.columns for c in k.needs)]
    return {float(t): {k.name: k.build(df, t) for k in kinds}
            for t in sorted(df["temperature"].unique())}


def tables_json(tables: dict[float, dict[str, object]]) -> dict:
    """{temperature: {label: {benchmark: pooled tau, "mean": ...}}}; empty cells are null."""
    return {temp_key(t): {label: {b: _num(v) for b, v in row.items()}
                          for label, row in per["pooled-tau"].iterrows()}
            for t, per in tables.items()}


def _at(df, temperature: float | None):
    return df if temperature is None else df[df["temperature"] == temperature]


def _pivot(cells):
    """Series indexed by (strategy, benchmark) -> label x benchmark table with a mean column."""
    import pandas as pd

    table = cells.unstack("benchmark") if len(cells) else pd.DataFrame()
    table = table[bench_order(set(table.columns))]
    table["mean"] = table.mean(axis=1)
    table.index.name, table.columns.name = "label", None
    return table.sort_index()


def bench_order(benches: set[str]) -> list[str]:
    """The paper's benchmark order first, then any others alphabetically."""
    return [b for b in BENCH_ORDER if b in benches] + sorted(benches - set(BENCH_ORDER))


def _num(value) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def temp_key(temperature: float) -> str:
    return f"{temperature:g}"


# ---------------------------------------------------------------------------------------------
# reading inputs


@dataclass
class Inputs:
    rows: object  # DataFrame of result rows (DESIGN §3)
    diagnostics: object | None  # DataFrame of DIAG_COLUMNS, or None when no file was found
    files: list[str] = field(default_factory=list)


def load_inputs(paths: list[str]) -> Inputs:
    """Result rows + diagnostics under the given files/folders (local paths or URIs)."""
    import pandas as pd

    if not paths:
        raise TapsError("give at least one result file or folder to report on")
    rows, diags, names = [], [], []
    for path in paths:
        for filesystem, file in _parquet_files(path):
            diag = Path(file).name.startswith(DIAG_PREFIX)
            frame = _read(filesystem, file, DIAG_COLUMNS if diag else REQUIRED)
            (diags if diag else rows).append(frame)
            names.append(file)
    if not rows:
        raise TapsError(f"no result files (*.parquet) found under {', '.join(paths)}; "
                        "pass the folder a runner wrote its results to")
    diagnostics = pd.concat(diags, ignore_index=True) if diags else None
    return Inputs(_mark_live(pd.concat(rows, ignore_index=True)), diagnostics, names)


def _mark_live(rows):
    """Where replay and live rows share a temperature (T = 0), live labels get ' [live]'.

    Replay gives tau on the larger prompt set; live rows measure tokens/s on a subset: the two
    are kept apart instead of pooled into one cell.
    """
    if "mode" not in rows.columns:
        return rows
    replay_temps = set(rows.loc[rows["mode"] == "replay", "temperature"])
    live = (rows["mode"] == "live") & rows["temperature"].isin(replay_temps)
    rows.loc[live, "strategy"] = rows.loc[live, "strategy"] + " [live]"
    return rows


def duplicate_count(rows) -> int:
    """Rows whose (run_id, strategy, benchmark, prompt_id, turn, temperature, seed) repeats."""
    return int(rows.duplicated(KEY).sum())


def _parquet_files(path: str) -> list[tuple[object, str]]:
    from pyarrow import fs as pafs

    uri = path if "://" in path else str(Path(path).resolve())
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:
        raise TapsError(f"cannot open result path '{path}': {err}") from None
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise TapsError(f"result path '{path}' does not exist; check the spelling")
    if info.type == pafs.FileType.File:
        return [(filesystem, root)]
    found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    return [(filesystem, i.path) for i in sorted(found, key=lambda i: i.path)
            if i.path.endswith(".parquet") and not Path(i.path).name.startswith(".")]


def _read(filesystem, file: str, required: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(file, filesystem=filesystem).to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise TapsError(f"'{file}' is not a readable Parquet file ({err})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TapsError(f"'{file}' lacks the columns {', '.join(missing)}; report reads "
                        "result rows (DESIGN.md §3) and diagnostics-*.parquet files only")
    return frame


# ---------------------------------------------------------------------------------------------
# rendering and writing


def to_markdown(table, digits: int = 2, index_name: str = "drafter / strategy") -> str:
    """A label-indexed table as a Markdown table; empty cells print as '-'."""
    header = f"| {index_name} | " + " | ".join(map(str, table.columns)) + " |"
    lines = [header, "| --- |" + " --- |" * len(table.columns)]
    for label, row in table.iterrows():
        lines.append(f"| {label} | " + " | ".join(fmt(v, digits) for v in row.values) + " |")
    return "\n".join(lines)


def fmt(value, digits: int = 2) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


@dataclass
class Report:
    inputs: Inputs
    tables: dict[float, dict[str, object]]
    routing: object  # DataFrame, see routing_shares
    diagnostics: object  # DataFrame, see diagnostics_summary
    duplicates: int
    plots: list = field(default_factory=list)  # list[plots.Plot]
    speed: list = field(default_factory=list)  # list[speed_columns.SpeedTable]
    overview: object = None  # summary.Overview: the opening block
    profile: object = None  # taps_ray.speed CostProfile, when one was given
    warnings: list[str] = field(default_factory=list)  # more notes (e.g. unpriced rows)

    @property
    def summary(self) -> str:
        diag = self.inputs.diagnostics
        extra = f" and {len(diag)} diagnostics rows" if diag is not None else ""
        return (f"{len(self.inputs.rows)} result rows{extra} from "
                f"{len(self.inputs.files)} files.")

    @property
    def notes(self) -> list[str]:
        """Warnings for the reader, shown on stderr, in tables.md and in report.html."""
        notes = list(self.warnings)
        if self.duplicates:
            notes.append(f"{self.duplicates} result rows repeat a ({', '.join(KEY)}) key "
                         "already seen; all are counted (a file was probably given twice)")
        return notes

    def speed_at(self, temperature: float) -> list:
        return [t for t in self.speed if t.temperature == temperature]


def build_report(paths: list[str], with_plots: bool = True, best_config=None,
                 profile=None) -> Report:
    """Tables, speed tables, opening summary and plots of the result rows under `paths`.

    best_config: a best_config.yaml path or its dict (the chosen configuration), or None.
    profile: a taps_ray.speed CostProfile or its JSON path; replay rows without a predicted
    speed are priced with it, and the summary quotes its T1 and Tv(n)/T1.
    """
    from taps_ray.evaluation import plots
    from taps_ray.evaluation.speed_columns import fill_predicted, speed_tables
    from taps_ray.evaluation.summary import build_overview

    inputs = load_inputs(paths)
    profile = _load_profile(profile)
    warnings: list[str] = []
    if profile is not None:
        inputs.rows = fill_predicted(inputs.rows, profile, warnings)
    rows = inputs.rows
    tables = build_tables(rows)
    report = Report(inputs, tables, routing_shares(rows), diagnostics_summary(inputs.diagnostics),
                    duplicate_count(rows), speed=speed_tables(rows, profile),
                    overview=build_overview(rows, tables, best_config, profile),
                    profile=profile, warnings=warnings)
    if with_plots:
        report.plots = plots.make_plots(tables, rows, report.routing, inputs.diagnostics)
        if profile is not None:
            from taps_ray.speed.plot import verify_curve_plot

            report.plots.insert(0, verify_curve_plot(profile))
    return report


def _load_profile(profile):
    if profile is None or not isinstance(profile, str | Path):
        return profile
    from taps_ray.speed.profile import load_profile

    return load_profile(profile)


def render_markdown(report: Report) -> str:
    from taps_ray.evaluation.summary import overview_markdown

    out = [f"# taps-ray report\n\n{report.summary}"]
    out += [f"\n> warning: {note}" for note in report.notes]
    if report.overview is not None:
        out.append(overview_markdown(report.overview))
    kinds = {k.name: k for k in TABLES}
    for temp, per in report.tables.items():
        for name, table in per.items():
            out.append(f"\n## {kinds[name].title}, T={temp_key(temp)}\n\n"
                       + to_markdown(table, kinds[name].digits))
        for speed in report.speed_at(temp):
            out.append(f"\n## {speed.title}, T={temp_key(temp)}\n\n{speed.caption}\n\n"
                       + to_markdown(speed.table, 2))
    if not report.routing.empty:
        out.append("\n## Routing shares (steps and prompt turns per drafter)\n\n"
                   + to_markdown(report.routing.set_index("temperature"), 3, "T"))
    if not report.diagnostics.empty:
        out.append("\n## Draft confidence and entropy, accepted vs rejected tokens\n\n"
                   + to_markdown(report.diagnostics.set_index("temperature"), 3, "T"))
    return "\n".join(out) + "\n"


def render_csv(tables: dict[float, dict[str, object]]) -> str:
    """All label x benchmark tables in one CSV: table, temperature, label, benchmarks..., mean."""
    import pandas as pd

    frames = [t.reset_index().assign(table=name, temperature=temp)
              for temp, per in tables.items() for name, t in per.items()]
    long = pd.concat(frames, ignore_index=True)
    bench = bench_order(set(long.columns) - {"table", "temperature", "label", "mean"})
    return long[["table", "temperature", "label", *bench, "mean"]].to_csv(index=False)


def write_report(report: Report, out: str | Path) -> list[Path]:
    """Write tables.md/.csv, speed.csv, PNGs and report.html to `out`, each via a temp file and
    a rename."""
    from taps_ray.evaluation.html import render_report_html
    from taps_ray.evaluation.speed_columns import render_speed_csv

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TapsError(f"--out '{out}' is a file; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    files = {"tables.md": render_markdown(report).encode(),
             "tables.csv": render_csv(report.tables).encode()}
    if report.speed:
        files["speed.csv"] = render_speed_csv(report.speed).encode()
    if not report.routing.empty:
        files["routing.csv"] = report.routing.to_csv(index=False).encode()
    if not report.diagnostics.empty:
        files["diagnostics.csv"] = report.diagnostics.to_csv(index=False).encode()
    files |= {p.name: p.png for p in report.plots}
    files["report.html"] = render_report_html(report).encode()  # last: the page means "done"
    return [write_atomic(out / name, data) for name, data in files.items()]


def write_atomic(path: Path, data: bytes) -> Path:
    """Write to a hidden temp name in the same folder, then rename: never a half file. The
    temp name is per process, so concurrent writers of one path (parallel trials filling a
    shared cache) never write into each other's temp file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
