"""The summary of a report, as pure functions of the report dict (docs/REPORT.md): the headline
lines, groups of tensors that share a name pattern, the worst tensors.

Models with more than :data:`SUMMARY_ABOVE` tensors are shown as this summary by default (the
per-tensor table on request), in the terminal and in Markdown.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sparsify.pipeline import short_text
from sparsify.report.columns import Footnotes, error_text, human_bytes, kind_bits, num

SUMMARY_ABOVE = 40
"""Reports with more tensors are summarised (groups, worst tensors) unless every row is asked for."""
MAX_GROUPS = 12
"""Groups with a lossy tensor shown at most; the rest share one row, as the all-lossless groups do."""
MAX_FAILURES = 5
"""Gate failures named in the text summary (``--json`` lists them all)."""

_INTEGER_COMPONENT = re.compile(r"(?<![^./])\d+(?![^./])")


def is_big(report: dict[str, Any]) -> bool:
    return len(report["tensors"]) > SUMMARY_ABOVE


def name_pattern(name: str) -> str:
    """The name with each integer path component (between ``.`` or ``/``) replaced by ``*``.

    >>> name_pattern("encoder.layer.3.attention.self.query.weight")
    'encoder.layer.*.attention.self.query.weight'
    >>> name_pattern("blocks/12/conv2d_3/kernel:0")
    'blocks/*/conv2d_3/kernel:0'
    """
    return _INTEGER_COMPONENT.sub("*", name)


def _error_key(row: dict[str, Any]) -> float:
    return math.inf if row["rel_error"] is None else row["rel_error"]


def group(pattern: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of a set of rows: ``pattern``, ``tensors``, ``lossless``, ``numel``,
    ``original_bytes``, ``stored_bytes`` (the parts), ``ratio`` (original / stored), ``bits_per_weight``
    (8 × stored / elements), ``rel_error_min`` / ``rel_error_max`` (None = infinite), the distinct
    ``pipelines`` and ``reasons`` in order of appearance."""
    numel = sum(r["numel"] for r in rows)
    original = sum(r["original_bytes"] for r in rows)
    stored = sum(r["stored_bytes"] for r in rows)
    errors = [_error_key(r) for r in rows]
    return {
        "pattern": pattern,
        "tensors": len(rows),
        "lossless": sum(1 for r in rows if r["exact"]),
        "numel": numel,
        "original_bytes": original,
        "stored_bytes": stored,
        "ratio": original / stored if stored else None,
        "bits_per_weight": 8 * stored / numel if numel else None,
        "rel_error_min": _none_if_inf(min(errors)),
        "rel_error_max": _none_if_inf(max(errors)),
        "pipelines": list(dict.fromkeys(r["pipeline"] for r in rows)),
        "reasons": list(dict.fromkeys(r["reason"] for r in rows)),
    }


def _none_if_inf(x: float) -> float | None:
    return None if math.isinf(x) else x


def groups(rows: list[dict[str, Any]], max_groups: int = MAX_GROUPS) -> list[dict[str, Any]]:
    """The rows grouped by :func:`name_pattern`, in order of first appearance: every group with a
    lossy tensor (at most ``max_groups`` when there are more than ``max_groups + 1``, the rest
    folded into one group ``"N more patterns"``), then one group for all the groups whose tensors
    are all lossless (``"N more patterns, all lossless"``, unless there is only one). A group is
    :func:`group`'s figures plus ``members``, the number of patterns it holds (1 unless folded)."""
    by_pattern: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_pattern.setdefault(name_pattern(row["name"]), []).append(row)
    lossy = [(p, rs) for p, rs in by_pattern.items() if not all(r["exact"] for r in rs)]
    lossless = [(p, rs) for p, rs in by_pattern.items() if all(r["exact"] for r in rs)]
    shown, rest = (lossy, []) if len(lossy) <= max_groups + 1 else (lossy[:max_groups], lossy[max_groups:])
    if len(lossless) == 1:  # a row of its own takes no more room than a folded one
        shown, lossless = shown + lossless, []
    out = [{**group(p, rs), "members": 1} for p, rs in shown]
    for folded, label in ((rest, "more patterns"), (lossless, "more patterns, all lossless")):
        if folded:
            members = [r for _, rs in folded for r in rs]
            out.append({**group(f"{len(folded)} {label}", members), "members": len(folded)})
    return out


def worst(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` lossy rows with the largest rel. error (infinite first), in that order (file
    order on ties)."""
    lossy = [r for r in rows if not r["exact"]]
    return sorted(lossy, key=lambda r: -_error_key(r))[:n]


GROUP_HEADERS = ["name pattern", "tensors", "stored", "ratio", "bits/w", "rel. err", "pipeline"]


GROUP_NUMERIC = [False, True, True, True, True, True, False]


def group_cells(g: dict[str, Any], notes: Footnotes) -> list[str]:
    """A group's texts for :data:`GROUP_HEADERS`; the pipelines carry their reasons' markers."""
    marks = "".join(notes.marker(reason) for reason in g["reasons"])
    marks = " " + marks.replace(" ", "") if marks else ""
    return [
        g["pattern"],
        str(g["tensors"]),
        human_bytes(g["stored_bytes"]),
        num(g["ratio"], ".2f"),
        num(g["bits_per_weight"], ".2f"),
        error_range(g),
        pipelines_text(g["pipelines"]) + marks,
    ]


def error_range(g: dict[str, Any]) -> str:
    """A group's rel. errors: ``exact``, one value, or ``low–high``."""
    if g["lossless"] == g["tensors"]:
        return "exact"
    low, high = error_text(g["rel_error_min"]), error_text(g["rel_error_max"])
    return low if low == high else f"{low}–{high}"


def pipelines_text(pipelines: list[str]) -> str:
    """A group's pipelines in short: one as it is; several with the same stages and parameters as
    one with ``*`` for the values that differ (``quant:step=*+zstd``); several with the same stages
    as those stages and the count (``quant+zstd (8 settings)``); else the first two and how many more."""
    texts = list(dict.fromkeys(short_text(p) for p in pipelines))
    if len(texts) == 1:
        return texts[0]
    parsed = [_stages(t) for t in texts]
    if len({tuple((name, tuple(params)) for name, params in p) for p in parsed}) == 1:
        merged = []
        for i, (name, params) in enumerate(parsed[0]):
            values = ",".join(
                f"{key}={value if all(p[i][1][key] == value for p in parsed) else '*'}" for key, value in params.items()
            )
            merged.append(f"{name}:{values}" if values else name)
        return "+".join(merged)
    skeletons = list(dict.fromkeys("+".join(name for name, _ in p) for p in parsed))
    if len(skeletons) == 1:
        return f"{skeletons[0]} ({len(texts)} settings)"
    more = len(skeletons) - 2
    return ", ".join(skeletons[:2]) + (f" +{more} more" if more else "")


def _stages(text: str) -> list[tuple[str, dict[str, str]]]:
    """``quant:step=0.1,bits=4+zstd`` -> ``[("quant", {"step": "0.1", "bits": "4"}), ("zstd", {})]``."""
    out = []
    for stage in text.split("+"):
        name, _, params = stage.partition(":")
        out.append((name, dict(p.split("=", 1) for p in params.split(",") if "=" in p)))
    return out


def headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as (label, text) lines: what was compressed into what, size, the lossy tensors'
    error, the lossless count, the worst tensor, the whole-model error, then the rate controller's
    and the gate's outcome."""
    t = report["totals"]
    source, archive = report["source"], report["archive"]
    lines = [
        (
            "archive",
            f"{source['name']} ({source['format']}, {human_bytes(t['source_bytes'])}) -> {archive['path']} "
            f"({human_bytes(t['stored_bytes'])}, manifest {human_bytes(t['manifest_bytes'])})",
        )
    ]
    by_kind = ", ".join(
        f"{kind} {kind_bits(t, kind)}"
        for kind in ("values", "indices", "dictionary", "scales", "overhead")
        if t["bytes_by_kind"].get(kind)
    )
    lines.append(("size", f"ratio {t['ratio']:.2f}x, {num(t['bits_per_weight'], '.2f')} bits/weight ({by_kind})"))
    n, lossy = t["tensors"], t["lossy_tensors"]
    if lossy == 0:
        lines.append(("lossless", f"all {n} tensors, bit-exact"))
    else:
        share = f", {100 * t['lossy_numel'] / t['numel']:.1f} % of the weights" if t["numel"] else ""
        lines.append(
            ("lossy", f"{lossy} of {n} tensors{share}: weighted rel. error {_error(t['lossy_weighted_rel_error'])}")
        )
        lines.append(("lossless", f"{t['lossless_tensors']} tensors, bit-exact"))
        worst_row = t["worst"]
        lines.append(("worst", f"{worst_row['name']}: rel. error {_error(worst_row['rel_error'])}"))
        lines.append(("whole model", f"weighted rel. error {_error(t['weighted_rel_error'])} over all {n} tensors"))
    plan = report.get("plan")
    if plan is not None:
        lines.append(("rate control", plan_text(plan, t)))
    gate = report["gate"]
    if gate is not None:
        lines.append(("gate", gate_text(gate)))
    return lines


def _error(x: float | None) -> str:
    return "inf" if x is None else format(x, ".4g")


def gate_text(gate: dict[str, Any]) -> str:
    if gate["passed"]:
        return f"max_error={gate['max_error']}: passed"
    failures = gate["failures"]
    named = ", ".join(failures[:MAX_FAILURES])
    more = f" and {len(failures) - MAX_FAILURES} more" if len(failures) > MAX_FAILURES else ""
    return f"max_error={gate['max_error']}: FAILED for {named}{more}"


def plan_text(plan: dict[str, Any], totals: dict[str, Any]) -> str:
    """What the rate controller was asked, what it chose and whether the target was met."""
    if plan["mode"] == "auto":
        return f"auto: {plan['candidates']} candidates measured, fewest bytes with rel. error <= {plan['max_error']}"
    target = plan.get("target") or {}
    achieved = {"ratio": f"{totals['ratio']:.3f}", "size": f"{plan['archive_bytes']} bytes"}.get(
        plan["mode"], f"{num(plan.get('predicted_weighted_rel_error'), '.4g')} (lossy tensors)"
    )
    slope = num(plan.get("slope"), ".3g")
    objective = plan.get("objective", "sse")
    minimised = {"sse": "", "importance": "; minimising the importance-weighted error"}.get(
        objective, f"; minimising the {objective} error"
    )
    unit = "weighted squared error" if objective == "importance" else "squared error"
    return (
        f"target {plan['mode']} {target.get(plan['mode'])} -> {achieved} "
        f"({'met' if plan.get('met') else 'NOT MET'}){minimised}; slope {slope} {unit} per byte, "
        f"{plan['candidates']} candidates measured"
    )


def alarming(text: str) -> bool:
    """A summary line that reports a failure (shown in bold red on a terminal)."""
    return "FAILED" in text or "NOT MET" in text
