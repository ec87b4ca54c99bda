"""The safetensors container: a strict header parser and a streaming writer.

Layout (see docs/FORMAT.md): an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then one
byte buffer. Each JSON entry ``name: {"dtype", "shape", "data_offsets": [begin, end]}`` addresses the
buffer; ``__metadata__`` maps strings to strings. Both sparsify archives and safetensors weight files use
this module, so a hostile file meets the same checks wherever it comes in.

The parser validates before it trusts: header size against the file size and a cap, JSON types, known
dtypes, non-negative shapes, ``end - begin == numel * bits / 8``, entries contiguous from 0 and ending
exactly at the end of the file, unique keys.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO

import numpy as np

from sparsify import dtypes
from sparsify.errors import SparsifyError

MAX_HEADER_BYTES = 100_000_000
_MAX_DIMS, _MAX_DIM = 64, 1 << 62  # what numpy can shape an array into
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class Entry:
    """One array in the buffer; ``begin``/``end`` are offsets relative to the buffer's start."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Layout:
    """A parsed, validated container: the raw header, its metadata and its entries in offset order."""

    header: bytes
    metadata: dict[str, str]
    entries: tuple[Entry, ...]
    data_start: int
    file_size: int

    def entry(self, name: str) -> Entry:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self.entries}


def read_layout(f: BinaryIO, file_size: int, error: type[SparsifyError], what: str) -> Layout:
    """Parse and validate the container header of an open file of ``file_size`` bytes.

    Raises ``error`` (an InputError subclass chosen by the caller) with ``what`` (the file's name) in a
    one-line message on any defect.
    """
    if file_size < 8:
        raise error(f"{what}: too short to be a safetensors file ({file_size} bytes)")
    f.seek(0)
    (n,) = _LENGTH.unpack(f.read(8))
    if n > MAX_HEADER_BYTES:
        raise error(f"{what}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise error(f"{what}: truncated: header of {n} bytes but the file has {file_size - 8}")
    header = f.read(n)
    metadata, entries = parse_header(header, error, what)
    position = 0
    for e in entries:
        if e.begin != position:
            raise error(f"{what}: tensor {e.name!r} starts at {e.begin}, expected {position} (hole or overlap)")
        position = e.end
    if 8 + n + position != file_size:
        raise error(
            f"{what}: data ends at byte {8 + n + position} but the file has {file_size} bytes"
            + (" (truncated)" if 8 + n + position > file_size else " (trailing bytes)")
        )
    return Layout(header, metadata, tuple(entries), 8 + n, file_size)


def parse_header(header: bytes, error: type[SparsifyError], what: str) -> tuple[dict[str, str], list[Entry]]:
    """The metadata and the validated entries (in offset order) of a raw JSON header."""
    try:
        parsed = json.loads(header.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise error(f"{what}: header is not valid UTF-8 JSON ({reason})") from None
    if not isinstance(parsed, dict):
        raise error(f"{what}: header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise error(f"{what}: __metadata__ must map strings to strings")
    entries = sorted((_entry(name, spec, error, what) for name, spec in parsed.items()), key=lambda e: (e.begin, e.end))
    return metadata, entries


def _is_shape(shape) -> bool:
    """A list of at most 64 non-negative ints, each small enough for numpy."""
    fits = isinstance(shape, list) and len(shape) <= _MAX_DIMS
    return fits and all(type(d) is int and 0 <= d < _MAX_DIM for d in shape)


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _entry(name: str, spec, error: type[SparsifyError], what: str) -> Entry:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise error(f"{what}: entry {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in dtypes.SAFETENSORS_TYPES:
        raise error(f"{what}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not _is_shape(shape):
        raise error(f"{what}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise error(f"{what}: tensor {name!r} has invalid data_offsets {offsets!r}")
    try:
        expected = dtypes.nbytes_of(dtype, tuple(shape))
    except SparsifyError as exc:
        raise error(f"{what}: tensor {name!r}: {exc}") from None
    if offsets[1] - offsets[0] != expected:
        raise error(
            f"{what}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes, its dtype and shape need {expected}"
        )
    return Entry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_bytes(f: BinaryIO, layout: Layout, entry: Entry) -> np.ndarray:
    """The raw bytes of one entry as a fresh, writable uint8 array."""
    out = np.empty(entry.nbytes, dtype=np.uint8)
    f.seek(layout.data_start + entry.begin)
    if f.readinto(memoryview(out)) != entry.nbytes:
        raise OSError(f"short read of {entry.name!r}")
    return out


def as_array(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """View raw little-endian bytes as an array of sparsify dtype ``dtype`` (packed types stay bytes)."""
    numpy_dtype = dtypes.numpy_of(dtype)
    if numpy_dtype is None:
        return raw
    return raw.view(numpy_dtype).reshape(shape)


def encode_header(entries: list[Entry], metadata: dict[str, str] | None, align: int = 8) -> bytes:
    """The JSON header for ``entries`` (in their order), padded with spaces so that the buffer starts
    at a multiple of ``align`` bytes (8, or :data:`PAGE` for large archives)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * (-(len(raw) + 8) % align)


PAGE = 4096
"""The alignment of a large archive's buffer (format 3.0): the writer reserves whole pages for the
header in front of the parts it writes, and moves them by whole pages if the header needs more or
fewer (:class:`DirectContainer`)."""


def _copy_in_kernel(source: BinaryIO, out: BinaryIO, size: int) -> bool:
    """Copy ``size`` bytes from ``source``'s position to ``out``'s with ``os.copy_file_range`` (no trip
    through user space); False, having copied nothing, where the system cannot."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    try:
        src, dst = source.fileno(), out.fileno()
        src_offset, dst_offset = source.tell(), out.tell()
    except (AttributeError, OSError, ValueError):
        return False
    done = 0
    while done < size:
        try:
            n = copy(src, dst, size - done, src_offset + done, dst_offset + done)
        except OSError:
            if done:
                raise
            return False
        if n == 0:
            raise OSError(f"spool ended after {done} of {size} bytes")
        done += n
    out.seek(dst_offset + size)
    return True


class SpooledContainer:
    """Appends arrays to a spool file and writes the finished container (header first) at the end.

    Memory holds one array at a time; the spool is a temporary file the caller owns. An array may
    also stay where another process spooled it (:meth:`add_external`): its bytes are copied from
    that file, in the kernel where the system can, when the container is written.
    """

    def __init__(self, spool: BinaryIO) -> None:
        self._spool = spool
        self._entries: list[Entry] = []
        self._names: set[str] = set()
        self._position = 0
        self._spooled = 0  # bytes in our own spool
        self._segments: list[tuple[BinaryIO, int, int]] = []  # (file, offset, size) in container order

    def add(self, name: str, dtype: str, shape: tuple[int, ...], data: bytes | memoryview) -> Entry:
        """Append one array's little-endian bytes under ``name``."""
        size = len(memoryview(data).cast("B"))
        entry = self._entry(name, dtype, shape, size)
        self._spool.write(data)
        self._segment(self._spool, self._spooled, size)
        self._spooled += size
        return entry

    def add_external(self, name: str, dtype: str, shape: tuple[int, ...], source: BinaryIO, offset: int, size: int):
        """Append ``size`` bytes that ``source`` (an open file) holds at ``offset``, under ``name``."""
        entry = self._entry(name, dtype, shape, size)
        self._segment(source, offset, size)
        return entry

    def _entry(self, name: str, dtype: str, shape: tuple[int, ...], size: int) -> Entry:
        if name in self._names:
            raise ValueError(f"duplicate container key {name!r}")
        if size != dtypes.nbytes_of(dtype, tuple(shape)):
            raise ValueError(f"{name!r}: {size} bytes do not match {dtype}{list(shape)}")
        entry = Entry(name, dtype, tuple(shape), self._position, self._position + size)
        self._position += size
        self._entries.append(entry)
        self._names.add(name)
        return entry

    def _segment(self, source: BinaryIO, offset: int, size: int) -> None:
        if self._segments and self._segments[-1][0] is source:
            last, start, length = self._segments[-1]
            if start + length == offset:  # contiguous in the same file: one copy
                self._segments[-1] = (last, start, length + size)
                return
        self._segments.append((source, offset, size))

    def write_to(self, out: BinaryIO, metadata: dict[str, str]) -> int:
        """Write header then the spooled bytes to ``out``; returns the total bytes written."""
        header = encode_header(self._entries, metadata)
        if len(header) > MAX_HEADER_BYTES:
            raise ValueError(f"header of {len(header)} bytes exceeds the safetensors limit")
        out.write(_LENGTH.pack(len(header)))
        out.write(header)
        self._spool.flush()
        out.flush()
        for source, offset, size in self._segments:
            source.seek(offset)
            if not _copy_in_kernel(source, out, size):
                _copy_range(source, out, size)
        return 8 + len(header) + self._position


def _copy_range(source: BinaryIO, out: BinaryIO, size: int) -> None:
    """Copy ``size`` bytes from ``source``'s position to ``out`` through user space."""
    left = size
    while left:
        block = source.read(min(left, 16 * 1024 * 1024))
        if not block:
            raise OSError(f"spool ended {left} bytes short")
        out.write(block)
        left -= len(block)


class DirectContainer(SpooledContainer):
    """Writes arrays straight into the output file, behind ``reserve`` bytes (a multiple of
    :data:`PAGE`) left for the header, which goes in front at the end: no spool, no copy of the parts.

    If the header (padded to whole pages) needs more or fewer than ``reserve`` bytes, the parts are
    moved by whole pages in place (:func:`sparsify.fileops.shift_start`), or -- where the file system
    cannot -- copied within the file; the container's bytes are the same either way.
    """

    def __init__(self, out: BinaryIO, reserve: int) -> None:
        if reserve % PAGE or reserve < PAGE:
            raise ValueError(f"reserve {reserve} is not a positive multiple of {PAGE}")
        super().__init__(out)
        self._out = out
        self._reserve = reserve
        out.seek(reserve)

    def add(self, name: str, dtype: str, shape: tuple[int, ...], data: bytes | memoryview) -> Entry:
        size = len(memoryview(data).cast("B"))
        entry = self._entry(name, dtype, shape, size)
        self._out.write(data)
        return entry

    def add_external(self, name: str, dtype: str, shape: tuple[int, ...], source: BinaryIO, offset: int, size: int):
        entry = self._entry(name, dtype, shape, size)
        self._out.flush()
        source.seek(offset)
        if not _copy_in_kernel(source, self._out, size):
            _copy_range(source, self._out, size)
        return entry

    def write_to(self, out: BinaryIO, metadata: dict[str, str]) -> int:
        """Put the header (padded to whole pages) in front of the parts; returns the file's size."""
        from sparsify import fileops

        if out is not self._out:
            raise ValueError("a direct container writes only the file it was made with")
        header = encode_header(self._entries, metadata, PAGE)
        if len(header) > MAX_HEADER_BYTES:
            raise ValueError(f"header of {len(header)} bytes exceeds the safetensors limit")
        prefix = 8 + len(header)
        out.flush()
        fd = out.fileno()
        if prefix != self._reserve and not fileops.shift_start(fd, prefix - self._reserve):
            _move_within(fd, self._reserve, prefix, self._position)
        os.pwrite(fd, _LENGTH.pack(len(header)) + header, 0)
        out.seek(prefix + self._position)
        return prefix + self._position


def _move_within(fd: int, start: int, to: int, size: int) -> None:
    """Move the ``size`` bytes at ``start`` of the open file ``fd`` to ``to`` (a copy through user
    space, block by block in the order that never overwrites what is still to be moved), and cut the
    file after them."""
    block = 16 << 20
    offsets = range(0, size, block)
    for offset in reversed(offsets) if to > start else offsets:
        piece = os.pread(fd, min(block, size - offset), start + offset)
        os.pwrite(fd, piece, to + offset)
    os.ftruncate(fd, to + size)
