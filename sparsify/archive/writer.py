"""Streaming archive writer: parts spooled to a temporary file, header (with the manifest) last."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sparsify import dtypes
from sparsify.archive.version import METADATA_KEY, SOURCE_BLOB_PREFIX
from sparsify.codec import CodedPart, EncodedTensor, code_part
from sparsify.coders.zstd import Zstd
from sparsify.container import SpooledContainer
from sparsify.errors import InputError


class ArchiveWriter:
    """Writes an archive to ``path`` tensor by tensor; memory holds one tensor's parts at a time.

    The caller owns ``path`` (a temporary name it renames on success, see :mod:`sparsify.atomic`).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._spool = tempfile.TemporaryFile(dir=self.path.parent, prefix=".sparsify-spool-")
        self._container = SpooledContainer(self._spool)

    def add_blob(self, name: str, data: bytes) -> dict[str, Any]:
        """Store a source blob (zstd-coded where smaller); returns its part record."""
        part = code_part(
            name, np.frombuffer(data, dtype=np.uint8), SOURCE_BLOB_PREFIX.rstrip("/"), (Zstd(level=9, bytegroup=False),)
        )
        self._add(part)
        return part.record

    def add_tensor(self, encoded: EncodedTensor) -> None:
        """Append one tensor's coded parts."""
        for part in encoded.parts:
            self._add(part)

    def _add(self, part: CodedPart) -> None:
        # Coded parts, and types safetensors cannot name, are stored as plain bytes.
        stored_as_is = part.record["codec"] is None and part.record["dtype"] in dtypes.SAFETENSORS_TYPES
        dtype = part.record["dtype"] if stored_as_is else "U8"
        shape = tuple(part.record["shape"]) if stored_as_is else (part.stored.size,)
        try:
            self._container.add(part.record["key"], dtype, shape, memoryview(part.stored))
        except ValueError as exc:
            raise InputError(f"cannot store part {part.record['key']!r}: {exc} (tensor names collide?)") from None

    def finish(self, manifest: dict[str, Any]) -> int:
        """Write the header with ``manifest`` and the spooled parts; fsync. Returns the file size."""
        text = json.dumps(_jsonable(manifest), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        with open(self.path, "wb") as out:
            size = self._container.write_to(out, {METADATA_KEY: text})
            out.flush()
            os.fsync(out.fileno())
        self.close()
        return size

    def close(self) -> None:
        self._spool.close()


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no inf/nan) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
