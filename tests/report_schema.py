"""Checks every report against docs/report.schema.json (the JSON Schema of docs/REPORT.md), as ``--json``
prints it, with the small validator of test_manifest_schema (jsonschema is not a dependency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_manifest_schema import json_schema_errors

from sparsify.report.model import finite

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
_ROOT = {k: v for k, v in SCHEMA.items() if k != "$schema"}  # "$schema" names the draft; nothing to check


def schema_errors(report: dict[str, Any]) -> list[str]:
    """How ``report`` (a dict from the API, or parsed ``--json``) breaks the schema: against the
    definition its shape calls for, so that the errors say where."""
    data = json.loads(json.dumps(finite(report), allow_nan=False))
    if data.get("command") == "verify":
        kind = "verify_report"
    else:
        kind = "folder_report" if (data.get("archive") or {}).get("folder") else "report"
    errors = json_schema_errors(data, SCHEMA["$defs"][kind], _ROOT)
    if not errors and json_schema_errors(data, _ROOT, _ROOT):
        errors.append("matches its definition but not the schema's root")
    return errors


def checked(report: dict[str, Any]) -> dict[str, Any]:
    """``report``, after asserting that it validates against the schema."""
    errors = schema_errors(report)
    assert not errors, "\n".join(errors[:20])
    return report
