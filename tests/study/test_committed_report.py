"""The committed report of the `default` quickstart run (docs/results/quickstart-default/) renders
in headless Chromium: the main table shows every label and every plot in the folder decodes."""

from __future__ import annotations

from pathlib import Path

from taps_ray.evaluation.report import build_report
from tests.evaluation.test_report_html import _check_with_dump_dom, needs_chromium
from tests.markdown_tables import Table, shown_equal, tables

RUN = Path(__file__).parents[2] / "docs" / "results" / "quickstart-default"


def test_committed_rows_rebuild_the_committed_table():
    report = build_report([str(RUN / "results")], with_plots=False)
    table = report.tables[0.0]["pooled-tau"]
    assert len(table) == 18  # 6 drafters + 6 combinations x 2 pairs
    shown = _section_table((RUN / "report" / "tables.md").read_text(),
                           "## Acceptance length tau (pooled over steps), T=0")
    assert [row[0] for row in shown.rows] == list(table.index)
    assert shown.header[1:] == list(table.columns)
    for label, column, cell in shown.cells():  # each number in its own row and column
        assert shown_equal(cell, float(table.loc[label, column])), (label, column, cell)


def _section_table(text: str, heading: str) -> Table:
    """The first table after `heading`."""
    return tables(text[text.index(heading):])[0]


@needs_chromium
def test_committed_report_html_renders(tmp_path):
    page = RUN / "report" / "report.html"
    result = _check_with_dump_dom(page, tmp_path)
    pngs = sorted(p.name for p in (RUN / "report").glob("*.png"))
    assert result["mainTable"] and result["mainRows"] == 18
    assert len(result["images"]) == len(pngs) >= 5
    assert all(image["width"] > 0 and image["shown"] for image in result["images"])
