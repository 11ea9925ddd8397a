"""Every figure table of the README comes from a committed output: each names its source on the
line after it (`Source: `path``), and every number in it equals that file's value for its row
and column at the precision shown (so do the docs/ tables whose source has a reader here).
Every source and script the docs cite exists."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tests.markdown_tables import Table, numbers, shown_equal, tables

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
NOT_FIGURES = {"command", "launch path"}  # reference tables: commands, ports
BENCHMARKS = {"MT-Bench": "mt_bench", "GSM8K": "gsm8k", "MATH-500": "math500", "SVAMP": "svamp",
              "mean": "mean"}


def tau_csv(path: Path):
    """tables.csv of a report: pooled tau at T = 0 by row label and benchmark."""
    with path.open() as f:
        rows = [r for r in csv.DictReader(f)
                if r["table"] == "pooled-tau" and float(r["temperature"]) == 0.0]
    by_label = {r["label"]: r for r in rows}
    return lambda row, col: [float(by_label[row][BENCHMARKS[col]])]


def speed_choice(path: Path):
    """benchmarks/speed_choice.py's JSON: tokens/s (and the ratio to taps-ray plain) per row."""
    data = json.loads(path.read_text())
    names = {"generate()": "generate()",
             "generate(prompt_lookup_num_tokens=10)": "generate(prompt_lookup_num_tokens=10)",
             "taps-ray plain decoding": "taps plain",
             "served best_config.yaml (prompt lookup 4/2/2, adaptive)": "served (best_config)"}

    def lookup(row: str, col: str) -> list[float]:
        bench = BENCHMARKS[col]
        if row == "served, tau":
            return [data["results"]["served (best_config)"][bench]["tau"]]
        key = names[row]
        return [data["results"][key][bench]["tokens_per_s"],
                data["ratios"][key][bench]["vs_taps_plain"]]

    return lookup


def replay_equals_live(path: Path):
    """benchmarks/replay_equals_live.py's JSON: per strategy, live vs replay."""
    data = json.loads(path.read_text())["strategies"]
    fields = {"tau live": "tau_live", "tau replay": "tau_replay", "steps": "steps",
              "deepest accepted path": "max_accepted_depth"}
    flags = {"tokens = plain greedy": ("tokens_equal_plain",),
             "every step's accepted length and route equal": ("steps_equal", "rows_equal")}

    def lookup(row: str, col: str) -> list[float]:
        if col in flags:  # a yes/no cell: "yes" only if the output says so
            assert all(data[row][f] for f in flags[col]), (row, col)
            return []
        return [data[row][fields[col]]]

    return lookup


def learning_curve(path: Path):
    """benchmarks/learning_curve.py's summary.json: per head (method-conversations) its tau,
    tokens and accuracy; per method the fit's slope, R2 and extrapolations."""
    data = json.loads(path.read_text())
    heads = {f"{r['method']}-{r['conversations']}": r for r in data["rows"]}
    fits = {"tau per doubling": "b_per_doubling", "R2": "r2", "tau at 10x": "tau_at_10x",
            "tau at 100x": "tau_at_100x"}

    def lookup(row: str, col: str) -> list[float]:
        if row in heads:
            head = heads[row]
            if col == "assistant tokens seen":
                return [head["loss_tokens_seen"]]
            if col == "final top-1 acc":
                return [head["final_acc"]]
            return [head["tau"][BENCHMARKS[col]]]
        method, _, label = row.partition(" ")
        return [data["fits"][method][BENCHMARKS[col]][fits[label]]]

    return lookup


def calibration_study(path: Path):
    """benchmarks/calibration_study.py's JSON: per fit its held-out log-loss of each head and
    the held-out positions sent to each domain's own head; the oracle rows' tie and win counts."""
    data = json.loads(path.read_text())

    def lookup(row: str, col: str) -> list[float]:
        if row.startswith("oracle ("):  # its figures sit in the MathInstruct column
            if not col.startswith("MathInstruct"):
                return []
            o = data["oracle_heldout_half"][row[len("oracle ("):-1]]
            decisive = o["own_head_longer"] + o["other_head_longer"]
            return [100 * o["tie_share"], 100 * o["own_share_of_decisive"],
                    o["own_head_longer"], decisive]
        fit = data["fits"][row]
        if col.startswith("held-out log-loss"):
            return [fit["heldout_log_loss"][0]]
        if col.startswith("MathInstruct"):
            return [100 * fit["mathinstruct_to_own_head"]]
        if col.startswith("ShareGPT"):
            return [100 * fit["sharegpt_to_own_head"]]
        return [fit["heldout_log_loss"][1]]  # the second head's log-loss column

    return lookup


def routing_summary(path: Path):
    """benchmarks/routing_calibration.py's summary: per label (strategy and drafter set) the
    share of steps sent to each benchmark's own head and the pooled tau."""
    data = json.loads(path.read_text())
    fits = list(data.get("routing_scores", {}).values())

    def lookup(row: str, col: str) -> list[float]:
        if ": " in col:  # "ShareGPT: to chat-head": the routing score's held-out figures
            source, _, what = col.partition(": ")
            held = fits[0]["fitted_on"]["heldout"][row][source.lower()]
            if what.startswith("to "):
                return [100 * held["shares"][what[3:]]]
            return [held["accepted_per_position"]]
        if " to " in col:  # "GSM8K steps to math": a routed label's step share
            shares = data["step_share_to_home"].get(row) or {}
            bench = BENCHMARKS[col.split(" ")[0]]
            return [100 * shares[bench]] if bench in shares else []
        return [data["tau"][row][BENCHMARKS[col.removeprefix("tau ")]]]

    return lookup


DOC_READERS = {"docs/results/replay-equals-live.json": replay_equals_live,  # tables in docs/
               "docs/results/replay-equals-live-60-5-10.json": replay_equals_live,
               "docs/results/learning-curve/summary.json": learning_curve,
               "docs/results/routing-calibration/calibration-study-quickstart.json":
                   calibration_study,
               "docs/results/routing-calibration/calibration-study-selfdistill.json":
                   calibration_study,
               "docs/results/routing-calibration/summary.json": routing_summary,
               "docs/results/study-selfdistill/routing-summary.json": routing_summary,
               "docs/results/study-selfdistill/routing-summary-chat2400.json": routing_summary,
               "docs/results/study-selfdistill/routing-summary-gsm8k.json": routing_summary}
READERS = {"docs/results/quickstart-default/report/tables.csv": tau_csv,
           "docs/bench/speed-choice.json": speed_choice, **DOC_READERS}


def figure_tables() -> list[Table]:
    return [t for t in tables(README.read_text()) if t.header[0] not in NOT_FIGURES]


def checked_tables() -> list[Table]:
    """The README's figure tables and the tables in docs/ whose source has a reader here."""
    docs = [t for d in DOCS[1:] for t in tables(d.read_text()) if t.source in DOC_READERS]
    return figure_tables() + docs


def test_the_readme_has_figure_tables_and_each_names_a_source():
    found = figure_tables()
    assert len(found) >= 2
    for table in found:
        assert table.source, f"README.md:{table.line}: figure table without a Source: line"
        assert table.source in READERS, f"README.md:{table.line}: no reader for {table.source}"


@pytest.mark.parametrize("table", checked_tables(), ids=lambda t: f"{t.source}:{t.line}")
def test_every_number_of_a_table_is_its_sources_value(table: Table):
    lookup = READERS[table.source](ROOT / table.source)
    checked = 0
    for row, col, cell in table.cells():
        shown = numbers(cell)
        expected = lookup(row, col)
        assert len(shown) == len(expected), f"{row} / {col}: {cell!r} vs {expected}"
        for text, value in zip(shown, expected, strict=True):
            assert shown_equal(text, value), f"{row} / {col}: README {text}, source {value}"
            checked += 1
    assert checked == sum(len(numbers(c)) for _, _, c in table.cells()) > 0


def test_a_wrong_number_is_caught():
    lookup = tau_csv(ROOT / "docs/results/quickstart-default/report/tables.csv")
    value = lookup("math-eagle2", "GSM8K")[0]
    assert shown_equal(f"{value:.2f}", value)
    assert not shown_equal(f"{value + 0.01:.2f}", value)
    with pytest.raises(KeyError):
        lookup("no-such-row", "GSM8K")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_source_and_script_exists(doc: Path):
    text = doc.read_text()
    cited = re.findall(r"Source: `([^`]+)`", text)
    cited += re.findall(r"(docs/(?:bench|results)/[\w./*-]+\.(?:json|csv|md|parquet|yaml))", text)
    cited += re.findall(r"python (benchmarks/\w+\.py)", text)
    assert cited, f"{doc.name} cites no output"
    missing = sorted({c for c in cited if not any(ROOT.glob(c))})
    assert not missing, f"{doc.name} cites files that are not committed: {missing}"
