"""The report as data: one JSON-able dict built from an archive's manifest (schema in docs/REPORT.md).

The same report serves ``compress`` (right after writing) and ``inspect`` (any time later): both read
the manifest, whose metrics were measured from the decoded archive when it was written.
"""

from __future__ import annotations

import math
from typing import Any

from sparsify import __version__
from sparsify.metrics import weighted_rel_error

SCHEMA_VERSION = 1

_PART_KINDS = {"data": "values", "values": "values", "indptr": "indices", "indices": "indices", "mask": "indices"}


def part_kind(part_name: str) -> str:
    """``values``, ``indices`` or the part's own name (``0.threshold.indptr`` -> ``indices``)."""
    short = part_name.rsplit(".", 1)[-1]
    return _PART_KINDS.get(short, short)


def build_report(archive, command: str) -> dict[str, Any]:
    """The report of an open :class:`sparsify.archive.Archive` (manifest only, nothing decoded)."""
    manifest = archive.manifest
    rows = [_tensor_row(t) for t in manifest["tensors"]]
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
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "tool_version": __version__,
        "archive": {"path": str(archive.path), "format_version": manifest["format_version"], "bytes": archive.size},
        "source": {k: source[k] for k in ("name", "format", "size", "sha256")},
        "options": manifest["options"],
        "tensors": rows,
        "totals": totals,
        "gate": manifest["gate"],
    }


def _tensor_row(t: dict[str, Any]) -> dict[str, Any]:
    metrics = t["metrics"]
    numel = t["view"]["rows"] * t["view"]["cols"]
    by_kind: dict[str, int] = {}
    for part in t["parts"]:
        kind = part_kind(part["name"])
        by_kind[kind] = by_kind.get(kind, 0) + part["nbytes"]
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
