"""An archive's manifest from its parts: the file-level head, the plan, the tensors' records and the
gate -- built once, for writing and for the planner's exact size prediction alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sparsify.archive.writer import archive_size


def build_manifest(
    head: dict[str, Any], plan: dict[str, Any] | None, records: list[dict[str, Any]], max_error: float | None
) -> dict[str, Any]:
    """The archive's manifest: the file-level ``head``, the plan, the tensors' records and the gate."""
    return {
        **head,
        "plan": plan,
        "tensors": records,
        "gate": gate(((r["name"], r["metrics"]["rel_error"]) for r in records), max_error),
    }


def predicted_size(
    head: dict[str, Any], plan: dict[str, Any] | None, records: list[dict[str, Any]], max_error: float | None
) -> int:
    """The exact size of the archive these records make (parts in writing order: the source blobs,
    then each tensor's)."""
    parts = list(head["source"]["blobs"].values()) + [p for r in records for p in r["parts"]]
    return archive_size(build_manifest(head, plan, records, max_error), parts)


def gate(errors: Iterable[tuple[str, float | None]], max_error: float | None) -> dict[str, Any] | None:
    """The ``--max-error`` gate over ``(tensor name, rel. error)`` pairs; None errors (not measured) pass."""
    if max_error is None:
        return None
    failures = [name for name, error in errors if error is not None and not error <= max_error]
    return {"max_error": max_error, "passed": not failures, "failures": failures}
