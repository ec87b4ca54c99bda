"""The report as one self-contained HTML file, the artifact a CI job keeps: the summary, the plots
(a PNG embedded as base64, when matplotlib is installed), the groups by name pattern and a sortable,
filterable per-tensor table. Inline CSS and script only: the file loads nothing from anywhere.

:func:`html_document` is pure; :func:`write_html` draws the plot and writes the file atomically.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from sparsify import __version__
from sparsify.atomic import atomic_output
from sparsify.errors import UsageError
from sparsify.report import summary
from sparsify.report.columns import Column, Footnotes, cells, error_text, select
from sparsify.report.model import finite

_NUM = ' class="num"'

NO_CURVES = (
    "The rate-distortion curves need the original weights (sparsify compress --html draws them): "
    "the top panel shows this archive only."
)


def write_html(
    path: str | Path,
    report: dict[str, Any],
    *,
    curves: list[dict[str, Any]] | None = None,
    verification: dict[str, Any] | None = None,
    force: bool = False,
    inputs: tuple[Path, ...] = (),
) -> None:
    """Write the HTML report to ``path`` (atomically; an existing file only with ``force``).
    ``curves``: the model's rate-distortion curves (:func:`sparsify.api.rate_distortion`), None when
    the original weights are not at hand; ``verification``: ``Verification.as_dict()`` for ``verify``."""
    from sparsify.report import plot

    figure, note = None, None if curves is not None else NO_CURVES
    try:
        figure = plot.plot_png(report, curves or [])
    except UsageError:  # matplotlib is missing: the report without its plots
        note = f"No plots: {plot.MISSING_MATPLOTLIB}."
    text = html_document(report, figure=figure, plot_note=note, verification=verification)
    with atomic_output(Path(path), force, inputs) as temp:
        temp.write_text(text, encoding="utf-8")


def html_document(
    report: dict[str, Any],
    *,
    figure: bytes | None = None,
    plot_note: str | None = None,
    verification: dict[str, Any] | None = None,
) -> str:
    """The HTML text of a report (docs/REPORT.md): ``figure`` a PNG to embed, ``plot_note`` a line
    under it (or in its place), ``verification`` the outcome of ``verify`` to show beside it."""
    command = "verify" if verification is not None else report["command"]
    title = f"sparsify {command}: {report['source']['name']}"
    notes = Footnotes()
    body = [
        f"<header><h1>{escape(title)}</h1><p class=sub>{escape(str(report['archive']['path']))} · "
        f"sparsify {escape(__version__)}</p>{_badges(report, verification)}</header>",
        _summary(report),
    ]
    if verification is not None:
        body.append(_verification(verification))
    body.append(_figure(figure, plot_note))
    groups = summary.groups(report["tensors"])
    if any(g["members"] == 1 and g["tensors"] > 1 for g in groups):
        body.append(_groups(groups, notes))
    body.append(_tensors(report, verification, notes))
    data = {"report": finite(report)} | ({"verification": finite(verification)} if verification else {})
    payload = json.dumps(data, allow_nan=False)
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):  # no tag can start in it
        payload = payload.replace(char, code)
    body.append(
        f"<footer>sparsify {escape(__version__)} · report schema {report['schema_version']} "
        "(docs/REPORT.md) · the JSON report is in this file: "
        "<code>script#sparsify-data</code></footer>"
        f'<script type="application/json" id="sparsify-data">{payload}</script>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _badges(report: dict[str, Any], verification: dict[str, Any] | None) -> str:
    badges = []
    gate = report.get("gate")
    if gate is not None:
        ok = gate["passed"]
        badges.append((ok, f"gate max_error={gate['max_error']}: {'passed' if ok else 'FAILED'}"))
    plan = report.get("plan")
    if plan is not None and "met" in plan:
        badges.append((plan["met"], f"target {plan['mode']}: {'met' if plan['met'] else 'NOT MET'}"))
    if verification is not None:
        ok = verification["ok"]
        badges.append((ok, f"verify: {'OK' if ok else 'FAILED'}"))
    if not badges:
        return ""
    spans = "".join(f'<span class="badge {"ok" if ok else "bad"}">{escape(text)}</span>' for ok, text in badges)
    return f"<p class=badges>{spans}</p>"


def _summary(report: dict[str, Any]) -> str:
    items = []
    for label, text in summary.headline(report):
        bad = ' class="bad"' if summary.alarming(text) else ""
        items.append(f"<dt>{escape(label)}</dt><dd{bad}>{escape(text)}</dd>")
    return f'<section id="summary"><h2>Summary</h2><dl>{"".join(items)}</dl></section>'


def _verification(verification: dict[str, Any]) -> str:
    status = "OK" if verification["ok"] else "FAILED"
    lines = [
        f"<p>{verification['checked']} tensors decoded and checked in {verification['files']} files: "
        f"<strong class={'ok' if verification['ok'] else 'bad'}>{status}</strong></p>"
    ]
    gate = verification.get("gate")
    if gate is not None:
        lines.append(f"<p>gate {escape(summary.gate_text(gate))}</p>")
    if verification["problems"]:
        lines.append(
            "<ul class=problems>" + "".join(f"<li>{escape(p)}</li>" for p in verification["problems"]) + "</ul>"
        )
    return f'<section id="verification"><h2>Verification</h2>{"".join(lines)}</section>'


def _figure(figure: bytes | None, note: str | None) -> str:
    parts = ['<section id="plots"><h2>Plots</h2>']
    if figure is not None:
        data = base64.b64encode(figure).decode("ascii")
        parts.append(
            f'<figure><img id="plot" src="data:image/png;base64,{data}" '
            'alt="rate-distortion curves (top) and per-tensor bits per weight and rel. error (bottom)">'
            "<figcaption>Top: the model's rate-distortion curves and this archive's point. Bottom: each "
            "tensor's stored bits per weight by part kind, and its rel. error.</figcaption></figure>"
        )
    if note:
        parts.append(f"<p class=note>{escape(note)}</p>")
    return "".join(parts) + "</section>"


def _groups(groups: list[dict[str, Any]], notes: Footnotes) -> str:
    numeric = summary.GROUP_NUMERIC
    head = "".join(
        f"<th{_NUM if n else ''}>{escape(h)}</th>" for h, n in zip(summary.GROUP_HEADERS, numeric, strict=True)
    )
    rows = []
    for g in groups:
        texts = summary.group_cells(g, notes)
        tds = "".join(f"<td{_NUM if n else ''}>{escape(t)}</td>" for t, n in zip(texts, numeric, strict=True))
        rows.append(f"<tr>{tds}</tr>")
    return (
        '<section id="groups"><h2>Tensors by name pattern</h2>'
        "<p class=note>Integer path components as <code>*</code>; patterns whose tensors are all lossless share "
        f"one row.</p><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _sort_value(column: Column, row: dict[str, Any]) -> str:
    """The value a column sorts by: numbers as JSON, infinite as ``Infinity``, missing as ``""``."""
    if column.key == "error" and row["rel_error"] is None:
        return "Infinity"
    if column.key == "snr" and row["snr_db"] is None and (row["exact"] or row["rel_error"] == 0):
        return "Infinity"
    value = column.value(row)
    if value is None:
        return ""
    return escape(str(value))


def _tensors(report: dict[str, Any], verification: dict[str, Any] | None, notes: Footnotes) -> str:
    columns = select(report, wide=True)
    rows = report["tensors"]
    verified = _verified_errors(rows, verification)
    headers = ['<th data-type="num" class="num" title="position in the file">#</th>']
    for c in columns:
        headers.append(
            f'<th data-type="{"num" if c.numeric else "text"}"{_NUM if c.numeric else ""} '
            f'title="{escape(c.field)}">{escape(c.header)}</th>'
        )
    if verified is not None:
        headers.append('<th data-type="num" class="num" title="measured by verify">verified err</th>')
    body = []
    for i, row in enumerate(rows):
        texts = cells(row, columns, notes)
        tds = [f'<td class="num" data-v="{i}">{i + 1}</td>']
        for c, text in zip(columns, texts, strict=True):
            attrs = f' class="num" data-v="{_sort_value(c, row)}"' if c.numeric else ""
            if c.key == "pipeline":
                attrs = f' title="{escape(row["pipeline"])} ({escape(row["reason"])})"'
            tds.append(f"<td{attrs}>{escape(text)}</td>")
        if verified is not None:
            value = verified[i]
            tds.append(f'<td class="num" data-v="{"Infinity" if value is None else value}">{error_text(value)}</td>')
        lossy = "0" if row["exact"] else "1"
        search = escape(f"{row['name']} {row['pipeline']} {row.get('file', '')}".lower())
        body.append(f'<tr data-lossy="{lossy}" data-search="{search}">{"".join(tds)}</tr>')
    footnotes = "".join(f"<li>{escape(n)}</li>" for n in notes.lines())
    return (
        '<section id="tensors"><h2>Tensors</h2><div class=controls>'
        '<input id="filter" type="search" placeholder="filter by name or pipeline" aria-label="filter tensors">'
        '<label><input id="lossy-only" type="checkbox"> lossy only</label>'
        f'<span id="shown">{len(rows)} of {len(rows)} tensors</span>'
        "<span class=hint>click a column header to sort</span></div>"
        f'<div class=scroll><table id="tensor-table"><thead><tr>{"".join(headers)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        + (f"<ul class=footnotes>{footnotes}</ul>" if footnotes else "")
        + "</section>"
    )


def _verified_errors(rows: list[dict[str, Any]], verification: dict[str, Any] | None) -> list | None:
    """The rel. errors verify measured, row by row (None when it measured nothing beyond the
    manifest, i.e. without ``--against``)."""
    if verification is None or not any("max_abs_error" in t for t in verification["tensors"]):
        return None
    measured = verification["tensors"]
    if [t["name"] for t in measured] != [r["name"] for r in rows]:
        by_name = {t["name"]: t for t in measured}
        measured = [by_name.get(r["name"], {"rel_error": None}) for r in rows]
    return [t.get("rel_error") for t in measured]


_CSS = """
:root { color-scheme: light; --fg: #1b1f24; --muted: #5b6470; --line: #d8dde3; --head: #f3f5f7;
  --ok: #1e7b34; --bad: #b42318; --accent: #2458b3; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1400px; padding: 24px 28px 40px; color: var(--fg); background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub, .note, .hint, footer { color: var(--muted); } .sub { margin: 0; word-break: break-all; }
.badges { margin: 10px 0 0; } .badge { display: inline-block; margin-right: 8px; padding: 2px 10px;
  border-radius: 12px; font-weight: 600; font-size: 13px; color: #fff; }
.ok { color: var(--ok); } .bad { color: var(--bad); font-weight: 600; }
.badge.ok { background: var(--ok); color: #fff; } .badge.bad { background: var(--bad); color: #fff; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; word-break: break-word; }
figure { margin: 0; } figure img { width: 100%; max-width: 1200px; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: var(--head); position: sticky; top: 0; }
#tensor-table th { cursor: pointer; user-select: none; }
#tensor-table th:hover { color: var(--accent); }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
td.num, th.num { text-align: right; }
tbody tr:nth-child(even) { background: #fafbfc; }
tr[data-lossy="0"] td { color: var(--muted); }
.scroll { overflow: auto; max-height: 80vh; border: 1px solid var(--line); }
.controls { display: flex; gap: 16px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
#filter { padding: 5px 8px; width: 320px; font: inherit; border: 1px solid var(--line); border-radius: 4px; }
.footnotes { color: var(--muted); font-size: 13px; padding-left: 0; list-style: none; }
footer { margin-top: 32px; font-size: 12px; }
code { font-size: 12px; }
"""

_SCRIPT = """
(function () {
  var table = document.getElementById("tensor-table");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var rows = Array.prototype.slice.call(body.rows);
  function key(row, i, numeric) {
    var cell = row.cells[i];
    if (!numeric) return cell.textContent.toLowerCase();
    var v = cell.getAttribute("data-v");
    return v === null || v === "" ? NaN : Number(v);
  }
  function sortBy(i) {
    var th = heads[i], numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (var h = 0; h < heads.length; h++) heads[h].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var keyed = rows.map(function (row, n) { return [key(row, i, numeric), n, row]; });
    keyed.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (numeric && (isNaN(x) || isNaN(y))) return (isNaN(x) - isNaN(y)) || a[1] - b[1];
      if (x < y) return -dir;
      if (x > y) return dir;
      return a[1] - b[1];
    });
    keyed.forEach(function (k) { body.appendChild(k[2]); });
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(i); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(i); }
    });
  });
  var filter = document.getElementById("filter"), lossy = document.getElementById("lossy-only");
  var shown = document.getElementById("shown");
  function apply() {
    var words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean), count = 0;
    rows.forEach(function (row) {
      var text = row.getAttribute("data-search");
      var ok = words.every(function (w) { return text.indexOf(w) >= 0; }) &&
        (!lossy.checked || row.getAttribute("data-lossy") === "1");
      row.hidden = !ok;
      if (ok) count++;
    });
    shown.textContent = count + " of " + rows.length + " tensors";
  }
  filter.addEventListener("input", apply);
  lossy.addEventListener("change", apply);
})();
"""
