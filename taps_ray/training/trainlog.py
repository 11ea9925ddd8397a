"""The training log (`train_log.jsonl`, one JSON object per step or epoch) and its PNG curve."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

LOG_FILE, CURVE_FILE = "train_log.jsonl", "loss_curve.png"
CURVE_PARTS = ("loss", "feature", "ce", "topk")


class TrainLog:
    """Appends rows to `<out>/train_log.jsonl`; a resumed run drops rows past its checkpoint."""

    def __init__(self, out_dir: Path, resumed: object | None = None):
        """`resumed`: the TrainState restored from the checkpoint (None: start a new log)."""
        self.path = Path(out_dir) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(self.path) if _before(r, resumed)] if resumed else []
        self.kept = kept  # rows carried over from before the checkpoint
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self._file = self.path.open("a")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _before(row: dict, state: object) -> bool:
    """Whether a row was written before the checkpoint that `state` came from."""
    if row.get("event") == "epoch":
        return row["epoch"] < state.epoch
    return row["step"] <= state.step


def read_log(path: Path) -> list[dict]:
    """Rows of a log file; a torn last line (killed mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_loss_curve(rows: list[dict], path: Path) -> None:
    """Loss parts against step (raw and smoothed) as a PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r for r in rows if r.get("event") == "step"]
    if not steps:
        return
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = [r["step"] for r in steps]
    for part in CURVE_PARTS:
        y = [r.get(part) for r in steps]
        if any(v for v in y if v is not None):
            (line,) = ax.plot(x, y, alpha=0.25, linewidth=0.8)
            ax.plot(x, _smooth(y), color=line.get_color(), label=part)
    ax.set(xlabel="optimizer step", ylabel="loss", yscale="log", title="drafter training")
    ax.legend()
    ax.grid(alpha=0.3)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def _smooth(values: list[float | None], window: int = 20) -> list[float]:
    out, acc = [], []
    for v in values:
        acc = (acc + [v if v is not None and math.isfinite(v) else 0.0])[-window:]
        out.append(sum(acc) / len(acc))
    return out
