"""`taps-ray report`: tau arithmetic checked by hand on tiny synthetic result files."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taps_ray.cli import main
from taps_ray.errors import TapsError
from taps_ray.evaluation.plots import depth_curves, interpolation_curves, interpolation_plots
from taps_ray.evaluation.report import (
    build_report,
    load_inputs,
    routing_shares,
    tau_table,
    to_markdown,
    write_report,
)
from taps_ray.evaluation.results import ResultRow, write_rows


def row(label: str, bench: str, prompt: str, tau: float, steps: int, temperature: float = 0.0,
        **kw) -> ResultRow:
    values = dict(
        run_id="r1", target="tiny", drafters=[label], method="eagle2", strategy=label,
        budget_mode="", benchmark=bench, prompt_id=prompt, turn=0, temperature=temperature,
        seed=0, new_tokens=int(tau * steps), steps=steps, tau=tau, wall_s=1.0,
        tokens_per_s=tau * steps, verify_tokens_per_step=8.0, accepted_by_depth=[0.5, 0.25],
        route_counts=json.dumps({label: steps}), total_tokens=8, depth=2, top_k=2,
        node="test", git_rev="test", created_at=0.0)
    return ResultRow(**{**values, **kw})


def hand_rows() -> list[ResultRow]:
    # math-eagle2, gsm8k: pooled (2*10 + 4*30) / 40 = 3.5; per prompt (2 + 4) / 2 = 3.0.
    # math-eagle2, mt_bench: 1.5 both ways. Means: pooled 2.5, per prompt 2.25.
    return [row("math-eagle2", "gsm8k", "p1", 2.0, 10), row("math-eagle2", "gsm8k", "p2", 4.0, 30),
            row("math-eagle2", "mt_bench", "q1", 1.5, 2)]


def test_pooled_and_per_prompt_tau_by_hand(tmp_path):
    write_rows(hand_rows(), str(tmp_path), "r1")
    report = build_report([str(tmp_path)], with_plots=False)
    pooled = report.tables[0.0]["pooled-tau"]
    per_prompt = report.tables[0.0]["per-prompt-tau"]
    assert list(pooled.columns) == ["mt_bench", "gsm8k", "mean"]  # paper order, then mean
    assert pooled.loc["math-eagle2"].tolist() == pytest.approx([1.5, 3.5, 2.5])
    assert per_prompt.loc["math-eagle2"].tolist() == pytest.approx([1.5, 3.0, 2.25])


def test_tokens_per_s_and_verify_tables_are_pooled(tmp_path):
    rows = [row("a-eagle2", "gsm8k", "p1", 2.0, 10, new_tokens=20, wall_s=1.0,
                verify_tokens_per_step=4.0),
            row("a-eagle2", "gsm8k", "p2", 2.0, 30, new_tokens=60, wall_s=3.0,
                verify_tokens_per_step=8.0)]
    write_rows(rows, str(tmp_path), "r1")
    report = build_report([str(tmp_path)], with_plots=False)
    (speed,) = report.speed_at(0.0)  # live rows (the default mode) only
    assert speed.table.loc["a-eagle2", "tokens/s"] == pytest.approx(80 / 4)
    tables = report.tables[0.0]
    assert tables["verify-tokens"].loc["a-eagle2", "gsm8k"] == pytest.approx((40 + 240) / 40)


def test_temperatures_get_their_own_tables(tmp_path):
    rows = [row("a-hass", "svamp", "p1", 3.0, 5), row("a-hass", "svamp", "p1", 2.0, 5, 1.0)]
    write_rows(rows, str(tmp_path), "r1")
    tables = build_report([str(tmp_path)], with_plots=False).tables
    assert list(tables) == [0.0, 1.0]
    assert tables[0.0]["pooled-tau"].loc["a-hass", "svamp"] == pytest.approx(3.0)
    assert tables[1.0]["pooled-tau"].loc["a-hass", "svamp"] == pytest.approx(2.0)


def test_two_folders_aggregate_and_json_cli(tmp_path, capsys):
    first, second, out = tmp_path / "node1", tmp_path / "node2", tmp_path / "out"
    write_rows(hand_rows(), str(first), "r1")
    write_rows([row("chat-eagle2", "gsm8k", "p1", 2.0, 4, run_id="r2")], str(second), "r2")
    # The second folder as a URI: the same pyarrow filesystem path object stores take.
    assert main(["report", str(first), second.as_uri(), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    tables = json.loads(captured.out)
    assert tables["0"]["math-eagle2"] == {"mt_bench": 1.5, "gsm8k": 3.5, "mean": 2.5}
    assert tables["0"]["chat-eagle2"] == {"mt_bench": None, "gsm8k": 2.0, "mean": 2.0}
    assert "warning" not in captured.err
    names = {p.name for p in out.iterdir()}
    assert {"tables.md", "tables.csv", "report.html"} <= names
    assert any(n.endswith(".png") for n in names) and not any(n.endswith(".tmp") for n in names)
    csv = pd.read_csv(out / "tables.csv")
    assert set(csv["table"]) == {"pooled-tau", "per-prompt-tau", "verify-tokens"}
    assert set(pd.read_csv(out / "speed.csv")["table"]) == {"live-speed"}
    assert "| math-eagle2 | 1.50 | 3.50 | 2.50 |" in (out / "tables.md").read_text()


def test_repeated_rows_are_counted_and_warned(tmp_path, capsys):
    path = write_rows(hand_rows(), str(tmp_path / "res"), "r1")
    assert main(["report", path, str(tmp_path / "res"), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: 3 result rows repeat" in err
    # Nothing is dropped: the duplicated file weighs twice, which the warning explains.
    assert "3 result rows repeat" in (tmp_path / "o" / "tables.md").read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "columns"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    target = tmp_path / "in"
    if case == "empty":
        target.mkdir()
    elif case == "columns":
        target.mkdir()
        pq.write_table(pa.table({"tau": [1.0]}), target / "x.parquet")
    assert main(["report", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("taps-ray: error:")
    fragment = {"missing": "does not exist", "empty": "no result files",
                "columns": "lacks the columns"}[case]
    assert fragment in err[0]
    assert not (tmp_path / "out").exists()


def test_routing_shares_steps_and_prompt_majority():
    label = "route-confidence/step"
    counts = [{"math-eagle2": 8, "chat-eagle2": 2}, {"math-eagle2": 1, "chat-eagle2": 3},
              {"math-eagle2": 2, "chat-eagle2": 2}]  # a tie splits the prompt turn
    df = pd.DataFrame([{**row(label, "gsm8k", f"p{i}", 2.0, sum(c.values())).__dict__,
                        "route_counts": json.dumps(c)} for i, c in enumerate(counts)]
                      + [row("math-eagle2", "gsm8k", "p0", 2.0, 3).__dict__])
    shares = routing_shares(df).set_index("drafter")
    assert set(shares["label"]) == {label}  # a single drafter is not a routed strategy
    assert shares.loc["math-eagle2", "step_share"] == pytest.approx(11 / 18)
    assert shares.loc["math-eagle2", "prompt_share"] == pytest.approx(1.5 / 3)
    assert shares.loc["chat-eagle2", "prompt_share"] == pytest.approx(1.5 / 3)


def test_acceptance_by_depth_is_step_weighted():
    df = pd.DataFrame([row("a-eagle2", "gsm8k", "p1", 2.0, 10, accepted_by_depth=[1.0]).__dict__,
                       row("a-eagle2", "gsm8k", "p2", 2.0, 30,
                           accepted_by_depth=[0.0, 0.5]).__dict__])
    assert depth_curves(df)[("a-eagle2", "gsm8k")] == pytest.approx([10 / 40, 15 / 40])


def test_diagnostics_and_mixture_plots(tmp_path):
    rows = [row(name, "gsm8k", "p1", tau, 10) for name, tau in
            [("chat-hass", 2.0), ("mix50-hass", 3.0), ("mix25-hass", 2.5), ("math-hass", 4.0)]]
    write_rows(rows, str(tmp_path), "r1")
    diag = pd.DataFrame({"run_id": "r1", "strategy": "math-hass", "benchmark": "gsm8k",
                         "temperature": 0.0, "kind": ["accepted", "accepted", "rejected"],
                         "confidence": [0.6, 0.4, 0.1], "entropy": [0.5, 1.5, 3.0]})
    pq.write_table(pa.Table.from_pandas(diag), tmp_path / "r1" / "diagnostics-u1.parquet")
    report = build_report([str(tmp_path)])
    assert len(report.inputs.rows) == 4  # the diagnostics file is not read as result rows
    summary = report.diagnostics.iloc[0]
    assert summary["confidence_accepted"] == pytest.approx(0.5)
    assert summary["entropy_rejected"] == pytest.approx(3.0)
    names = [p.name for p in report.plots]
    assert "mixture-heatmap-t0.png" in names and "diagnostics-t0.png" in names
    assert all(p.png.startswith(b"\x89PNG") for p in report.plots)
    mixture = report.tables[0.0]["pooled-tau"]
    assert mixture.loc["mix25-hass", "gsm8k"] == pytest.approx(2.5)


def test_interrupted_write_leaves_no_half_file(tmp_path, monkeypatch):
    write_rows(hand_rows(), str(tmp_path / "res"), "r1")
    report = build_report([str(tmp_path / "res")], with_plots=False)
    import taps_ray.evaluation.html as page

    monkeypatch.setattr(page, "render_report_html", lambda _r: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_report(report, tmp_path / "out")
    # Everything is rendered before the first write, so a failure leaves no file at all.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_load_inputs_rejects_an_empty_path_list():
    with pytest.raises(TapsError, match="at least one"):
        load_inputs([])


def test_replay_caller_api_still_works():
    df = pd.DataFrame([r.__dict__ for r in hand_rows()])
    text = to_markdown(tau_table(df))
    assert text.splitlines()[0] == "| drafter / strategy | mt_bench | gsm8k | mean |"
    assert "| math-eagle2 | 1.50 | 3.50 | 2.50 |" in text


def test_interpolation_curve_orders_weights_and_counts_plain_average_as_half():
    table = pd.DataFrame(
        {"gsm8k": [1.2, 1.5, 1.4, 1.9, 1.0, 2.0], "mean": [1.1, 1.4, 1.3, 1.8, 1.0, 2.0]},
        index=["average@1 (s)", "average (s)", "average@0.25 (s)", "average@0 (s)",
               "average@0.5 (other)", "math-eagle2"])
    curves = interpolation_curves(table)
    assert list(curves) == ["s"]  # "other" has one point only; math-eagle2 is no average
    assert list(curves["s"]) == [0.0, 0.25, 0.5, 1.0]
    assert curves["s"][0.5]["gsm8k"] == 1.5
    plots = interpolation_plots(table, 0.0)
    assert [p.name for p in plots] == ["interpolation-s-t0.png"]
    assert plots[0].png.startswith(b"\x89PNG")
