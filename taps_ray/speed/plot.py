"""The verify-cost curve of a profile as a PNG: Tv(n) / T1 against the tokens verified."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from taps_ray.evaluation.plots import Plot
from taps_ray.speed.profile import CostProfile


def verify_curve_plot(profile: CostProfile, name: str = "verify-cost.png") -> Plot:
    """A report `Plot`: one line of Tv(n)/T1 per measured KV length, a dashed line at 1."""
    from matplotlib.figure import Figure  # never pyplot: no global figure state

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for kv in sorted(profile.verify_s):
        curve = sorted(profile.verify_s[kv].items())
        ax.plot([n for n, _ in curve], [s / profile.t1_s for _, s in curve], marker="o",
                label=f"KV length {kv}")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="one plain step (T1)")
    ax.set_xlabel("tokens verified in one step, n (draft nodes + root)", fontsize=11)
    ax.set_ylabel("verify time / plain step time, Tv(n) / T1", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=10)
    key = profile.key
    title = (f"Verify cost on {key.device} ({key.target}, {key.dtype}, {key.threads} threads, "
             f"T1 = {profile.t1_s * 1e3:.1f} ms)")
    ax.set_title(textwrap.fill(title, 80), fontsize=10)  # device names run long
    return _as_plot(fig, name, title)


def _as_plot(fig, name: str, title: str) -> Plot:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    alt = ("Line plot of the time of one tree-verify step divided by one plain decoding step, "
           "against the number of tokens verified, per KV length.")
    return Plot(name, title, alt, buffer.getvalue())


def save_verify_curve(profile: CostProfile, path: str | Path) -> Path:
    """Write the curve as a PNG file (atomically)."""
    from taps_ray.evaluation.report import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, verify_curve_plot(profile, path.name).png)
