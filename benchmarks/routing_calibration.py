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


def heads_in(folder: str) -> list[str]:
    """The drafter folders (those with a taps.json) directly under a --drafters folder."""
    return sorted(p.name for p in Path(folder).iterdir() if (p / "taps.json").is_file())


def summary(rows_dir: str, drafters_dirs: list[str], math: str = "math-hass",
            chat: str = "chat-hass") -> dict:
    """`math` / `chat`: the heads' drafter names in the rows, comma-separated when the rows
    route more than one pair (MT-Bench should go to a chat head, the other benchmarks to a math
    head)."""
    maths, chats = set(math.split(",")), set(chat.split(","))
    rows = load_inputs([rows_dir]).rows
    rows = rows[rows["temperature"] == 0.0]  # T = 0 replay (a folder may hold live T = 1 rows)
    taus = tau_table(rows)
    shares = routing_shares(rows)
    out: dict = {"tau": {}, "step_share_to_home": {}, "prompt_share_to_home": {}}
    for label in taus.index:
        out["tau"][label] = {b: round(float(taus.loc[label, b]), 4)
                             for b in [*BENCHES, "mean"] if b in taus.columns}
    for (label, bench), group in shares.groupby(["label", "benchmark"]):
        home = group[group["drafter"].isin(chats if bench == "mt_bench" else maths)]
        for key, col in (("step_share_to_home", "step_share"),
                         ("prompt_share_to_home", "prompt_share")):
            value = float(home[col].sum()) if len(home) else 0.0
            out[key].setdefault(label, {})[bench] = round(value, 4)
    out["mt_bench_by_category"] = by_category(rows, chats)
    out["calibrations"] = {
        f"{folder}/{name}": read_meta(Path(folder) / name).extra.get("confidence_calibration", {})
        for folder in drafters_dirs for name in heads_in(folder)
    }
    for cal in out["calibrations"].values():  # the map itself lives in the drafter's taps.json
        for key in ("x", "y", "trust_weights"):
            cal.pop(key, None)
    out["routing_scores"] = {  # route-learned's joint fits (weights stay in taps.json)
        f"{folder}/{name}": {k: v for k, v in score.items() if k != "weights"}
        for folder in drafters_dirs for name in heads_in(folder)
        if (score := read_meta(Path(folder) / name).extra.get("routing_score"))}
    return out


def source_line(source: str) -> str:
    return f"Source: `{source}` (`python benchmarks/routing_calibration.py`)"


def by_category(rows, chats: set[str]) -> dict:
    """Per routed label: the share of MT-Bench steps sent to a head of `chats`, by the prompt's
    category (MT-Bench holds math, reasoning and coding prompts where a chat head need not be
    the better one) and over every category but math."""
    from taps_ray.data.registry import load_records

    category = {r.id: r.category for r in load_records("mt_bench")}
    out: dict = {}
    mt = rows[rows["benchmark"] == "mt_bench"]
    for label, group in mt.groupby("strategy"):
        if not label.startswith(("route", "bandit")):  # one head, an average or a merged tree
            continue
        counts: dict[str, list[int]] = {}
        for prompt_id, raw in zip(group["prompt_id"], group["route_counts"], strict=True):
            steps = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
            seen = counts.setdefault(category[prompt_id], [0, 0])
            seen[0] += sum(steps.get(chat, 0) for chat in chats)
            seen[1] += sum(steps.values())
        not_math = [sum(v[i] for c, v in counts.items() if c != "math") for i in (0, 1)]
        out[label] = {"by_category": {c: {"steps": v[1], "to_chat": round(v[0] / v[1], 4)}
                                      for c, v in sorted(counts.items())},
                      "all_but_math": round(not_math[0] / max(not_math[1], 1), 4)}
    return out


def table(s: dict, source: str) -> str:
    """The Markdown table of docs/results.md, one row per label of summary.json (strategy and,
    in brackets, its drafter set; tests/test_docs_figures.py checks it against `source`)."""
    head = ("| strategy (drafters) | MT-Bench steps to chat | GSM8K steps to math | "
            "MATH-500 to math | SVAMP to math | tau MT-Bench | GSM8K | MATH-500 | SVAMP | mean |")
    lines = [head, "|" + " --- |" * 10]
    for label, tau in s["tau"].items():
        shares = s["step_share_to_home"].get(label)
        cells = [f"{100 * shares[b]:.1f} %" if b in shares else "-" for b in BENCHES] \
            if shares else ["-"] * 4
        taus = [f"{tau[b]:.2f}" if b in tau else "-" for b in [*BENCHES, "mean"]]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(taus) + " |")
    return "\n".join([*lines, "", source_line(source)])


def heldout_table(s: dict, math: str, chat: str, source: str) -> str:
    """The held-out figures of the routing score fitted for `math` and `chat` (as stored with
    the fit): per rule, the positions sent to each domain's head and the tokens accepted."""
    fits = [v for v in s.get("routing_scores", {}).values() if v["heads"] == [math, chat]]
    if not fits:
        return ""
    held = fits[0]["fitted_on"]["heldout"]
    lines = [f"| rule | MathInstruct: to {math} | MathInstruct: accepted / position | "
             f"ShareGPT: to {chat} | ShareGPT: accepted / position |", "|" + " --- |" * 5]
    for rule, row in held.items():
        m, c = row["mathinstruct"], row["sharegpt"]
        lines.append(f"| {rule} | {100 * m['shares'][math]:.1f} % | "
                     f"{m['accepted_per_position']:.3f} | {100 * c['shares'][chat]:.1f} % | "
                     f"{c['accepted_per_position']:.3f} |")
    return "\n".join([*lines, "", source_line(source)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="docs/results/routing-calibration/routing-calibration")
    parser.add_argument("--drafters", nargs="+",
                        default=["runs/calibrated", "runs/calibrated-isotonic"])
    parser.add_argument("--out", default="docs/results/routing-calibration/summary.json")
    parser.add_argument("--math", default="math-hass",
                        help="the math heads' drafter names, comma-separated")
    parser.add_argument("--chat", default="chat-hass",
                        help="the chat heads' drafter names, comma-separated")
    args = parser.parse_args()
    s = summary(args.rows, args.drafters, args.math, args.chat)
    Path(args.out).write_text(json.dumps(s, indent=2) + "\n")
    print(table(s, args.out))
    for math in args.math.split(","):
        for chat in args.chat.split(","):
            held = heldout_table(s, math, chat, args.out)
            if held:
                print("\n" + held)


if __name__ == "__main__":
    main()
