"""Render a report: a terminal table that fits the terminal, Markdown for pull requests, or JSON.

The only module that imports rich. The text layouts are pure functions (:func:`table_lines`,
:func:`markdown_text`); only :func:`render_table` asks the terminal for its width, and on a pipe or
in a file nothing depends on a width.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from sparsify.report import summary
from sparsify.report.columns import Column, Footnotes, cells, select
from sparsify.report.grid import Grid, layout
from sparsify.report.model import finite

WORST = 5
"""Worst tensors listed in the summary of a big model."""
MARKDOWN_LINES = 30
"""Lines of a big model's Markdown summary above its ``<details>`` block at most (a pull-request
comment is read on one screen): group rows beyond them are folded into one."""
LABEL = 14
"""Width of the labels of the summary lines in the terminal."""

_TOGETHER = re.compile(r" (?=[-\d.]+[x,;:)]?(?: |$))|(?<=\d) (?=(?:B|KiB|MiB|GiB|%)\b)")
"""Spaces a summary line is not broken at: before a number (``error 0.12``), between a number and
its unit (``9.2 KiB``, ``97.6 %``)."""

Line = tuple[str, "str | None"]
"""A line of text and its style on a terminal (None: plain)."""


def render_table(
    report: dict[str, Any],
    out: TextIO,
    *,
    wide: bool = False,
    columns: tuple[str, ...] | None = None,
    all_rows: bool = False,
    width: int | None = None,
    color: bool | None = None,
) -> None:
    """The report on ``out``: on a terminal fitted to its width (``COLUMNS`` respected), colour
    unless ``NO_COLOR``; elsewhere at its natural width, without colour. ``width`` overrides."""
    console = Console(file=out, no_color=color is False, highlight=False)
    if width is None and out.isatty():
        width = console.width
    chosen = select(report, wide=wide, keys=columns)
    for text, style in table_lines(report, chosen, all_rows=all_rows, width=width):
        console.print(Text(text, style=style or ""), soft_wrap=True)


def table_lines(
    report: dict[str, Any], columns: list[Column], *, all_rows: bool = False, width: int | None = None
) -> list[Line]:
    """The terminal report as lines: the per-tensor table then the summary; for a model of more than
    :data:`summary.SUMMARY_ABOVE` tensors (unless ``all_rows``) the summary first, then the groups
    of tensors by name pattern and the worst tensors."""
    notes = Footnotes()
    rows = report["tensors"]
    lines: list[Line] = []
    if all_rows or not summary.is_big(report):
        lines += _grid_lines(_tensor_grid(rows, columns, notes), width)
        lines += [(note, None) for note in notes.lines()]
        return [*lines, ("", None), *_summary_lines(report, width)]
    lines += _summary_lines(report, width)
    groups = summary.groups(rows)
    patterns = sum(g["members"] for g in groups)
    lines += [("", None), (f"tensors by name pattern ({patterns} patterns, integer path components as *):", None)]
    lines += _grid_lines(_group_grid(groups, notes), width)
    worst = summary.worst(rows, WORST)
    if worst:
        lossy = report["totals"]["lossy_tensors"]
        lines += [("", None), (f"the {len(worst)} worst of {lossy} lossy tensors:", None)]
        lines += _grid_lines(_tensor_grid(worst, columns, notes), width)
    lines += [("", None), *((note, None) for note in notes.lines())]
    lines.append((f"{len(rows)} tensors: --all shows every one, --json every figure", None))
    return lines


def _tensor_grid(rows: list[dict[str, Any]], columns: list[Column], notes: Footnotes) -> Grid:
    return Grid([c.header for c in columns], [cells(r, columns, notes) for r in rows], [c.numeric for c in columns])


def _group_grid(groups: list[dict[str, Any]], notes: Footnotes) -> Grid:
    texts = [summary.group_cells(g, notes) for g in groups]
    return Grid(summary.GROUP_HEADERS, texts, summary.GROUP_NUMERIC, [g["members"] == 1 for g in groups])


def _grid_lines(grid: Grid, width: int | None) -> list[Line]:
    out: list[Line] = []
    for i, block in enumerate(layout(grid, width)):
        if i:
            out.append(("", None))
        heading = 2 if len(block) == 2 * (len(grid.rows) + 1) else 1  # a stacked table: 2 lines a row
        out += [(line, "bold" if j < heading else None) for j, line in enumerate(block)]
    return out


def _summary_lines(report: dict[str, Any], width: int | None) -> list[Line]:
    """The headline as ``label  text`` lines; on a terminal the text wraps under itself."""
    out: list[Line] = []
    for label, text in summary.headline(report):
        style = "bold red" if summary.alarming(text) else None
        if width is None or width - LABEL < 20:
            out.append((f"{label:<{LABEL}}{text}", style))
            continue
        kept = _TOGETHER.sub("\u00a0", text)  # textwrap breaks at ASCII spaces only
        wrapped = textwrap.wrap(kept, width - LABEL, break_on_hyphens=False) or [""]
        out += [
            (f"{label if i == 0 else '':<{LABEL}}{part.replace(chr(0xA0), ' ')}", style)
            for i, part in enumerate(wrapped)
        ]
    return out


def render_markdown(
    report: dict[str, Any],
    out: TextIO,
    *,
    wide: bool = False,
    columns: tuple[str, ...] | None = None,
    all_rows: bool = False,
) -> None:
    """The report as GitHub-flavoured Markdown for a pull-request comment (:func:`markdown_text`)."""
    out.write(markdown_text(report, select(report, wide=wide, keys=columns), all_rows=all_rows))


def markdown_text(report: dict[str, Any], columns: list[Column], *, all_rows: bool = False) -> str:
    """Title and summary first; then the per-tensor table, or for a model of more than
    :data:`summary.SUMMARY_ABOVE` tensors (unless ``all_rows``) the groups by name pattern and the
    worst tensors in at most :data:`MARKDOWN_LINES` lines, with the per-tensor table collapsed in a
    ``<details>`` block under them."""
    notes = Footnotes()
    rows = report["tensors"]
    headline = summary.headline(report)
    parts = [
        f"### sparsify {report['command']}: {_escape(report['source']['name'])}\n",
        "".join(f"- **{label}**: {_escape(text)}\n" for label, text in headline),
    ]
    if all_rows or not summary.is_big(report):
        parts.append(_markdown_table(_tensor_grid(rows, columns, notes)))
        parts.append(_markdown_notes(notes))
        return "\n".join(p for p in parts if p)
    worst = summary.worst(rows, WORST)
    # title, blank, headline, blank, group table (2 + rows), blank, worst table (2 + rows), blank, notes
    fixed = 2 + len(headline) + 1 + 2 + 1 + (2 + len(worst) + 1 if worst else 0) + 1
    groups = summary.groups(rows, max_groups=max(1, MARKDOWN_LINES - fixed - 2))
    parts.append(_markdown_table(_group_grid(groups, notes)))
    if worst:
        worst_grid = _tensor_grid(worst, columns, notes)
        worst_grid.headers[0] = f"worst {len(worst)} of {report['totals']['lossy_tensors']} lossy"
        parts.append(_markdown_table(worst_grid))
    full = _tensor_grid(rows, columns, notes)
    details = f"<details><summary>All {len(rows)} tensors</summary>\n\n{_markdown_table(full)}\n</details>\n"
    return "\n".join(p for p in parts if p) + "\n" + _markdown_notes(notes) + details


def _markdown_table(grid: Grid) -> str:
    lines = ["| " + " | ".join(_escape(h) for h in grid.headers) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in grid.right) + "|")
    for i, row in enumerate(grid.rows):
        name = grid.names is None or grid.names[i]
        first = f"`{row[0]}`".replace("|", "\\|") if name else _escape(row[0])
        texts = [first, *(_escape(c) for c in row[1:])]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _markdown_notes(notes: Footnotes) -> str:
    return " · ".join(_escape(n) for n in notes.lines()) + "\n" if notes.reasons else ""


def _escape(text: str) -> str:
    """Text that Markdown shows as it is (no emphasis, tags or table breaks)."""
    for char in "\\`*_[]<|":
        text = text.replace(char, "\\" + char)
    return text


def render_json(report: dict[str, Any], out: TextIO) -> None:
    """The report as JSON (docs/REPORT.md, docs/report.schema.json); non-finite numbers as null."""
    json.dump(finite(report), out, indent=2, allow_nan=False)
    out.write("\n")
