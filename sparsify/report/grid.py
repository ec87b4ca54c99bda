"""Lay a table out as lines of text for a terminal width, or at its natural width.

Numbers are never cut: numeric columns keep their full width. To fit a width, the first column (a
tensor name or a name pattern) is shortened in the middle (:func:`sparsify.report.names.shorten_all`),
down to :data:`MIN_NAME` characters and only while the shortened names still look different. A
table that does not fit so is stacked: each row's name on a line of its own, its other cells on an
indented line under it; and where even those do not fit on one line, its columns are split into
blocks, each led by the name column again. Without a width nothing is shortened.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsify.report.names import elide, shorten, shorten_all

GAP = 2
"""Spaces between columns."""
MIN_NAME = 24
"""The name column is not shortened below this many characters to make a table fit."""


@dataclass(frozen=True)
class Grid:
    """A table to lay out: headers, rows of cell texts, which columns are right-aligned and, per
    row, whether its first cell is a name (shown as code in Markdown) rather than a label."""

    headers: list[str]
    rows: list[list[str]]
    right: list[bool]
    names: list[bool] | None = None


def natural_widths(grid: Grid) -> list[int]:
    return [max([len(h), *(len(r[i]) for r in grid.rows)]) for i, h in enumerate(grid.headers)]


def layout(grid: Grid, width: int | None) -> list[list[str]]:
    """The table as blocks of lines (header line first; a stacked table's first two lines are its
    header), each line at most ``width`` characters when a width is given (a name column of
    :data:`MIN_NAME` characters and each single other column fitting in it)."""
    widths = natural_widths(grid)
    names = [grid.headers[0], *(row[0] for row in grid.rows)]
    everything = list(range(1, len(widths)))
    if width is None or _span(widths) <= width:
        return [_lines(grid, names, everything, widths)]
    others = _span(widths[1:])
    budget = width - others - GAP
    short = shorten_all(names, budget) if budget >= MIN_NAME else None
    if short is not None:
        return [_lines(grid, short, everything, [budget, *widths[1:]])]
    if INDENT + others <= width:
        return [_stacked(grid, widths, width)]
    name = min(widths[0], max(MIN_NAME, width // 3))
    short = shorten_all(names, name)
    while short is None and name < widths[0]:
        name += 1
        short = shorten_all(names, name)
    blocks, current, used = [], [], name
    for i in everything:
        need = GAP + widths[i]
        if current and used + need > width:
            blocks.append(current)
            current, used = [], name
        current.append(i)
        used += need
    blocks.append(current)
    out = []
    for block in blocks:
        block_widths = [name, *widths[1:]]
        for i in block:  # a text column too wide for the width on its own
            if not grid.right[i]:
                block_widths[i] = min(widths[i], max(8, width - name - GAP))
        out.append(_lines(grid, short or names, block, block_widths))
    return out


INDENT = 2
"""Indent of a stacked row's cells under its name."""


def _stacked(grid: Grid, widths: list[int], width: int) -> list[str]:
    """Each row as two lines: the name (shortened only past ``width``), then the other cells."""
    rest = list(range(1, len(widths)))
    lines = []
    for cells in (grid.headers, *grid.rows):
        lines.append(cells[0] if len(cells[0]) <= width else shorten(cells[0], width))
        lines.append(" " * INDENT + _line(cells, rest, widths, grid.right))
    return lines


def _span(widths: list[int]) -> int:
    return sum(widths) + GAP * (len(widths) - 1)


def _lines(grid: Grid, names: list[str], columns: list[int], widths: list[int]) -> list[str]:
    """One line per row (header first): ``names`` (as shortened) in the first column, then ``columns``."""
    rows = (grid.headers, *grid.rows)
    return [
        _line([name, *cells[1:]], [0, *columns], widths, grid.right) for name, cells in zip(names, rows, strict=True)
    ]


def _line(cells: list[str], columns: list[int], widths: list[int], right: list[bool]) -> str:
    texts = []
    for i in columns:
        text = cells[i] if len(cells[i]) <= widths[i] else elide(cells[i], widths[i])
        texts.append(text.rjust(widths[i]) if right[i] else text.ljust(widths[i]))
    return (" " * GAP).join(texts).rstrip()
