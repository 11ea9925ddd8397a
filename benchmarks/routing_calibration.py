"""Summarise confidence routing before/after calibration (issue 18, deliverable 4).

Reads the rows of `taps-ray bench experiments/bench_routing_calibration.yaml` (or of the
self-distilled pair's routing runs) and the drafters' taps.json; writes summary.json (routing
shares, pooled tau, the calibrations' and routing scores' held-out metrics) and prints the
Markdown table of docs/results.md.

    python benchmarks/routing_calibration.py [--rows DIR] [--drafters DIR...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from taps_ray.evaluation.report import load_inputs, tau_table
from taps_ray.evaluation.routing import routing_shares
from taps_ray.models.drafter import read_meta

BENCHES = ["mt_bench", "gsm8k", "math500", "svamp"]
SETS = ("raw", "calibrated")
FOLDERS = ("math-hass", "chat-hass")  # the heads' folder names under each --drafters folder


def summary(rows_dir: str, drafters_dirs: list[str], math: str = "math-hass",
            chat: str = "chat-hass") -> dict:
    """`math` / `chat`: the heads' drafter names in the rows (MT-Bench should go to `chat`,
    the other benchmarks to `math`)."""
    rows = load_inputs([rows_dir]).rows
    rows = rows[rows["temperature"] == 0.0]  # T = 0 replay (a folder may hold live T = 1 rows)
    taus = tau_table(rows)
    shares = routing_shares(rows)
    out: dict = {"tau": {}, "step_share_to_home": {}, "prompt_share_to_home": {}}
    for label in taus.index:
        out["tau"][label] = {b: round(float(taus.loc[label, b]), 4)
                             for b in [*BENCHES, "mean"] if b in taus.columns}
    for (label, bench), group in shares.groupby(["label", "benchmark"]):
        home = group[group["drafter"] == (chat if bench == "mt_bench" else math)]
        for key, col in (("step_share_to_home", "step_share"),
                         ("prompt_share_to_home", "prompt_share")):
            value = float(home[col].iloc[0]) if len(home) else 0.0
            out[key].setdefault(label, {})[bench] = round(value, 4)
    out["calibrations"] = {
        f"{folder}/{name}": read_meta(Path(folder) / name).extra.get("confidence_calibration", {})
        for folder in drafters_dirs for name in FOLDERS
    }
    for cal in out["calibrations"].values():  # the map itself lives in the drafter's taps.json
        for key in ("x", "y", "trust_weights"):
            cal.pop(key, None)
    out["routing_scores"] = {  # route-learned's joint fits (weights stay in taps.json)
        f"{folder}/{name}": {k: v for k, v in score.items() if k != "weights"}
        for folder in drafters_dirs for name in FOLDERS
        if (score := read_meta(Path(folder) / name).extra.get("routing_score"))}
    return out


def table(s: dict) -> str:
    head = ("| drafters | strategy | MT-Bench steps to chat | GSM8K steps to math | "
            "MATH-500 to math | SVAMP to math | tau MT-Bench | GSM8K | MATH-500 | SVAMP | mean |")
    lines = [head, "|" + " --- |" * 11]
    for label, tau in s["tau"].items():
        shares = s["step_share_to_home"].get(label)
        cells = [f"{100 * shares[b]:.1f} %" if b in shares else "-" for b in BENCHES] \
            if shares else ["-"] * 4
        name, _, rest = label.partition(" (")
        taus = [f"{tau[b]:.2f}" if b in tau else "-" for b in [*BENCHES, "mean"]]
        lines.append(f"| {rest.rstrip(')') or '-'} | {name} | " + " | ".join(cells) + " | "
                     + " | ".join(taus) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="docs/results/routing-calibration/routing-calibration")
    parser.add_argument("--drafters", nargs="+",
                        default=["runs/calibrated", "runs/calibrated-isotonic"])
    parser.add_argument("--out", default="docs/results/routing-calibration/summary.json")
    parser.add_argument("--math", default="math-hass", help="the math head's drafter name")
    parser.add_argument("--chat", default="chat-hass", help="the chat head's drafter name")
    args = parser.parse_args()
    s = summary(args.rows, args.drafters, args.math, args.chat)
    Path(args.out).write_text(json.dumps(s, indent=2) + "\n")
    print(table(s))


if __name__ == "__main__":
    main()
