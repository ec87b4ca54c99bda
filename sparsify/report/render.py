"""Render a report: a rich terminal table, Markdown for pull requests, or JSON.

The only module that imports rich.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from sparsify.pipeline import short_text


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _error(row: dict[str, Any]) -> str:
    if row["exact"]:
        return "exact"
    return _num(row["rel_error"], ".3g")


def _snr(row: dict[str, Any]) -> str:
    if row["exact"] or (row["snr_db"] is None and row["rel_error"] == 0):
        return "inf"
    return _num(row["snr_db"], ".1f")


COLUMNS = (
    "tensor",
    "shape",
    "dtype",
    "pipeline",
    "original",
    "stored",
    "ratio",
    "bits/w",
    "values",
    "indices",
    "dict",
    "scales",
    "overhead",
    "density",
    "rel. err",
    "max abs",
    "SNR dB",
    "cosine",
)


def _reason(reason: str) -> str:
    """Why a tensor got its pipeline, shown only when it is not the user's choice (default or rule)."""
    return "" if reason == "default" or reason.startswith("rule ") else f" ({reason})"


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["name"],
        "x".join(map(str, row["shape"])) or "scalar",
        row["dtype"],
        short_text(row["pipeline"]) + _reason(row["reason"]),
        human_bytes(row["original_bytes"]),
        human_bytes(row["stored_bytes"]),
        _num(row["ratio"], ".2f"),
        _num(row["bits_per_weight"], ".2f"),
        *(_kind_bits(row, kind) for kind in KINDS),
        _num(row["density"], ".3f"),
        _error(row),
        _num(row["max_abs_error"], ".3g"),
        _snr(row),
        _num(row["cosine"], ".6f"),
    ]


KINDS = ("values", "indices", "dictionary", "scales", "overhead")


def _kind_bits(row: dict[str, Any], kind: str) -> str:
    """Bits per weight that one kind of part takes (``-`` for none)."""
    nbytes = row["bytes_by_kind"].get(kind, 0)
    return "-" if not nbytes else _num(row["bits_by_kind"][kind], ".2f")


def _summary_lines(report: dict[str, Any]) -> list[str]:
    t = report["totals"]
    worst = t["worst"]
    by_kind = ", ".join(f"{kind} {_kind_bits(t, kind)}" for kind in KINDS if t["bytes_by_kind"].get(kind))
    lines = [
        f"{report['source']['name']} ({report['source']['format']}, {human_bytes(t['source_bytes'])}) -> "
        f"{report['archive']['path']} ({human_bytes(t['stored_bytes'])}, manifest {human_bytes(t['manifest_bytes'])})",
        f"ratio {t['ratio']:.2f}x, {_num(t['bits_per_weight'], '.2f')} bits/weight, weighted rel. error "
        f"{_num(t['weighted_rel_error'], '.4g')}, {t['lossless_tensors']}/{t['tensors']} tensors bit-exact"
        + (f", worst {worst['name']} ({_num(worst['rel_error'], '.4g')})" if worst and worst["rel_error"] else ""),
        f"bits/weight by kind: {by_kind}",
    ]
    plan = report.get("plan")
    if plan is not None:
        lines.append(_plan_line(plan, t))
    gate = report["gate"]
    if gate is not None:
        if gate["passed"]:
            lines.append(f"gate max_error={gate['max_error']}: passed")
        else:
            lines.append(f"gate max_error={gate['max_error']}: FAILED for {', '.join(gate['failures'])}")
    return lines


def _plan_line(plan: dict[str, Any], totals: dict[str, Any]) -> str:
    """What the rate controller was asked, what it chose and whether the target was met."""
    if plan["mode"] == "auto":
        return f"auto: {plan['candidates']} candidates measured, fewest bytes with rel. error <= {plan['max_error']}"
    target = plan.get("target") or {}
    achieved = {"ratio": f"{totals['ratio']:.3f}", "size": f"{plan['archive_bytes']} bytes"}.get(
        plan["mode"], f"{_num(plan.get('predicted_weighted_rel_error'), '.4g')} (lossy tensors)"
    )
    slope = _num(plan.get("slope"), ".3g")
    return (
        f"rate control: target {plan['mode']} {target.get(plan['mode'])} -> {achieved} "
        f"({'met' if plan.get('met') else 'NOT MET'}); slope {slope} squared error per byte, "
        f"{plan['candidates']} candidates measured"
    )


def render_table(report: dict[str, Any], out: TextIO, color: bool | None = None) -> None:
    """The report as a rich table on ``out`` (colour only on a terminal, never with NO_COLOR)."""
    console = Console(
        file=out, width=None if out.isatty() else 200, no_color=color is False, highlight=False, soft_wrap=False
    )
    table = Table(show_header=True, header_style="bold", show_footer=False, box=None, pad_edge=False)
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i < 4 else "right", overflow="fold")
    for row in report["tensors"]:
        table.add_row(*_cells(row))
    console.print(table)
    for line in _summary_lines(report):
        style = "bold red" if "FAILED" in line or "NOT MET" in line else None
        console.print(line, style=style, markup=False)


def render_markdown(report: dict[str, Any], out: TextIO) -> None:
    """The report as GitHub-flavoured Markdown (a table plus a summary), for pull-request comments."""
    out.write(f"### sparsify {report['command']}: {report['source']['name']}\n\n")
    out.write("| " + " | ".join(COLUMNS) + " |\n")
    out.write("|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|\n")
    for row in report["tensors"]:
        out.write("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |\n")
    out.write("\n")
    for line in _summary_lines(report):
        out.write(f"- {line}\n")


def render_json(report: dict[str, Any], out: TextIO) -> None:
    """The report as JSON (``schema_version`` 2, docs/REPORT.md); non-finite numbers as null."""
    json.dump(_finite(report), out, indent=2, allow_nan=False)
    out.write("\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
