"""report.html renders in headless Chromium: #main-table shows and every plot decodes, offline.

Drives the system Chromium (Debian package `chromium`) two ways: through the `playwright`
package when it is installed (with `executable_path`, never its own browser download), and
through `chromium --dump-dom` with a small script that writes the same checks into the page,
which needs nothing but the binary. Skips when no Chromium binary exists.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taps_ray.evaluation.report import build_report, write_report
from taps_ray.evaluation.results import write_rows
from tests.evaluation.test_report import row

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
CHROMIUM = os.environ.get("TAPS_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
# --no-sandbox: tests run as root in containers, where Chromium's sandbox refuses to start.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

# What the page must show, evaluated inside the browser after the load event.
CHECK_JS = """() => {
  const shown = el => !!el && getComputedStyle(el).display !== 'none'
    && getComputedStyle(el).visibility !== 'hidden' && el.getBoundingClientRect().width > 0
    && el.getBoundingClientRect().height > 0;
  return {
    mainTable: shown(document.getElementById('main-table')),
    mainRows: document.querySelectorAll('#main-table tbody tr').length,
    images: [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, shown: shown(i)})),
  };
}"""

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (apt-get install -y chromium, or set TAPS_CHROMIUM=/path)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A report with every plot kind: heatmaps, depth, mixture, routing and diagnostics."""
    root = tmp_path_factory.mktemp("report")
    routed = {"math-hass": 6, "chat-hass": 2}
    rows = [row(name, bench, "p1", 2.0 + i / 4, 8, temp)
            for temp in (0.0, 1.0) for bench in ("mt_bench", "gsm8k")
            for i, name in enumerate(["chat-hass", "mix50-hass", "math-hass"])]
    rows += [row("route-confidence/step", bench, "p1", 3.0, 8, drafters=list(routed),
                 route_counts=json.dumps(routed)) for bench in ("mt_bench", "gsm8k")]
    write_rows(rows, str(root / "in"), "r1")
    diag = pd.DataFrame({"run_id": "r1", "strategy": "math-hass", "benchmark": "gsm8k",
                         "temperature": 0.0, "kind": ["accepted", "rejected"] * 4,
                         "confidence": [0.6, 0.1, 0.5, 0.05, 0.7, 0.2, 0.4, 0.1],
                         "entropy": [0.5, 3.0, 0.7, 2.5, 0.2, 2.0, 1.0, 3.5]})
    pq.write_table(pa.Table.from_pandas(diag), root / "in" / "r1" / "diagnostics-u.parquet")
    report = build_report([str(root / "in")])
    write_report(report, root / "out")
    return report, root / "out" / "report.html"


def test_page_is_self_contained(rendered):
    _, page = rendered
    text = page.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)  # no external asset at all
    assert text.count('id="main-table"') == 1


@needs_chromium
@pytest.mark.parametrize("driver", ["playwright", "dump-dom"])
def test_main_table_and_every_plot_visible_in_chromium(rendered, tmp_path, driver):
    report, page = rendered
    if driver == "playwright":
        pytest.importorskip("playwright", reason="pip install playwright (uses system Chromium)")
        result = _check_with_playwright(page)
    else:
        result = _check_with_dump_dom(page, tmp_path)
    assert result["mainTable"] and result["mainRows"] == 4
    assert len(result["images"]) == len(report.plots) >= 7
    for image in result["images"]:
        assert image["width"] > 0 and image["shown"], image
        assert image["alt"]


def _check_with_playwright(page) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page()
        requests = []
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(page.as_uri(), wait_until="load")
        result = tab.evaluate(CHECK_JS)
        browser.close()
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # offline page
    return result


def _check_with_dump_dom(page, tmp_path) -> dict:
    probe = (f"<script>window.addEventListener('load', () => {{ const p = "
             f"document.createElement('pre'); p.id = 'taps-check'; p.textContent = "
             f"JSON.stringify(({CHECK_JS})()); document.body.appendChild(p); }});</script>")
    copy = tmp_path / "probe.html"
    copy.write_text(page.read_text().replace("</body>", probe + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", *FLAGS, "--virtual-time-budget=10000",
                           "--dump-dom", copy.as_uri()], capture_output=True, text=True,
                          timeout=120)
    found = re.search(r'<pre id="taps-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium gave no result (rc {proc.returncode}): {proc.stderr[-500:]}"
    return json.loads(html.unescape(found.group(1)))
