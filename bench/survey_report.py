"""The comparison and the Markdown of ``bench/methods_survey.py``.

A technique's curve is its Pareto front: its points sorted by bits, each kept only if its error is
below that of every cheaper point. ``bits_at_error`` and ``error_at_bits`` interpolate on it linearly
in (bits, log error) between the two front points that bracket the asked value, and never beyond the
measured range: "≤ b" when even the cheapest point is that accurate (then b is an upper bound),
"–" when no point reaches the error (or no point is that cheap).
"""

from __future__ import annotations

import math
from typing import Any

from survey_floor import TCQ_LAMBDA

TCQ = f"TCQ (4 states, λ={TCQ_LAMBDA})"

COMPARE_ERRORS = (0.03, 0.1, 0.3)
COMPARE_BITS = (1.0, 2.0, 4.0)
MAIN_ERROR = 0.1
MAIN_BITS = 2.0
# below the scalar floor: (row label, family, the curve it is measured against)
FLOOR_ROWS = (
    ("uniform codes, static order-0 code (ideal)", "uniform codes, static order 0 (ideal)", None),
    ("uniform codes, adaptive, one context (ideal)", "uniform codes, adaptive, one context (ideal)", None),
    ("uniform codes, adaptive, per row (ideal)", "uniform codes, adaptive, per row (ideal)", None),
    ("uniform codes, adaptive, neighbour context (ideal)", "uniform codes, adaptive, neighbours (ideal)", None),
    ("TCQ + zstd", f"{TCQ} + zstd", None),
    ("TCQ, static order-0 code (ideal)", f"{TCQ}, static order 0 (ideal)", None),
    (
        "TCQ, adaptive state x neighbour context (ideal)",
        f"{TCQ}, adaptive, state x neighbours (ideal)",
        None,
    ),
    ("dense-and-sparse: 1 % outliers exact + uniform + zstd", "dense-and-sparse: 1 % outliers + uniform", None),
    ("dense-and-sparse: 1 % outliers fp16 + uniform + zstd", "dense-and-sparse: 1 % outliers (fp16) + uniform", None),
    (
        "dense-and-sparse: 1 % outliers + RTN g128 (vs RTN g128)",
        "dense-and-sparse: 1 % outliers + RTN g128",
        "RTN quant:bits=B,group=128+zstd",
    ),
)


def versions() -> dict[str, str]:
    import scipy
    import sklearn

    return {"scipy": scipy.__version__, "scikit-learn": sklearn.__version__}


def front(points: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(bits, error) of the Pareto front, by increasing bits."""
    out: list[tuple[float, float]] = []
    for bits, error in sorted((p["bits"], p["rel_error"]) for p in points):
        if not out or error < out[-1][1]:
            out.append((bits, max(error, 1e-300)))
    return out


def bits_at_error(curve: list[tuple[float, float]], error: float) -> tuple[str, float | None]:
    if not curve:
        return "–", None
    if curve[0][1] <= error:
        return "≤", curve[0][0]
    for (b0, e0), (b1, e1) in zip(curve, curve[1:], strict=False):
        if e0 > error >= e1:
            t = (math.log(e0) - math.log(error)) / (math.log(e0) - math.log(e1))
            return "", b0 + t * (b1 - b0)
    return "–", None


def error_at_bits(curve: list[tuple[float, float]], bits: float) -> tuple[str, float | None]:
    if not curve or bits < curve[0][0]:
        return "–", None
    if bits >= curve[-1][0]:
        return "≤", curve[-1][1]
    for (b0, e0), (b1, e1) in zip(curve, curve[1:], strict=False):
        if b0 <= bits < b1:
            t = (bits - b0) / (b1 - b0)
            return "", math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0)))
    return "–", None


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    """Per matrix and family: bits at COMPARE_ERRORS and errors at COMPARE_BITS, and their ratios to
    the reference's (or to the curve a floor row names)."""
    ok = [p for p in data["points"] if "status" not in p]
    seen = list(dict.fromkeys(p["family"] for p in ok))
    families = [f for f in data.get("family_order", []) if f in seen] + [
        f for f in seen if f not in data.get("family_order", [])
    ]
    out: dict[str, Any] = {"families": families, "matrices": {}}
    for m in data["matrices"]:
        label = m["label"]
        curves = {f: front([p for p in ok if p["matrix"] == label and p["family"] == f]) for f in families}
        rows = {}
        for family in families:
            against = next((b for _, f, b in FLOOR_ROWS if f == family and b), data["reference"])
            rows[family] = _row(curves[family], curves[against], against)
        out["matrices"][label] = rows
    return out


def _row(curve, reference, against: str) -> dict[str, Any]:
    row: dict[str, Any] = {"points": len(curve), "against": against, "bits_at_error": {}, "error_at_bits": {}}
    for e in COMPARE_ERRORS:
        mark, bits = bits_at_error(curve, e)
        _, ref = bits_at_error(reference, e)
        ratio = bits / ref if bits is not None and ref and mark == "" else None
        row["bits_at_error"][str(e)] = {"mark": mark, "bits": bits, "reference": ref, "ratio": ratio}
    for b in COMPARE_BITS:
        mark, error = error_at_bits(curve, b)
        _, ref = error_at_bits(reference, b)
        ratio = error / ref if error is not None and ref and mark == "" else None
        row["error_at_bits"][str(b)] = {"mark": mark, "error": error, "reference": ref, "ratio": ratio}
    return row


# --- Markdown -----------------------------------------------------------------------------------


def _cell(entry: dict[str, Any], key: str, digits: int) -> str:
    value = entry[key]
    if value is None:
        return "–"
    text = f"{entry['mark']}{value:.{digits}f}"
    return text + (f" ({entry['ratio']:.2f}×)" if entry["ratio"] is not None else "")


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    s = data["summary"]
    labels = [x["label"] for x in data["matrices"]]
    lines = [
        f"# Survey of weight-coding techniques on real matrices ({data['date']})",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), "
        f"load average {', '.join(f'{x:.2f}' for x in m['load_average'])} at the start. Python {m['python']}, "
        f"numpy {m['numpy']}, scipy {m['scipy']}, scikit-learn {m['scikit-learn']}, zstandard {m['zstandard']}, "
        f"sparsify {m['sparsify']}; BLAS threads: "
        + ", ".join(f"{k}={v}" for k, v in m["thread_limits"].items())
        + ".",
        f"Command: `{data['command']}`. Run time {data['seconds']} s.",
        "",
        "Counting rule and method: the docstrings of `bench/methods_survey.py` (bits per weight = 8 × every "
        "stored part's bytes after the byte coder / weights; rel. error = ‖W − Ŵ‖/‖W‖ on the decoded float32 "
        "matrix) and `bench/survey_report.py` (Pareto front per technique, interpolated linearly in (bits, "
        "log error), never extrapolated; ≤ = the cheapest point is already that accurate). Rows marked "
        "*ideal* are computed code lengths of an arithmetic coder's model, not coded bytes "
        "(`bench/survey_entropy.py`). Reference: "
        f"**{data['reference']}** (`quant:max_error=E+zstd`). Techniques, references and discussion: "
        "[docs/METHODS.md](../../docs/METHODS.md).",
        "",
        "| matrix | origin | shape | weights | rms | median abs | max abs |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for x in data["matrices"]:
        lines.append(
            f"| {x['label']} | {x['origin']} | {x['shape'][0]}×{x['shape'][1]} | {x['weights']:,} | {x['rms']:.4g} "
            f"| {x['median_abs']:.4g} | {x['max_abs']:.4g} |"
        )
    if data["not_run"]:
        lines += ["", "Not run: " + "; ".join(f"{x['input']}: {x['why']}" for x in data["not_run"]) + "."]
    head = "| technique | " + " | ".join(labels) + " |"
    rule = "| --- |" + " ---: |" * len(labels)
    lines += [
        "",
        f"## Bits per weight at rel. error {MAIN_ERROR} (× the reference's bits at that error)",
        "",
        head,
        rule,
    ]
    for family in s["families"]:
        cells = [
            _cell(s["matrices"][lab][family]["bits_at_error"][str(MAIN_ERROR)], "bits", 2)
            if family in s["matrices"][lab] and s["matrices"][lab][family]["points"]
            else "n/a"
            for lab in labels
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Rel. error at {MAIN_BITS:g} bits per weight (× the reference's error at those bits)",
        "",
        head,
        rule,
    ]
    for family in s["families"]:
        cells = [
            _cell(s["matrices"][lab][family]["error_at_bits"][str(MAIN_BITS)], "error", 3)
            if s["matrices"][lab][family]["points"]
            else "n/a"
            for lab in labels
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Codes below the scalar floor: bits per weight at equal error",
        "",
        "Each cell: bits per weight at that rel. error (× the reference's bits at the same error; the RTN "
        "dense-and-sparse row is against RTN g128's curve instead). The reference is "
        f"{data['reference']} (real zstd bytes); the *ideal* rows are code lengths.",
        "",
        "| matrix | code | " + " | ".join(f"e = {e}" for e in COMPARE_ERRORS) + " |",
        "| --- | --- |" + " ---: |" * len(COMPARE_ERRORS),
    ]
    for lab in labels:
        rows = s["matrices"][lab]
        ref = rows[data["reference"]]
        lines.append(
            f"| {lab} | **{data['reference']}** | "
            + " | ".join(_cell({**ref["bits_at_error"][str(e)], "ratio": None}, "bits", 3) for e in COMPARE_ERRORS)
            + " |"
        )
        for name, family, _ in FLOOR_ROWS:
            if family in rows and rows[family]["points"]:
                lines.append(
                    f"| {lab} | {name} | "
                    + " | ".join(_cell(rows[family]["bits_at_error"][str(e)], "bits", 3) for e in COMPARE_ERRORS)
                    + " |"
                )
    recounts = []
    for p in data["points"]:
        if "zstd_recount_bits" in p:
            ref = next(
                (
                    q
                    for q in data["points"]
                    if q["matrix"] == p["matrix"]
                    and q["family"] == data["reference"]
                    and float(q["setting"]) == p["reference_setting"]
                    and "bits" in q
                ),
                None,
            )
            if ref is not None:
                recounts.append(abs(p["zstd_recount_bits"] - ref["bits"]))
    if recounts:
        lines += [
            "",
            "Check of the counting: the reference's codes re-counted as the survey counts TCQ's "
            "(`survey_floor.zstd_bits`: stored as sparsify stores uniform codes, through its zstd coder, plus "
            f"the step) differ from the bytes sparsify stored by at most {max(recounts):.4f} bits per weight "
            f"({len(recounts)} points).",
        ]
    checked = [p for p in data["points"] if "arithmetic_coder" in p]
    if checked:
        worst = max(checked, key=lambda p: abs(p["arithmetic_coder"]["bits"] - p["bits"]) / p["bits"])
        gap = (
            (worst["arithmetic_coder"]["bits"] - worst["bits"])
            * next(x["weights"] for x in data["matrices"] if x["label"] == worst["matrix"])
            / 8
        )
        exact = all(p["arithmetic_coder"]["decoded_exact"] for p in checked)
        lines += [
            "",
            f"Check of the *ideal* lengths: the neighbour and state x neighbour models were also run through a "
            f"real adaptive arithmetic coder (`survey_entropy.arithmetic_encode`, 32-bit registers) on "
            f"{len(checked)} points ({', '.join(dict.fromkeys(p['matrix'] for p in checked))}): largest gap "
            f"{gap:+.0f} bytes ({100 * (worst['arithmetic_coder']['bits'] / worst['bits'] - 1):+.3f} %, "
            f"{worst['matrix']}, {worst['family']}, `{worst['setting']}`); every decode "
            + ("gave the codes back exactly." if exact else "did NOT give the codes back."),
        ]
    lines += ["", "## Every point", ""]
    for lab in labels:
        lines += [
            f"### {lab}",
            "",
            "| technique | setting | implementation | bits/w | bits/w archive | rel. error | s |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for p in data["points"]:
            if p["matrix"] != lab:
                continue
            if "status" in p:
                lines.append(f"| {p['family']} | `{p['setting']}` | – | {p['status']} | | | |")
                continue
            archive = f"{p['bits_archive']:.3f}" if "bits_archive" in p else "–"
            lines.append(
                f"| {p['family']} | `{p['setting']}` | {p['impl']} | {p['bits']:.3f} | {archive} "
                f"| {p['rel_error']:.4f} | {p['seconds']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)
