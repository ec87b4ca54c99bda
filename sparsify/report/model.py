"""The report as data: one JSON-able dict built from an archive's manifest (schema in docs/REPORT.md).

The same report serves ``compress`` (right after writing) and ``inspect`` (any time later): both read
the manifest, whose metrics were measured from the decoded archive when it was written.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sparsify import __version__
from sparsify.metrics import weighted_rel_error

SCHEMA_VERSION = 3  # 3: the lossy tensors' figures in totals; 2: source.sha256 became source.checksum

PART_KINDS = ("values", "indices", "dictionary", "scales", "overhead")
_INDEX_PARTS = {"indptr", "indices", "deltas", "mask", "ranks"}
_SCALE_PARTS = {"scale", "zero", "codebook", "step"}


def part_kind(part_name: str) -> str:
    """What a stored part holds, by its name (``<stage>.<method>.<part>[.<sub-part>]``): ``scales``
    (scales, zero points, codebooks, steps of value coding), ``indices`` (sparse index structure),
    ``dictionary`` (a learned or given dictionary, however coded) or ``values`` (everything else:
    kept values, factors, codes).

    >>> part_kind("0.threshold.indptr"), part_kind("0.ksvd.dictionary.q"), part_kind("1.svd.us.scale")
    ('indices', 'dictionary', 'scales')
    """
    names = [n.removeprefix("codes_") for n in part_name.split(".")[2:]] or [part_name]  # ksvd's codes_indptr...
    if names[-1] in _SCALE_PARTS:
        return "scales"
    if names[-1] in _INDEX_PARTS:
        return "indices"
    if "dictionary" in names:
        return "dictionary"
    return "values"


def build_report(archive, command: str) -> dict[str, Any]:
    """The report of an open :class:`sparsify.archive.Archive` (manifest only, nothing decoded)."""
    manifest = archive.manifest
    share = _overhead_share(manifest, archive.manifest_bytes)
    rows = [_tensor_row(t, share) for t in manifest["tensors"]]
    source = manifest["source"]
    numel = sum(r["numel"] for r in rows)
    worst = max(rows, key=lambda r: r["rel_error"] if r["rel_error"] is not None else math.inf, default=None)
    totals = {
        "tensors": len(rows),
        "numel": numel,
        "original_bytes": sum(r["original_bytes"] for r in rows),
        "source_bytes": source["size"],
        "parts_bytes": sum(r["stored_bytes"] for r in rows),
        "manifest_bytes": archive.manifest_bytes,
        "source_blob_bytes": sum(p["nbytes"] for p in source["blobs"].values()),
        "stored_bytes": archive.size,
        "ratio": source["size"] / archive.size,
        "bits_per_weight": 8 * archive.size / numel if numel else None,
        "weighted_rel_error": _finite(weighted_rel_error(t["metrics"] for t in manifest["tensors"])),
        "worst": {"name": worst["name"], "rel_error": worst["rel_error"]} if worst else None,
        "lossless_tensors": sum(1 for r in rows if r["exact"]),
        **lossy_totals(manifest["tensors"]),
    }
    by_kind = {kind: sum(r["bytes_by_kind"][kind] for r in rows) for kind in PART_KINDS}
    by_kind["overhead"] = archive.size - totals["parts_bytes"]  # manifest, container header, source blobs
    totals["bytes_by_kind"] = by_kind
    totals["bits_by_kind"] = {kind: 8 * n / numel if numel else None for kind, n in by_kind.items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "tool_version": __version__,
        "archive": {"path": str(archive.path), "format_version": manifest["format_version"], "bytes": archive.size},
        "source": {k: source[k] for k in ("name", "format", "size", "checksum")},
        "options": manifest["options"],
        "tensors": rows,
        "totals": totals,
        "gate": manifest["gate"],
        "plan": _plan(manifest.get("plan"), archive.size),
    }


def lossy_totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of the tensors that are not bit-exact, from their manifest records:
    ``lossy_tensors`` (count), ``lossy_numel`` (their elements) and ``lossy_weighted_rel_error``,
    sqrt(Σ sq_error / Σ sq_norm) over them alone (0 when there are none, None = infinite): the
    whole-model figure without the lossless tensors, whose norms would dilute it."""
    lossy = [t for t in records if not t["metrics"]["exact"]]
    return {
        "lossy_tensors": len(lossy),
        "lossy_numel": sum(t["view"]["rows"] * t["view"]["cols"] for t in lossy),
        "lossy_weighted_rel_error": _finite(weighted_rel_error(t["metrics"] for t in lossy)),
    }


def _plan(plan: dict[str, Any] | None, archive_bytes: int) -> dict[str, Any] | None:
    """The rate controller's decisions with the outcome: ``met`` checks the written archive's size
    against the byte budget (the error target was checked on the measured errors when planning)."""
    if plan is None:
        return None
    plan = dict(plan)
    budget = plan.get("budget_bytes")
    if budget is not None:
        plan["met"] = bool(plan.get("met", True)) and archive_bytes <= budget
    plan["archive_bytes"] = archive_bytes
    return plan


def record_overhead(record: dict[str, Any]) -> int:
    """An upper bound of the bytes a tensor adds to the archive beyond its parts (for planning): its
    manifest record as uncompressed, escaped JSON and its parts' entries in the container header
    (about 80 bytes each). The report apportions the real header size instead."""
    escaped = json.dumps(_compact(record), ensure_ascii=False).encode("utf-8")
    return len(escaped) + _HEADER_ENTRY_BYTES * len(record["parts"])


_HEADER_ENTRY_BYTES = 80


def _compact(value: Any) -> str:
    """``value`` as the manifest writes JSON (compact), before compression."""
    return json.dumps(value, separators=(",", ":"), default=str)


def _raw_size(record: dict[str, Any]) -> int:
    """A tensor's manifest record as compact JSON plus its parts' container header entries."""
    return len(_compact(record)) + _HEADER_ENTRY_BYTES * len(record["parts"])


def _overhead_share(manifest: dict[str, Any], header_bytes: int) -> float:
    """Stored header bytes per raw byte of manifest: the factor that turns a record's raw size into
    its share of the (compressed) manifest and container header."""
    records = sum(_raw_size(t) for t in manifest["tensors"])
    rest = len(_compact({k: v for k, v in manifest.items() if k != "tensors"}))
    return header_bytes / (records + rest) if records + rest else 0.0


def _tensor_row(t: dict[str, Any], share: float) -> dict[str, Any]:
    metrics = t["metrics"]
    numel = t["view"]["rows"] * t["view"]["cols"]
    by_kind = dict.fromkeys(PART_KINDS, 0)
    for part in t["parts"]:
        by_kind[part_kind(part["name"])] += part["nbytes"]
    by_kind["overhead"] = round(_raw_size(t) * share)
    bits_by_kind = {kind: 8 * nbytes / numel if numel else None for kind, nbytes in by_kind.items()}
    nnz = [s["resolved"]["nnz"] for s in t["stages"] if "nnz" in s["resolved"]]
    return {
        "name": t["name"],
        "shape": t["shape"],
        "dtype": t["dtype"],
        "pipeline": t["pipeline"],
        "reason": t["reason"],
        "numel": numel,
        "original_bytes": t["original_bytes"],
        "stored_bytes": t["stored_bytes"],
        "ratio": t["original_bytes"] / t["stored_bytes"] if t["stored_bytes"] else None,
        "bits_per_weight": 8 * t["stored_bytes"] / numel if numel else None,
        "bytes_by_kind": by_kind,
        "bits_by_kind": bits_by_kind,
        "density": sum(nnz) / numel if nnz and numel else None,
        "rel_error": metrics["rel_error"],
        "max_abs_error": metrics["max_abs_error"],
        "snr_db": metrics["snr_db"],
        "cosine": metrics["cosine"],
        "exact": metrics["exact"],
        "stages": [{"method": s["method"], "resolved": s["resolved"]} for s in t["stages"]],
        "parts": [{k: p[k] for k in ("name", "dtype", "shape", "codec", "nbytes")} for p in t["parts"]],
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def finite(value: Any) -> Any:
    """``value`` (a report, or any part of one) with every non-finite float as None, as JSON shows it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def build_folder_report(folder, index: dict[str, Any], reports: list[tuple[dict[str, Any], list]], command: str):
    """The report of a folder archive: each weight file's report (with its manifest's tensor records)
    summed into one, every row naming its ``file``; ``totals`` over the weight files (the carried
    files and the index are counted apart, in ``files``)."""
    rows, records = [], []
    for (report, tensors), weight in zip(reports, index["weights"], strict=True):
        rows += [{**row, "file": weight["name"]} for row in report["tensors"]]
        records += tensors
    parts = [r["totals"] for r, _ in reports]
    numel = sum(p["numel"] for p in parts)
    stored = sum(p["stored_bytes"] for p in parts)
    source_bytes = sum(p["source_bytes"] for p in parts)
    worst = max(rows, key=lambda r: r["rel_error"] if r["rel_error"] is not None else math.inf, default=None)
    by_kind = {kind: sum(p["bytes_by_kind"][kind] for p in parts) for kind in PART_KINDS}
    totals = {
        "tensors": len(rows),
        "numel": numel,
        "original_bytes": sum(p["original_bytes"] for p in parts),
        "source_bytes": source_bytes,
        "parts_bytes": sum(p["parts_bytes"] for p in parts),
        "manifest_bytes": sum(p["manifest_bytes"] for p in parts),
        "source_blob_bytes": sum(p["source_blob_bytes"] for p in parts),
        "stored_bytes": stored,
        "ratio": source_bytes / stored,
        "bits_per_weight": 8 * stored / numel if numel else None,
        "weighted_rel_error": _finite(weighted_rel_error(t["metrics"] for t in records)),
        "worst": {"name": worst["name"], "rel_error": worst["rel_error"]} if worst else None,
        "lossless_tensors": sum(1 for r in rows if r["exact"]),
        **lossy_totals(records),
        "bytes_by_kind": by_kind,
        "bits_by_kind": {kind: 8 * n / numel if numel else None for kind, n in by_kind.items()},
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "tool_version": __version__,
        "archive": {"path": str(folder), "format_version": index["format_version"], "bytes": stored, "folder": True},
        "source": {"name": index["source"]["name"], "format": "folder", "size": source_bytes, "checksum": None},
        "options": index["options"],
        "files": {
            "weights": [
                {k: w[k] for k in ("name", "format", "size", "archive", "archive_bytes", "tensors")}
                for w in index["weights"]
            ],
            "carried": len(index["files"]),
            "carried_bytes": sum(f["size"] for f in index["files"]),
        },
        "tensors": rows,
        "totals": totals,
        "gate": index["gate"],
        "plan": _plan(index.get("plan"), stored),
    }
