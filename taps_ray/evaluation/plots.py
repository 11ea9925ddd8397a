"""PNG plots of a report: pure functions from DataFrames to PNG bytes (matplotlib, Agg).

Figures are built with `matplotlib.figure.Figure` directly, never pyplot, so no global figure
state or backend switch leaks into the caller (the Agg renderer is used by `savefig`).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
from matplotlib.ticker import MaxNLocator

from taps_ray.evaluation.report import bench_order, temp_key

CHAR_IN = 0.085  # inches per label character at the default 10 pt font (generous)
CELL_W, CELL_H = 0.85, 0.42  # inches per heatmap column / label line
ROW_LABEL_CHARS = 34  # longer row labels wrap onto a second line


@dataclass(frozen=True)
class Plot:
    name: str  # file name in the report folder, e.g. tau-heatmap-t0.png
    title: str  # heading above the plot
    alt: str  # alt text of the <img>: what the plot shows, in words
    png: bytes


def make_plots(tables: dict, rows, routing, diagnostics) -> list[Plot]:
    """Every plot the inputs allow, per temperature: heatmaps, depth, routing, diagnostics."""
    plots: list[Plot] = []
    for temp, per in tables.items():
        at = rows[rows["temperature"] == temp]
        plots.append(tau_heatmap(per["pooled-tau"], temp))
        if "accepted_by_depth" in at.columns:
            plots.append(depth_plot(at, temp))
        mixture = mixture_heatmap(per["pooled-tau"], temp)
        plots += [mixture] if mixture else []
        plots += interpolation_plots(per["pooled-tau"], temp)
        if not routing.empty:
            shares = routing[routing["temperature"] == temp]
            plots += [routing_plot(shares[shares["label"] == label], label, temp)
                      for label in sorted(shares["label"].unique())]
        if diagnostics is not None and (diagnostics["temperature"] == temp).any():
            plots.append(diagnostics_hist(diagnostics[diagnostics["temperature"] == temp], temp))
    return plots


def tau_heatmap(table, temperature: float, name: str = "tau-heatmap",
                title: str = "Pooled tau, drafter/strategy x benchmark") -> Plot:
    """Annotated heatmap of a label x benchmark table (mean column included).

    The figure is sized from the labels: row labels are wrapped and give the left margin,
    long column labels are rotated, and the PNG is cropped to everything drawn (tight bbox),
    so no label overlaps another or is cut off.
    """
    heading = f"{title}, T={temp_key(temperature)}"
    return _plot(heatmap_figure(table, heading), f"{name}-{_slug(temperature)}.png", heading,
                 f"Heatmap of {title.lower()} at temperature {temp_key(temperature)}: "
                 f"{table.shape[0]} rows, {table.shape[1]} columns.")


def heatmap_figure(table, heading: str):
    """The matplotlib Figure of `tau_heatmap` (tests measure its label boxes)."""
    values = table.to_numpy(dtype=float)
    rows = [_wrap(str(i), ROW_LABEL_CHARS) for i in table.index]
    cols = [str(c) for c in table.columns]
    rotate = max(map(len, cols), default=0) * CHAR_IN > CELL_W * 0.9
    longest_row = max((len(line) for r in rows for line in r.split("\n")), default=0)
    col_height = (max(map(len, cols), default=0) * CHAR_IN * 0.75) if rotate else 0.3
    width = longest_row * CHAR_IN + CELL_W * len(cols) + 1.6
    lines = max((r.count("\n") + 1 for r in rows), default=1)
    height = 1.0 + col_height + CELL_H * max(len(rows), 1) * lines
    fig = _figure(max(width, 4.5), height)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=40 if rotate else 0,
                  ha="right" if rotate else "center", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), rows)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), v in np.ndenumerate(values):
        if math.isfinite(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if v > middle else "white")
    fig.colorbar(image, ax=ax, label="tau")
    ax.set_title(_wrap(heading, max(int(width / CHAR_IN) - 6, 24)))
    return fig


def depth_curves(rows) -> dict[tuple[str, str], list[float]]:
    """{(label, benchmark): fraction of steps whose accepted length reaches depth d, d = 1..}.

    Rows' accepted_by_depth lists are averaged weighted by steps, i.e. pooled over all steps
    (DESIGN §2); shorter lists (smaller trees) are padded with 0 since they cannot reach deeper.
    """
    curves = {}
    for (label, bench), group in rows.groupby(["strategy", "benchmark"]):
        lists = [np.asarray(v, dtype=float) for v in group["accepted_by_depth"]]
        width = max((len(v) for v in lists), default=0)
        steps = group["steps"].to_numpy(dtype=float)
        if width == 0 or steps.sum() <= 0:
            continue
        padded = np.stack([np.pad(v, (0, width - len(v))) for v in lists])  # [rows, depth]
        curves[(label, bench)] = list(steps @ padded / steps.sum())
    return curves


def depth_plot(rows, temperature: float) -> Plot:
    """One panel per benchmark, one line per label: acceptance rate by tree depth."""
    curves = depth_curves(rows)
    benches = bench_order({b for _, b in curves})
    fig = _figure(3.2 * max(len(benches), 1) + 1.8, 3.2)
    axes = fig.subplots(1, max(len(benches), 1), sharey=True, squeeze=False)[0]
    for ax, bench in zip(axes, benches, strict=False):
        for (label, b), curve in sorted(curves.items()):
            if b == bench:
                ax.plot(range(1, len(curve) + 1), curve, marker="o", label=label)
        ax.set_title(bench)
        ax.set_xlabel("depth d")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of steps accepting >= d")
    legend = {}  # label -> line, across panels: a label may miss some benchmarks
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        legend |= dict(zip(labels, handles, strict=True))
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=8)
    title = f"Acceptance by depth, T={temp_key(temperature)}"
    return _plot(fig, f"acceptance-depth-{_slug(temperature)}.png", title,
                 f"Line plots of the share of steps accepting at least d draft tokens, per "
                 f"benchmark ({', '.join(benches)}), one line per drafter or strategy.")


def routing_plot(shares, label: str, temperature: float) -> Plot:
    """Stacked bars per benchmark: share of steps, and of prompt turns won, per drafter."""
    benches = bench_order(set(shares["benchmark"]))
    drafters = sorted(shares["drafter"].unique())
    fig = _figure(3.5 + 1.6 * len(benches), 3.4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, what in zip(axes, ["step_share", "prompt_share"],
                                ["steps", "prompt turns (majority)"], strict=True):
        wide = shares.pivot(index="benchmark", columns="drafter", values=column)
        wide = wide.reindex(index=benches, columns=drafters).fillna(0.0)
        bottom = np.zeros(len(benches))
        for drafter in drafters:
            ax.bar(benches, wide[drafter].to_numpy(), bottom=bottom, label=drafter)
            bottom += wide[drafter].to_numpy()
        ax.set_title(f"share of {what}")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=30)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    title = f"Routing shares of {label}, T={temp_key(temperature)}"
    return _plot(fig, f"routing-{_slug(label)}-{_slug(temperature)}.png", title,
                 f"Stacked bars per benchmark: share of steps and of prompt turns that {label} "
                 f"routed to each drafter ({', '.join(drafters)}).")


def mixture_heatmap(table, temperature: float) -> Plot | None:
    """Pooled tau of mixture drafters (mix*-<method>) between their chat and math endpoints."""
    labels = [str(i) for i in table.index]
    suffixes = {_split(x)[1] for x in labels if _split(x)[0].startswith("mix")}
    if not suffixes:
        return None
    rank = {"chat": 0, "mix": 1, "math": 2}
    keep = [x for x in labels if _split(x)[1] in suffixes and _data_kind(x) in rank]
    keep.sort(key=lambda x: (_split(x)[1], rank[_data_kind(x)], _natural(_split(x)[0])))
    return tau_heatmap(table.loc[keep], temperature, "mixture-heatmap",
                       "Pooled tau by training mixture")


_AVERAGE = re.compile(r"^average(?:@(?P<w>[0-9.]+))?(?: \((?P<set>.+)\))?$")


def interpolation_curves(table) -> dict[str, dict[float, object]]:
    """{drafter set: {w: the row of average@w}}, w = weight of the set's first drafter; plain
    `average` (equal weights of two) counts as w = 0.5. Sets with fewer than 3 points dropped."""
    curves: dict[str, dict[float, object]] = {}
    for label in table.index:
        match = _AVERAGE.match(str(label))
        if match:
            weight = float(match["w"]) if match["w"] is not None else 0.5
            curves.setdefault(match["set"] or "", {}).setdefault(weight, table.loc[label])
    return {name: dict(sorted(c.items())) for name, c in curves.items() if len(c) >= 3}


def interpolation_plots(table, temperature: float) -> list[Plot]:
    """Weight-space averaging of two drafters: tau per benchmark (and mean) against the weight."""
    plots = []
    for name, curve in interpolation_curves(table).items():
        weights = list(curve)
        fig = _figure(6.4, 4.0)
        ax = fig.add_subplot()
        for column in table.columns:
            values = [float(curve[w][column]) for w in weights]
            ax.plot(weights, values, marker="o", label=str(column),
                    linewidth=2.5 if column == "mean" else 1.5)
        ax.set(xlabel="weight of the first drafter (0 = second drafter alone, 1 = first alone)",
               ylabel="pooled tau")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        where = f" ({name})" if name else ""
        title = f"Averaging interpolation{where}, T={temp_key(temperature)}"
        ax.set_title(title)
        plots.append(_plot(fig, f"interpolation-{_slug(name or 'all')}-{_slug(temperature)}.png",
                           title, f"Pooled tau per benchmark against the averaging weight at "
                                  f"{len(weights)} weights{where}."))
    return plots


def diagnostics_hist(diag, temperature: float) -> Plot:
    """Histograms of draft confidence and entropy of accepted vs rejected tokens."""
    fig = _figure(8.0, 3.2)
    axes = fig.subplots(1, 2)
    for ax, column in zip(axes, ["confidence", "entropy"], strict=True):
        values = diag[column].to_numpy(dtype=float)
        bins = np.linspace(np.nanmin(values), np.nanmax(values) + 1e-9, 31)
        for kind, color in (("accepted", "tab:green"), ("rejected", "tab:red")):
            part = diag.loc[diag["kind"] == kind, column].to_numpy(dtype=float)
            if part.size:
                ax.hist(part, bins=bins, density=True, alpha=0.55, color=color,
                        label=f"{kind} (n={part.size}, mean {np.nanmean(part):.2f})")
        ax.set_xlabel(column)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    title = f"Draft confidence and entropy, accepted vs rejected, T={temp_key(temperature)}"
    return _plot(fig, f"diagnostics-{_slug(temperature)}.png", title,
                 "Histograms of draft confidence and draft entropy for accepted and rejected "
                 "draft tokens.")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, 24.0), min(height, 40.0)), layout="constrained")


def _plot(fig, name: str, title: str, alt: str) -> Plot:
    buffer = io.BytesIO()
    # tight: the PNG holds every label and title drawn, whatever the figure size
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", pad_inches=0.1)
    return Plot(name, title, alt, buffer.getvalue())


def _wrap(text: str, width: int) -> str:
    """Break a long label at spaces onto several lines of at most `width` characters."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def _split(label: str) -> tuple[str, str]:
    """`mix25-eagle2` -> ("mix25", "eagle2"); labels name drafters as <data>-<method>."""
    data, _, method = label.partition("-")
    return data, method


def _data_kind(label: str) -> str:
    return next((k for k in ("chat", "mix", "math") if _split(label)[0].startswith(k)), "")


def _natural(text: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def _slug(value) -> str:
    text = temp_key(value) if isinstance(value, float) else str(value)
    return ("t" if isinstance(value, float) else "") + re.sub(r"[^A-Za-z0-9]+", "_", text)
