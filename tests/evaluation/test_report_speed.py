"""Speed in the report: live rows only, speedup vs plain of the same run, predicted tokens/s
labelled as predicted, the opening summary, legible heatmaps; numbers checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

from taps_ray.cli import main
from taps_ray.errors import TapsError
from taps_ray.evaluation.plots import heatmap_figure
from taps_ray.evaluation.report import build_report, write_report
from taps_ray.evaluation.results import ResultRow, write_rows
from taps_ray.evaluation.speed_columns import (
    SPEEDUP,
    add_predicted_speed,
    live_speed_table,
    profile_slug,
    strategy_name,
)
from taps_ray.speed.profile import CostProfile, HardwareKey, save_profile
from tests.evaluation.test_report import row

COMMITTED = Path(__file__).parents[2] / "docs" / "results" / "quickstart-default"
TREE = dict(total_tokens=8, depth=2, top_k=2)


def profile() -> CostProfile:
    """T1 50 ms; Tv linear from 50 ms (n = 1) to 90 ms (n = 9); a draft round 2 ms (width 1)
    or 4 ms (width 2); 1 ms engine bookkeeping per step, 3 ms per merged tree."""
    key = HardwareKey("tiny", "float32", "cpu: test", 2, "default")
    return CostProfile(key, 0.05, {256: {1: 0.05, 9: 0.09}},
                       {"math-hass": {1: 0.002, 2: 0.004}, "chat-hass": {1: 0.002, 2: 0.004}},
                       {"step": 0.001, "merge": 0.003}, "2025-01-01", "test")


def live(label, bench, prompt, tokens, wall, run="r1", tau=1.0, steps=10, **kw) -> ResultRow:
    drafters = [] if label == "plain" else [label]
    return row(label, bench, prompt, tau, steps, new_tokens=tokens, wall_s=wall, run_id=run,
               drafters=kw.pop("drafters", drafters), mode="live", **TREE | kw)


def replay(label, bench, prompt, tau, steps=10, **kw) -> ResultRow:
    return row(label, bench, prompt, tau, steps, mode="replay", tokens_per_s=999.0,
               **TREE | kw)


def speed_rows() -> list[ResultRow]:
    # r1 gsm8k: plain 60 tokens / 3 s = 20/s; math-hass 90 / 3 s = 30/s -> 1.5x.
    # r2 gsm8k: plain 40 / 4 s = 10/s; math-hass 10 / 2 s = 5/s -> 0.5x.
    # Over both runs: math-hass (90 + 10) / (3 + 2) = 20/s; speedup mean(1.5, 0.5) = 1.0;
    # tau pooled (2 * 10 + 4 * 30 + 1.5 * 20) / 60 = 170 / 60.
    return [live("plain", "gsm8k", "p1", 20, 1.0), live("plain", "gsm8k", "p2", 40, 2.0),
            live("math-hass", "gsm8k", "p1", 30, 1.0, tau=2.0, steps=10),
            live("math-hass", "gsm8k", "p2", 60, 2.0, tau=4.0, steps=30),
            live("plain", "gsm8k", "p1", 40, 4.0, run="r2"),
            live("math-hass", "gsm8k", "p1", 10, 2.0, run="r2", tau=1.5, steps=20),
            # replay rows (same T = 0, and a benchmark with no live row): never a speed
            replay("math-hass", "gsm8k", "p1", 3.0), replay("math-hass", "svamp", "p1", 2.5)]


def test_replay_rows_never_carry_a_measured_speed():
    assert math.isnan(replay("math-hass", "gsm8k", "p1", 2.0).tokens_per_s)
    assert live("plain", "gsm8k", "p1", 20, 1.0).tokens_per_s > 0
    assert math.isnan(live("plain", "gsm8k", "p1", 20, 1.0).predicted_tokens_per_s)


def test_live_speed_table_speedup_vs_plain_of_the_same_run(tmp_path):
    write_rows(speed_rows(), str(tmp_path), "r")
    report = build_report([str(tmp_path)], with_plots=False)
    (table,) = report.speed_at(0.0)  # no profile: no predicted table
    assert table.kind == "live-speed"
    speed = table.table
    assert set(speed["benchmark"]) == {"gsm8k"}  # svamp has replay rows only
    assert list(speed.index) == ["math-hass", "plain"]  # live labels, fastest first
    mine = speed.loc["math-hass"]
    assert mine["tokens/s"] == pytest.approx(20.0)
    assert mine[SPEEDUP] == pytest.approx(1.0)
    assert mine["tau"] == pytest.approx(170 / 60)  # tau beside the speed
    assert speed.loc["plain", SPEEDUP] == pytest.approx(1.0)
    assert speed.loc["plain", "tokens/s"] == pytest.approx(100 / 7)
    text = (write_report(report, tmp_path / "out")[0]).read_text()
    assert "999" not in text and "predicted" not in text.lower()


def test_speedup_is_blank_without_plain_rows_in_that_run():
    rows = pd.DataFrame([live("math-hass", "gsm8k", "p1", 30, 1.0).__dict__,
                         live("plain", "gsm8k", "p1", 20, 1.0, run="other").__dict__])
    speed = live_speed_table(rows, 0.0)
    assert math.isnan(speed.loc["math-hass", SPEEDUP])
    assert speed.loc["math-hass", "tokens/s"] == pytest.approx(30.0)


def test_add_predicted_speed_by_hand():
    rows = pd.DataFrame([r.__dict__ for r in speed_rows()]
                        + [replay("merged/sum (s)", "gsm8k", "p1", 2.0,
                                  drafters=["math-hass", "chat-hass"],
                                  verify_tokens_per_step=9.0).__dict__])
    rows = rows.drop(columns=["predicted_tokens_per_s", "profile"])  # as an old file reads
    priced = add_predicted_speed(rows, profile())
    replayed = priced[priced["mode"] == "replay"]
    # single, tau 3, 8 verify tokens: draft 2 + 2 * 4 ms, Tv(8) = 50 + 40 * 7 / 8 = 85 ms,
    # 1 ms bookkeeping -> 3 / 0.096.
    assert replayed["predicted_tokens_per_s"].iloc[0] == pytest.approx(3 / 0.096)
    # merged/sum over two drafters, tau 2, 9 tokens: 2 drafts (20 ms) + 90 + 1 + 2 * 3 ms merge.
    assert replayed["predicted_tokens_per_s"].iloc[2] == pytest.approx(2 / 0.117)
    assert set(replayed["profile"]) == {profile_slug(profile())}
    assert priced.loc[priced["mode"] == "live", "predicted_tokens_per_s"].isna().all()
    assert rows.columns.size + 2 == priced.columns.size  # the input frame is left as it was


def test_strategy_names_read_by_the_predictor():
    assert strategy_name("math-hass", ["math-hass"]) == "single"
    assert strategy_name("merged/sum (eagle2) [live]", ["a", "b"]) == "merged/sum"
    assert strategy_name("average@0.25 (s)", ["a", "b"]) == "average@0.25"
    assert strategy_name("plain", []) == "plain"


def test_an_unpriced_drafter_raises_or_becomes_a_note(tmp_path):
    rows = pd.DataFrame([replay("mix-hass", "gsm8k", "p1", 2.0).__dict__])
    with pytest.raises(TapsError, match="calibrate"):
        add_predicted_speed(rows, profile())
    write_rows([replay("mix-hass", "gsm8k", "p1", 2.0)], str(tmp_path), "r")
    report = build_report([str(tmp_path)], with_plots=False, profile=profile())
    assert any("1 replay rows have no predicted tokens/s" in n for n in report.notes)


def test_predicted_table_is_separate_and_labelled(tmp_path):
    write_rows(speed_rows(), str(tmp_path / "in"), "r")
    path = save_profile(profile(), tmp_path / "profile.json")
    assert main(["report", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--profile", str(path)]) == 0
    report = build_report([str(tmp_path / "in")], with_plots=False, profile=str(path))
    live_table, predicted = report.speed_at(0.0)
    slug = profile_slug(profile())
    assert f"predicted tokens/s (profile {slug})" in predicted.title.lower()
    assert set(predicted.table["benchmark"]) == {"gsm8k", "svamp"}
    svamp = predicted.table[predicted.table["benchmark"] == "svamp"].iloc[0]
    assert svamp["predicted tokens/s"] == pytest.approx(2.5 / 0.096)
    assert svamp["predicted speedup vs plain (1/T1)"] == pytest.approx(2.5 / 0.096 * 0.05)
    assert "svamp" not in set(live_table.table["benchmark"])  # measured table: live only
    text = (tmp_path / "out" / "tables.md").read_text()
    assert f"Predicted tokens/s (profile {slug}), replay rows, T=0" in text
    assert "Tv(n)/T1 (verify an n-token tree, in plain steps): n=1: 1.00, n=4: 1.30" in text
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="at-a-glance"' in page and f'id="predicted-speed-{slug.replace("-", "_")}' in page
    assert (tmp_path / "out" / "verify-cost.png").is_file()


def chosen_rows() -> list[ResultRow]:
    merged = dict(drafters=["math-hass", "chat-hass"], strategy="merged/sum (hass)")
    # chosen (tree 8/2/2): gsm8k 30/s vs plain 20/s -> 1.5x; mt_bench 10/s vs 20/s -> 0.5x.
    # The same label with a 60-token tree is another configuration and must not count.
    return [live("plain", b, "p1", 20, 1.0) for b in ("gsm8k", "mt_bench")] + [
        live("x", "gsm8k", "p1", 30, 1.0, tau=1.8, **merged),
        live("x", "mt_bench", "p1", 10, 1.0, tau=1.4, **merged),
        live("x", "gsm8k", "p2", 300, 1.0, **merged | {"total_tokens": 60}),
        live("math-hass", "gsm8k", "p1", 10, 1.0, tau=2.2),
        live("chat-hass", "mt_bench", "p1", 10, 1.0, tau=1.6)]


def test_summary_names_the_chosen_drafter_configuration(tmp_path):
    write_rows(chosen_rows(), str(tmp_path / "results"), "r1")
    best = {"target": "tiny", "drafters": ["../drafters/math-hass", "../drafters/chat-hass"],
            "strategy": "merged", "strategy_options": {"budget": "sum"},
            "tree": TREE, "metric": "live_tokens_per_s", "value": 30.0}
    (tmp_path / "best_config.yaml").write_text(yaml.safe_dump(best))
    # The CLI finds best_config.yaml beside the results folder.
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "tables.md").read_text()
    assert text.index("## At a glance") < text.index("## Acceptance length")
    assert "**Chosen configuration:** merged/sum over math-hass, chat-hass, tree 8/2/2" in text
    glance = build_report([str(tmp_path / "results")], False, best).overview.table
    assert glance.loc["gsm8k", f"chosen: {SPEEDUP}, T=0"] == pytest.approx(1.5)
    assert glance.loc["mt_bench", f"chosen: {SPEEDUP}, T=0"] == pytest.approx(0.5)
    assert glance.loc["gsm8k", "chosen: tau (live), T=0"] == pytest.approx(1.8)
    assert glance.loc["gsm8k", "best tau, T=0"] == pytest.approx(2.2)
    assert glance.loc["gsm8k", "best-tau configuration"] == "math-hass"
    assert glance.loc["mt_bench", "best-tau configuration"] == "chat-hass"


def test_summary_of_a_plain_choice_says_why(tmp_path):
    write_rows(chosen_rows(), str(tmp_path / "results"), "r1")
    best = {"target": "tiny", "drafters": [], "strategy": "plain",
            "reason": "no configuration beat plain decoding by 5 %"}
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump(best))
    report = build_report([str(tmp_path / "results")], False, best_config=str(path),
                          profile=profile())
    assert report.overview.chosen.startswith("Plain decoding, no speculation")
    assert "no configuration beat plain decoding by 5 %" in report.overview.chosen
    assert report.overview.table[f"chosen: {SPEEDUP}, T=0"].tolist() == [1.0, 1.0]
    assert "T1 (one plain decoding step) = 50.0 ms, i.e. 20.0 tokens/s plain" in \
        report.overview.profile


def test_bad_best_config_exits_2(tmp_path, capsys):
    write_rows(chosen_rows(), str(tmp_path / "results"), "r1")
    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "out"),
                 "--best-config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best configuration" in err[0]


def test_committed_result_files_still_make_a_report(tmp_path):
    report = build_report([str(COMMITTED / "results")], with_plots=False,
                          best_config=COMMITTED / "best_config.yaml")
    assert [t.temperature for t in report.speed] == [1.0]  # T = 0 there is replay only
    (speed,) = report.speed
    assert speed.table.loc["plain", SPEEDUP].tolist() == [1.0, 1.0]
    assert (speed.table[SPEEDUP] < 1).sum() == len(speed.table) - 2  # all slower than plain
    assert "merged/sum over math-hass, chat-hass" in report.overview.chosen
    assert report.overview.table.loc["svamp", "best-tau configuration"] == "merged/sum (hass)"
    write_report(report, tmp_path)
    assert "Tokens/s measured live, with tau and speedup vs plain, T=1" in \
        (tmp_path / "tables.md").read_text()


def test_heatmap_labels_do_not_overlap():
    labels = [f"route-confidence/prompt (mix{k}k-hass + math-hass + chat-hass)" for k in range(6)]
    columns = ["mt_bench", "gsm8k", "math500", "svamp", "a_very_long_benchmark_name", "mean"]
    table = pd.DataFrame([[1.5] * 6] * 6, index=labels, columns=columns)
    fig = heatmap_figure(table, "Pooled tau, T=0")
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    rows = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
    assert not any(a.overlaps(b) for i, a in enumerate(rows) for b in rows[i + 1:])
    columns = ax.get_xticklabels()
    angle = math.radians(columns[0].get_rotation())
    assert angle > 0  # long names are rotated: parallel lines of text, clear of each other
    xs = [t.get_window_extent(renderer).x1 for t in columns]  # right-aligned: anchors
    gaps = [b - a for a, b in zip(xs, xs[1:], strict=False)]
    line = columns[0].get_fontsize() * fig.dpi / 72
    assert min(gaps) * math.sin(angle) > 1.2 * line
    frame = fig.bbox
    for text in [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.title]:
        box = text.get_window_extent(renderer)
        assert box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1, text.get_text()


def test_profile_adds_the_verify_cost_plot(tmp_path):
    write_rows(speed_rows(), str(tmp_path), "r")
    plot = build_report([str(tmp_path)], profile=profile()).plots[0]
    assert plot.name == "verify-cost.png" and plot.png.startswith(b"\x89PNG")
