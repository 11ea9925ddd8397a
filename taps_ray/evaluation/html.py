"""report.html: one static, self-contained page (inline CSS, PNGs as base64 data URIs).

Nothing is fetched when the page is opened, so it reads the same offline, from an artifact
store or attached to an e-mail. Every table has an id; the main pooled tau table (lowest
temperature) is `#main-table`; every plot is an <img> with alt text.
"""

from __future__ import annotations

import base64
import html
import re
import time

from taps_ray.evaluation.report import TABLES, Report, fmt, temp_key

MAIN_TABLE_ID = "main-table"

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05rem; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
td.mean, th.mean { font-weight: 600; background: #fafafa; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.4rem 0.8rem; }
figure { margin: 1rem 0 2rem; } img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #555; }
"""


def render_report_html(report: Report) -> str:
    """The whole page for a built report (tables, routing, diagnostics, all plots)."""
    stamp = time.strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>taps-ray report</h1><p>{html.escape(report.summary)} Generated {stamp}.</p>"]
    body += [f'<p class="note">warning: {html.escape(note)}</p>' for note in report.notes]
    if report.overview is not None:
        body.append(overview_html(report.overview))
    kinds = {k.name: k for k in TABLES}
    for i, (temp, per) in enumerate(report.tables.items()):
        body.append(f"<h2>Temperature {temp_key(temp)}</h2>")
        for name, table in per.items():
            table_id = MAIN_TABLE_ID if i == 0 and name == "pooled-tau" else _id(name, temp)
            body.append(f"<h3>{html.escape(kinds[name].title)}</h3>")
            body.append(table_html(table, table_id, kinds[name].digits, "drafter / strategy"))
        for speed in report.speed_at(temp):
            body.append(f"<h3>{html.escape(speed.title)}</h3><p>{html.escape(speed.caption)}</p>")
            body.append(table_html(speed.table, _id(speed.kind + _slug(speed.profile), temp), 2,
                                   "drafter / strategy"))
    if not report.routing.empty:
        body.append("<h2>Routing shares</h2>")
        body.append(table_html(report.routing.set_index("temperature"), "routing", 3, "T"))
    if not report.diagnostics.empty:
        body.append("<h2>Draft confidence and entropy, accepted vs rejected</h2>")
        body.append(table_html(report.diagnostics.set_index("temperature"), "diagnostics", 3,
                               "T"))
    if report.plots:
        body.append("<h2>Plots</h2>")
        body += [figure_html(p.title, p.alt, p.png) for p in report.plots]
    return page("taps-ray report", "\n".join(body))


def overview_html(overview) -> str:
    """The opening block: chosen configuration, the per-benchmark glance table, the profile."""
    parts = ['<section id="at-a-glance"><h2>At a glance</h2>',
             f"<p><strong>Chosen configuration:</strong> {html.escape(overview.chosen)}</p>"]
    parts += [f'<p class="note">note: {html.escape(n)}</p>' for n in overview.notes]
    if not overview.table.empty:
        parts.append(table_html(overview.table, "glance", 2, "benchmark"))
    if overview.profile:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in overview.profile[1:])
        parts.append(f"<p><strong>Hardware profile:</strong> "
                     f"{html.escape(overview.profile[0].replace('`', ''))}</p><ul>{items}</ul>")
    return "".join(parts) + "</section>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def table_html(table, table_id: str, digits: int = 2, index_name: str = "") -> str:
    """A label-indexed DataFrame as an HTML table with the given id; empty cells show '-'."""
    head = "".join(f"<th{_cls(c)}>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for label, row in table.iterrows():
        cells = "".join(f"<td{_cls(c)}>{html.escape(fmt(v, digits))}</td>"
                        for c, v in zip(table.columns, row.values, strict=True))
        rows.append(f"<tr><td>{html.escape(str(label))}</td>{cells}</tr>")
    return (f'<table id="{html.escape(table_id)}"><thead><tr><th>{html.escape(index_name)}</th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def figure_html(title: str, alt: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def _cls(column) -> str:
    return ' class="mean"' if column == "mean" else ""


def _slug(text: str) -> str:
    return f"-{re.sub(r'[^A-Za-z0-9]+', '_', text)}" if text else ""


def _id(name: str, temperature: float) -> str:
    return f"{name}-t" + re.sub(r"[^A-Za-z0-9]+", "_", temp_key(temperature))
