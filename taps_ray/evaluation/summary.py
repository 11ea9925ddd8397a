"""The report's opening block: what was chosen, how fast it is live, the best tau, the machine.

Inputs are plain data: result rows, the pooled tau tables, a best configuration (the dict of a
`best_config.yaml`, read loosely so older and newer files both work) and an optional machine
profile (taps_ray.speed.profile.CostProfile). Nothing here measures; it only selects and formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from taps_ray.errors import TapsError
from taps_ray.evaluation.speed_columns import (
    LIVE_MARK,
    PLAIN,
    SPEEDUP,
    base_label,
    live_speed_table,
    profile_slug,
)

TV_POINTS = (1, 4, 16, 64)  # tree sizes n at which the summary quotes Tv(n) / T1
PLAIN_STRATEGIES = ("plain", "none")  # `none` is serving's name for plain decoding


@dataclass
class Overview:
    chosen: str  # one line: the chosen configuration, or why there is none
    table: object  # DataFrame indexed by benchmark (see overview_table)
    profile: list[str] = field(default_factory=list)  # lines: key fields, T1, Tv(n)/T1
    notes: list[str] = field(default_factory=list)


def read_best_config(best_config) -> tuple[dict | None, str]:
    """(contents, where from) of a best configuration given as a dict, a path or None."""
    import yaml

    if best_config is None or isinstance(best_config, dict):
        return best_config, "" if best_config is None else "given"
    path = Path(best_config)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise TapsError(f"cannot read the best configuration '{path}' ({err}); give a "
                        "best_config.yaml a quickstart or sweep wrote") from None
    if not isinstance(data, dict):
        raise TapsError(f"best configuration '{path}' is not a mapping; give a best_config.yaml")
    return data, str(path)


def find_best_config(paths: list[str]) -> Path | None:
    """`best_config.yaml` in or beside the first local input folder (a quickstart's layout:
    DIR/results is the input, DIR/best_config.yaml the choice)."""
    if not paths or "://" in paths[0]:
        return None
    root = Path(paths[0]).resolve()
    for candidate in (root / "best_config.yaml", root.parent / "best_config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def chosen_label(best: dict) -> str:
    """The row label (without a drafter-set tag) the best configuration's rows carry."""
    strategy = str(best.get("strategy", "single"))
    names = drafter_names(best)
    if strategy in PLAIN_STRATEGIES or not names:
        return PLAIN
    if strategy == "single":
        return names[0]
    options = best.get("strategy_options") or {}
    mode = options.get("budget") or options.get("granularity")
    label = f"{strategy}/{mode}" if mode else strategy
    weights = options.get("weights")
    return f"{label}@{float(weights[0]):g}" if strategy == "average" and weights else label


def drafter_names(best: dict) -> list[str]:
    """Drafter folders are named after their drafters (<data>-<method>)."""
    return [Path(str(d)).name for d in best.get("drafters") or []]


def describe(best: dict | None, source: str) -> str:
    if best is None:
        return "No best configuration given (pass --best-config FILE)."
    where = f" ({source})" if source and source != "given" else ""
    if str(best.get("strategy")) in PLAIN_STRATEGIES or not best.get("drafters"):
        reason = best.get("reason") or "no speculative configuration was chosen"
        return f"Plain decoding, no speculation{where}: {reason}."
    tree = best.get("tree") or {}
    shape = "/".join(str(tree.get(k, "?")) for k in ("total_tokens", "depth", "top_k"))
    what = (f"{drafter_names(best)[0]} alone" if best.get("strategy") == "single"
            else f"{chosen_label(best)} over {', '.join(drafter_names(best))}")
    text = (f"{what}, tree {shape} "
            f"(total_tokens/depth/top_k){where.replace(' (', ', from ').rstrip(')')}")
    if best.get("metric"):
        text += f"; chosen by {best['metric']} = {_num(best.get('value'))}"
    return text + (f"; {best['reason']}" if best.get("reason") else "") + "."


def chosen_rows(rows, best: dict):
    """Live rows of the chosen configuration: same label, drafters and tree."""
    label = chosen_label(best)
    live = rows[rows["mode"] == "live"] if "mode" in rows.columns else rows
    mine = live[live["strategy"].map(base_label) == label]
    if label == PLAIN:
        return mine
    names = set(drafter_names(best))
    mine = mine[mine["drafters"].map(lambda d: {str(x) for x in d} == names)]
    tree = best.get("tree") or {}
    for key in ("total_tokens", "depth", "top_k"):
        if key in tree and key in mine.columns:
            mine = mine[mine[key] == int(tree[key])]
    return mine


def overview_table(rows, tau_tables: dict, best: dict | None):
    """Per benchmark: the chosen configuration's live speedup and tau (per temperature), and the
    best pooled tau at the lowest temperature with the label that reached it."""
    import pandas as pd

    columns: dict[str, pd.Series] = {}
    if best is not None:
        mine = chosen_rows(rows, best)
        for temp in sorted(mine["temperature"].unique()) if len(mine) else []:
            speed = live_speed_table(_with_plain(rows, mine, temp), float(temp))
            speed = speed.reset_index()
            speed = speed[speed["label"].map(base_label) == chosen_label(best)]
            speed = speed.set_index("benchmark")
            columns[f"chosen: {SPEEDUP}, T={temp:g}"] = speed[SPEEDUP]
            columns[f"chosen: tau (live), T={temp:g}"] = speed["tau"]
    if tau_tables:
        temp = min(tau_tables)
        pooled = tau_tables[temp]["pooled-tau"].drop(columns="mean", errors="ignore")
        keep = [x for x in pooled.index if x.removesuffix(LIVE_MARK) != PLAIN]
        pooled = pooled.loc[keep]
        if not pooled.empty:
            columns[f"best tau, T={temp:g}"] = pooled.max()
            columns["best-tau configuration"] = pooled.apply(_best_label)
    from taps_ray.evaluation.report import bench_order

    table = pd.DataFrame(columns)
    table = table.reindex(bench_order({str(b) for b in table.index}))
    table.index.name = "benchmark"
    return table


def profile_lines(profile) -> list[str]:
    """Key fields, T1 and Tv(n)/T1 at a few n, one short line each."""
    key = profile.key
    ratios = ", ".join(f"n={n}: {profile.tv(n) / profile.t1_s:.2f}" for n in TV_POINTS)
    return [f"profile `{profile_slug(profile)}` (created {getattr(profile, 'created_at', '?')})",
            f"target {key.target}, dtype {key.dtype}, device {key.device}, "
            f"{key.threads} threads, kernels {key.kernels}",
            f"T1 (one plain decoding step) = {profile.t1_s * 1e3:.1f} ms, i.e. "
            f"{1 / profile.t1_s:.1f} tokens/s plain",
            f"Tv(n)/T1 (verify an n-token tree, in plain steps): {ratios}"]


def build_overview(rows, tau_tables: dict, best_config=None, profile=None) -> Overview:
    best, source = read_best_config(best_config)
    overview = Overview(describe(best, source), overview_table(rows, tau_tables, best))
    if profile is not None:
        overview.profile = profile_lines(profile)
    if best is not None and not any(c.startswith("chosen:") for c in overview.table.columns):
        overview.notes.append("no live rows of the chosen configuration (with plain rows of the "
                              "same run) in these results: its live speedup is not shown")
    return overview


def _with_plain(rows, mine, temperature):
    """The chosen rows plus the plain rows of their runs, at one temperature."""
    import pandas as pd

    live = rows[rows["mode"] == "live"] if "mode" in rows.columns else rows
    plain = live[(live["strategy"].map(base_label) == PLAIN)
                 & live["run_id"].isin(set(mine["run_id"]))]
    both = pd.concat([mine, plain]).drop_duplicates(subset=["run_id", "strategy", "benchmark",
                                                            "prompt_id", "turn", "temperature"])
    return both[both["temperature"] == temperature]


def _best_label(column) -> str:
    column = column.dropna()
    return "-" if column.empty else str(column.idxmax())


def _num(value) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def overview_markdown(overview: Overview) -> str:
    """The opening block of tables.md: chosen configuration, per-benchmark glance, profile."""
    from taps_ray.evaluation.report import to_markdown

    out = [f"\n## At a glance\n\n**Chosen configuration:** {overview.chosen}"]
    out += [f"\n> note: {note}" for note in overview.notes]
    if not overview.table.empty:
        out.append("\n" + to_markdown(overview.table, 2, "benchmark"))
    if overview.profile:
        out.append("\n**Hardware profile:** " + overview.profile[0] + "\n\n"
                   + "\n".join(f"- {line}" for line in overview.profile[1:]))
    return "\n".join(out)
