"""The per-tensor columns of the text reports: what each shows of a report row and how its values
print. Shared by the terminal table, Markdown and HTML (no rich here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sparsify.errors import UsageError
from sparsify.pipeline import short_text

KINDS = ("values", "indices", "dictionary", "scales", "overhead")


def human_bytes(n: int | None) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1.1 GiB``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def num(x: float | None, fmt: str) -> str:
    """``x`` formatted, or ``-`` for a missing value."""
    return "-" if x is None else format(x, fmt)


def error_text(x: float | None) -> str:
    """A rel. error: 3 significant digits, ``inf`` for None (infinite or undefined)."""
    return "inf" if x is None else format(x, ".3g")


def shape_text(shape: list[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _error(row: dict[str, Any]) -> str:
    return "exact" if row["exact"] else error_text(row["rel_error"])


def _snr(row: dict[str, Any]) -> str:
    if row["exact"] or (row["snr_db"] is None and row["rel_error"] == 0):
        return "inf"
    return num(row["snr_db"], ".1f")


def kind_bits(row: dict[str, Any], kind: str) -> str:
    """Bits per weight that one kind of part takes (``-`` for none); rows and totals alike."""
    nbytes = row["bytes_by_kind"].get(kind, 0)
    return "-" if not nbytes else num(row["bits_by_kind"][kind], ".2f")


@dataclass(frozen=True)
class Column:
    """One column: ``key`` (for ``--columns``), ``header``, the report field it shows, whether it is
    a number (right-aligned, never shortened), its text for a row, and its sort value (HTML)."""

    key: str
    header: str
    field: str
    numeric: bool
    text: Callable[[dict[str, Any]], str]
    value: Callable[[dict[str, Any]], Any]


def _field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def _kind_column(key: str, kind: str) -> Column:
    return Column(
        key, key, f"bits_by_kind.{kind}", True, lambda r: kind_bits(r, kind), lambda r: r["bits_by_kind"][kind]
    )


COLUMNS: tuple[Column, ...] = (
    Column("tensor", "tensor", "name", False, lambda r: r["name"], _field("name")),
    Column("file", "file", "file", False, lambda r: r.get("file", ""), _field("file")),
    Column("shape", "shape", "shape", False, lambda r: shape_text(r["shape"]), lambda r: r["numel"]),
    Column("dtype", "dtype", "dtype", False, lambda r: r["dtype"], _field("dtype")),
    Column("pipeline", "pipeline", "pipeline", False, lambda r: short_text(r["pipeline"]), _field("pipeline")),
    Column(
        "original",
        "original",
        "original_bytes",
        True,
        lambda r: human_bytes(r["original_bytes"]),
        _field("original_bytes"),
    ),
    Column("stored", "stored", "stored_bytes", True, lambda r: human_bytes(r["stored_bytes"]), _field("stored_bytes")),
    Column("ratio", "ratio", "ratio", True, lambda r: num(r["ratio"], ".2f"), _field("ratio")),
    Column(
        "bits", "bits/w", "bits_per_weight", True, lambda r: num(r["bits_per_weight"], ".2f"), _field("bits_per_weight")
    ),
    _kind_column("values", "values"),
    _kind_column("indices", "indices"),
    _kind_column("dict", "dictionary"),
    _kind_column("scales", "scales"),
    _kind_column("overhead", "overhead"),
    Column("density", "density", "density", True, lambda r: num(r["density"], ".3f"), _field("density")),
    Column("error", "rel. err", "rel_error", True, _error, _field("rel_error")),
    Column(
        "max-abs", "max abs", "max_abs_error", True, lambda r: num(r["max_abs_error"], ".3g"), _field("max_abs_error")
    ),
    Column("snr", "SNR dB", "snr_db", True, _snr, _field("snr_db")),
    Column("cosine", "cosine", "cosine", True, lambda r: num(r["cosine"], ".6f"), _field("cosine")),
)
BY_KEY = {c.key: c for c in COLUMNS}
ESSENTIAL = ("tensor", "shape", "pipeline", "ratio", "bits", "error")
"""The default columns: they fit 80 terminal columns."""


def select(report: dict[str, Any], *, wide: bool = False, keys: tuple[str, ...] | None = None) -> list[Column]:
    """The columns to show: ``keys`` (the tensor name always first), every column with ``wide``
    (``file`` only for a folder archive's report), else :data:`ESSENTIAL`."""
    if keys is not None:
        return [BY_KEY["tensor"], *(BY_KEY[k] for k in dict.fromkeys(keys) if k != "tensor")]
    if wide:
        folder = any("file" in row for row in report["tensors"])
        return [c for c in COLUMNS if c.key != "file" or folder]
    return [BY_KEY[k] for k in ESSENTIAL]


def parse_columns(text: str) -> tuple[str, ...]:
    """``--columns`` text (comma-separated keys, headers or report field names) as column keys;
    a UsageError names the valid keys."""
    aliases = {}
    for c in COLUMNS:
        for alias in (c.key, c.header, c.field, c.field.removeprefix("bits_by_kind.")):
            aliases.setdefault(alias.lower(), c.key)
    aliases["name"] = "tensor"
    keys = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item.lower() not in aliases:
            raise UsageError(f"unknown column {item!r} in --columns (choose from {', '.join(BY_KEY)})")
        keys.append(aliases[item.lower()])
    if not keys:
        raise UsageError(f"--columns names no column (choose from {', '.join(BY_KEY)})")
    return tuple(keys)


SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


class Footnotes:
    """Markers for the reasons behind pipelines that the user did not choose (``1-D: lossless``, a
    rate controller's choice): the first reason seen gets ``¹``, the next ``²``; :meth:`lines` lists
    them under the tables."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def marker(self, reason: str) -> str:
        """The marker for ``reason`` (with a leading space), ``""`` for the user's own choice."""
        if reason == "default" or reason.startswith("rule "):
            return ""
        mark = self.reasons.setdefault(reason, str(len(self.reasons) + 1).translate(SUPERSCRIPTS))
        return " " + mark

    def lines(self) -> list[str]:
        return [f"{mark} {reason}" for reason, mark in self.reasons.items()]


def cells(row: dict[str, Any], columns: list[Column], notes: Footnotes) -> list[str]:
    """One row's texts for ``columns``; the pipeline carries the marker of its reason."""
    out = []
    for column in columns:
        text = column.text(row)
        if column.key == "pipeline":
            text += notes.marker(row["reason"])
        out.append(text)
    return out
