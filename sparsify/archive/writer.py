"""Streaming archive writer: parts spooled to a temporary file, header (with the manifest) last."""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from sparsify import dtypes
from sparsify.archive.dictionary import manifest_dictionary
from sparsify.archive.version import (
    MANIFEST_CODEC,
    MANIFEST_LARGE_LEVEL,
    MANIFEST_LARGE_TEXT,
    MANIFEST_LEVEL,
    METADATA_KEY,
    SOURCE_BLOB_PREFIX,
)
from sparsify.checksum import checksum
from sparsify.codec import CodedPart, EncodedTensor, SpooledPart, code_part
from sparsify.coders.zstd import Zstd
from sparsify.container import PAGE, DirectContainer, Entry, SpooledContainer, encode_header
from sparsify.errors import InputError

# Archives of sources this large have their buffer page-aligned (docs/FORMAT.md §2.1): their parts are
# written straight into the archive behind pages reserved for the header (no spool, no copy).
ALIGNED_SOURCE_BYTES = 32 << 20
# Header bytes reserved per tensor (and in all) before the parts of an aligned archive are written; a
# header that needs other whole pages moves the parts by whole pages, in place where the system can.
_RESERVE_PER_TENSOR, _RESERVE_BASE = 512, 8192


def is_aligned(source_size: int) -> bool:
    """Whether the archive of a source of ``source_size`` bytes has its buffer page-aligned."""
    return source_size >= ALIGNED_SOURCE_BYTES


class ArchiveWriter:
    """Writes an archive to ``path`` tensor by tensor; memory holds one tensor's parts at a time.

    The caller owns ``path`` (a temporary name it renames on success, see :mod:`sparsify.atomic`).
    ``source_size``: the source file's size, which decides the layout (:func:`is_aligned`);
    ``tensors``: how many tensors it has (the header's room is reserved by it).
    """

    def __init__(self, path: Path, source_size: int = 0, tensors: int = 0) -> None:
        self.path = Path(path)
        self._aligned = is_aligned(source_size)
        self._sources: dict[str, Any] = {}  # workers' spool files, open for reading
        if self._aligned:
            self._spool = open(self.path, "w+b")
            reserve = -(-(_RESERVE_BASE + _RESERVE_PER_TENSOR * tensors) // PAGE) * PAGE
            self._container = DirectContainer(self._spool, reserve)
            return
        # Unnamed where the system allows (O_TMPFILE); else briefly named after ``path``, so that one a
        # kill -9 leaves in that moment is known as the temporary file's own (see sparsify.atomic).
        self._spool = tempfile.TemporaryFile(dir=self.path.parent, prefix=f"{self.path.name}.spool-")
        self._container = SpooledContainer(self._spool)

    def add_blob(self, name: str, data: bytes) -> dict[str, Any]:
        """Store a source blob (:func:`code_blob`); returns its part record."""
        part, record = code_blob(name, data)
        self.add_part(part)
        return record

    def add_part(self, part: CodedPart) -> None:
        """Append one coded part (a source blob from :func:`code_blob`)."""
        self._add(part)

    def add_tensor(self, encoded: EncodedTensor) -> None:
        """Append one tensor's coded parts (in memory, or spooled by a worker: copied at the end)."""
        for part in encoded.parts:
            if isinstance(part, SpooledPart):
                self._add_spooled(part)
            else:
                self._add(part)

    def _add_spooled(self, part: SpooledPart) -> None:
        source = self._sources.get(part.path)
        if source is None:
            source = self._sources[part.path] = open(part.path, "rb")
        key, dtype, shape = container_entry(part.record)
        try:
            self._container.add_external(key, dtype, shape, source, part.offset, part.record["nbytes"])
        except ValueError as exc:
            raise InputError(f"cannot store part {part.record['key']!r}: {exc} (tensor names collide?)") from None

    def _add(self, part: CodedPart) -> None:
        key, dtype, shape = container_entry(part.record)
        try:
            self._container.add(key, dtype, shape, memoryview(part.stored))
        except ValueError as exc:
            raise InputError(f"cannot store part {part.record['key']!r}: {exc} (tensor names collide?)") from None

    def finish(self, manifest: dict[str, Any]) -> int:
        """Write the header with ``manifest`` (and the spooled parts); fsync. Returns the file size."""
        if is_aligned(manifest["source"]["size"]) != self._aligned:
            raise ValueError("the manifest's source size does not match the writer's layout")
        metadata = {METADATA_KEY: manifest_text(manifest)}
        if self._aligned:
            out = self._spool
            size = self._container.write_to(out, metadata)
            out.flush()
            os.fsync(out.fileno())
        else:
            with open(self.path, "wb") as out:
                size = self._container.write_to(out, metadata)
                out.flush()
                os.fsync(out.fileno())
        self.close()
        return size

    def close(self) -> None:
        self._spool.close()
        for source in self._sources.values():
            source.close()
        self._sources.clear()


def code_blob(name: str, data: bytes) -> tuple[CodedPart, dict[str, Any]]:
    """A source blob coded for storing (zstd where smaller) and its part record for the manifest,
    with the checksum of the blob itself (``content_checksum``, format 2.1) beside that of its stored
    bytes."""
    part = code_part(
        name, np.frombuffer(data, dtype=np.uint8), SOURCE_BLOB_PREFIX.rstrip("/"), (Zstd(level=9, bytegroup=False),)
    )
    return part, {**part.record, "content_checksum": checksum(data)}


# Source blobs up to this size that are UTF-8 text (a safetensors file's JSON header) are held in the
# manifest itself: compressed with it, they share its tensor names and cost no part of their own.
INLINE_MAX = 1 << 20


def inline_text(data: bytes) -> str | None:
    """A source blob as the text the manifest holds it as (``source.inline``), or None if it is
    not text or too large to hold there (it is then stored as a part)."""
    if len(data) > INLINE_MAX:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def container_entry(record: dict[str, Any]) -> tuple[str, str, tuple[int, ...]]:
    """(key, dtype, shape) under which a part record is stored in the container: coded parts, and
    types safetensors cannot name, as plain bytes (U8)."""
    stored_as_is = record["codec"] is None and record["dtype"] in dtypes.SAFETENSORS_TYPES
    if stored_as_is:
        return record["key"], record["dtype"], tuple(record["shape"])
    return record["key"], "U8", (record["nbytes"],)


def manifest_text(manifest: dict[str, Any]) -> str:
    """The string stored under ``__metadata__["sparsify"]``: a small JSON object with the format, its
    version and the manifest (compact JSON, non-finite floats as null) zstd-compressed with the format's
    dictionary (:mod:`sparsify.archive.dictionary`) and base64-coded (docs/FORMAT.md §4): JSON inside a
    JSON string is escaped and full of checksums, so the plain text would cost small models more than a
    bit per weight."""
    text = json.dumps(_jsonable(manifest), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    packed = _manifest_compressor(manifest_level(len(text))).compress(text)
    envelope = {
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "manifest_codec": MANIFEST_CODEC,
        "manifest": base64.b64encode(packed).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":"))


def manifest_level(text_bytes: int) -> int:
    """The zstd level of a manifest frame whose JSON has ``text_bytes`` bytes (docs/FORMAT.md §4.0)."""
    return MANIFEST_LEVEL if text_bytes <= MANIFEST_LARGE_TEXT else MANIFEST_LARGE_LEVEL


_manifest_compressors = threading.local()


def _manifest_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's manifest compressor at ``level`` with the dictionary, made once (setting one up
    with the dictionary costs more than compressing a small manifest; every frame starts afresh)."""
    cache = _manifest_compressors.__dict__.setdefault("by_level", {})
    made = cache.get(level)
    if made is None:
        made = zstandard.ZstdCompressor(level=level, write_checksum=True, dict_data=manifest_dictionary())
        cache[level] = made
    return made


def archive_size(manifest: dict[str, Any], parts: list[dict[str, Any]]) -> int:
    """The exact size of the archive that ``manifest`` and its ``parts`` records (in writing order)
    make, without writing it (the rate controller plans with it)."""
    entries, position = [], 0
    for record in parts:
        key, dtype, shape = container_entry(record)
        entries.append(Entry(key, dtype, shape, position, position + record["nbytes"]))
        position += record["nbytes"]
    align = PAGE if is_aligned(manifest["source"]["size"]) else 8
    return 8 + len(encode_header(entries, {METADATA_KEY: manifest_text(manifest)}, align)) + position


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no inf/nan) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
