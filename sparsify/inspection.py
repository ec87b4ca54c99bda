"""``inspect``: the report of an archive or a folder archive, from its manifests alone.

Kept apart from :mod:`sparsify.api` so that reading a report imports neither the encoders, the
methods nor the rate controller (``sparsify inspect`` answers in a fraction of a second).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsify.archive.folder import open_member, read_index
from sparsify.archive.reader import Archive
from sparsify.report.model import build_folder_report, build_report


def inspect(archive: str | Path, *, command: str = "inspect") -> dict[str, Any]:
    """The report of an archive or a folder archive, from the manifests alone (nothing decoded)."""
    archive = Path(archive)
    if archive.is_dir():
        index = read_index(archive)
        reports = []
        for weight in index["weights"]:
            with open_member(archive, weight) as opened:
                reports.append((build_report(opened, command=command), opened.tensors))
        return build_folder_report(archive, index, reports, command)
    with Archive(archive) as opened:
        return build_report(opened, command=command)
