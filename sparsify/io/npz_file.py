"""numpy ``.npz`` archives: a lazy, pickle-free reader and a streaming writer.

An npz file is a zip archive whose members ``<key>.npy`` each hold one array in numpy's ``.npy``
format (a magic string, a version, a header naming dtype, shape and memory order, then the raw
bytes). The reader parses the zip directory and the ``.npy`` headers with :mod:`zipfile` and
:mod:`numpy.lib.format`, never unpickling anything; the writer rebuilds numpy-written archives byte
for byte from what the reader recorded, or writes a plain ``np.savez``-style archive.
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
import lzma
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsify.dtypes import name_of, numpy_of
from sparsify.errors import CorruptArchiveError, InputError, OutputError
from sparsify.io.base import SourceMeta, TensorInfo, WeightReader, WeightWriter

try:  # numpy >= 2 keeps the reader for every .npy version (1.0, 2.0, 3.0) here
    from numpy.lib._format_impl import _read_array_header
except ImportError:  # numpy 1.x
    from numpy.lib.format import _read_array_header

_SUFFIX = ".npy"
_VERSIONS = {(1, 0): 2, (2, 0): 4, (3, 0): 4}  # .npy version -> bytes of its header-length field
_MAX_HEADER_BYTES = 10_000  # numpy's own limit on a header it will parse without trusting the file
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, up to the name and extra lengths
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP64_EXTRA_ID = 1
_CHUNK_BYTES = 16 * 1024**2  # the size of the pieces numpy streams array data in
# Deflate emits at most 258 bytes per 2 bits of input: no member can decompress to more than this many
# times its compressed size, plus a little for stream headers and a last partial byte.
_DEFLATE_MAX_RATIO = 1032
_DEFLATE_SLACK = 1024
_LOOKAHEAD = 1 << 16  # more than zipfile decompresses in one step (its MIN_READ_SIZE)
_MAX_BYTES = 2**63 - 1  # sizes beyond this overflow numpy's intp

# What a member record in ``SourceMeta.rebuild`` (from an archive's manifest, so untrusted) may hold: the
# ranges the zip headers' fields can store (struct ``B``, ``H``, ``L``), and the methods zipfile writes.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_INT_FIELDS = {
    "create_system": 0xFF,
    "create_version": 0xFF,
    "extract_version": 0xFF,
    "flag_bits": 0xFFFF,
    "internal_attr": 0xFFFF,
    "external_attr": 0xFFFFFFFF,
}
_RECORD_FIELDS = ("filename", "date_time", "compress_type", *_INT_FIELDS, "comment", "extra", "zip64", "npy_header")
# year, month, day, hour, minute, second: what the DOS date and time fields hold, each in its own bits
_DATE_TIME_RANGES = ((1980, 2107), (0, 15), (0, 31), (0, 31), (0, 63), (0, 63))
_ZIP_MAX_FIELD = 0xFFFF  # the longest name, extra field or comment a zip header can give the length of
_ZIP64_EXTRA_BYTES = 28  # the most zipfile adds to a member's extra field (a zip64 record of three sizes)


@dataclass(frozen=True)
class _NpyHeader:
    """The ``.npy`` header of one member: its exact bytes and what they say."""

    raw: bytes
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool

    @property
    def data_bytes(self) -> int:
        """Bytes of array data that follow the header."""
        return math.prod(self.shape) * self.dtype.itemsize

    @classmethod
    def parse(cls, stream) -> _NpyHeader:
        """Read a header from the start of a member; ValueError when it is not a valid one."""
        magic = stream.read(np.lib.format.MAGIC_LEN)
        version = np.lib.format.read_magic(io.BytesIO(magic))
        if version not in _VERSIONS:
            raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
        length_field = stream.read(_VERSIONS[version])
        length = int.from_bytes(length_field, "little")
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f".npy header of {length} bytes is larger than {_MAX_HEADER_BYTES}")
        raw = magic + length_field + stream.read(length)
        try:
            shape, fortran_order, dtype = _read_array_header(io.BytesIO(raw[len(magic) :]), version)
        except ValueError:
            raise
        except Exception as exc:  # numpy's parser lets tokenizer, parser and dtype errors of a hostile header out
            raise ValueError(f"bad .npy header: {_one_line(exc)}") from exc
        if any(d < 0 for d in shape):
            raise ValueError(f".npy shape {tuple(shape)} has a negative dimension")
        if dtype.itemsize == 0 and dtype.kind in "SU":  # numpy makes 'S0' arrays 'S1': they cannot round-trip
            raise ValueError(f".npy element type {dtype.str} has no size")
        if math.prod(shape) * max(dtype.itemsize, 1) > _MAX_BYTES:
            raise ValueError(f".npy shape {tuple(shape)} of {dtype.str} overflows a 64-bit size")
        return cls(raw, dtype, tuple(shape), fortran_order)


@dataclass(frozen=True)
class _Member:
    """One archive member as the reader found it.

    info:        its central-directory entry.
    header:      its ``.npy`` header.
    local_extra: the extra field of its local header, without the zip64 record.
    local_zip64: whether its local header carried a zip64 record (``force_zip64`` when written).
    data_end:    the file offset just past its compressed data.
    """

    info: zipfile.ZipInfo
    header: _NpyHeader
    local_extra: bytes
    local_zip64: bool
    data_end: int

    def rebuild(self) -> dict[str, Any]:
        """What the writer needs to write this member again, JSON-able."""
        info = self.info
        return {
            "filename": info.filename,
            "date_time": list(info.date_time),
            "compress_type": info.compress_type,
            "create_system": info.create_system,
            "create_version": info.create_version,
            "extract_version": info.extract_version,
            "flag_bits": info.flag_bits,
            "external_attr": info.external_attr,
            "internal_attr": info.internal_attr,
            "comment": _b64(info.comment),
            "extra": _b64(self.local_extra),
            "zip64": self.local_zip64,
            "npy_header": _b64(self.header.raw),
        }


class NpzReader(WeightReader):
    """Reads an npz archive lazily: opening reads the zip directory and each member's ``.npy`` header.

    Every member must be a ``<key>.npy`` holding plain data; object arrays (which numpy pickles)
    are refused, never unpickled. Tensors come in zip order, named by key, with layout ``"first"``.
    """

    format = "npz"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with _input_errors(self.path):
            self._file = open(self.path, "rb")
            self._size = os.fstat(self._file.fileno()).st_size
        try:
            with _input_errors(self.path):
                self._zip = zipfile.ZipFile(self._file)
                self._members = self._scan()
        except BaseException:
            self.close()
            raise

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(key, name_of(m.header.dtype), m.header.shape, "first") for key, m in self._members.items()]

    def read(self, name: str) -> np.ndarray:
        """The array stored under ``name``, read from its member alone (its CRC checked)."""
        member = self._members.get(name)
        if member is None:
            raise InputError(f"{self.path}: no array {name!r} in this npz file")
        header = member.header
        try:
            data = self._member_data(name, member)
        finally:
            self.check_unchanged()  # first: a file cut or rewritten meanwhile explains any read error best
        dtype = numpy_of(name_of(header.dtype))  # plain void for structured dtypes
        if dtype.itemsize == 0:  # no bytes to view: shape alone makes the array
            return np.zeros(header.shape, dtype)
        return data.view(dtype).reshape(header.shape, order="F" if header.fortran_order else "C")

    def _member_data(self, name: str, member: _Member) -> np.ndarray:
        """The array bytes of one member, checked to end exactly where its zip header says."""
        info, header = member.info, member.header
        trusted = info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # see _check_declared_size
        with _input_errors(self.path, f"array {name!r}: "), self._zip.open(_declaring_more(info)) as stream:
            stream.read(len(header.raw))
            data = _read_exact(stream, header.data_bytes, trusted)
            if stream.read(1):  # also makes zipfile check the CRC, which it does at the end of the member
                raise InputError(
                    f"{self.path}: array {name!r}: member decompresses to more than the "
                    f"{info.file_size} bytes its zip header declares"
                )
        return data

    def source_meta(self) -> SourceMeta:
        members = list(self._members.values())
        return SourceMeta(
            summary={
                "keys": list(self._members),
                "compressed": any(m.info.compress_type != zipfile.ZIP_STORED for m in members),
            },
            rebuild={"comment": _b64(self._zip.comment), "members": [m.rebuild() for m in members]},
        )

    def close(self) -> None:
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def _scan(self) -> dict[str, _Member]:
        members: dict[str, _Member] = {}
        for info in self._zip.infolist():
            if not info.filename.endswith(_SUFFIX):
                raise InputError(f"{self.path}: member {info.filename!r} is not a .npy array")
            key = info.filename[: -len(_SUFFIX)]
            if key in members:
                raise InputError(f"{self.path}: array {key!r} is stored twice")
            members[key] = self._member(key, info)
        self._check_disjoint(members)
        return members

    def _check_disjoint(self, members: dict[str, _Member]) -> None:
        """Refuse members whose bytes overlap: one compressed stream read as many arrays is a zip bomb."""
        spans = sorted((m.info.header_offset, m.data_end, key) for key, m in members.items())
        for (_, end, key), (start, _, next_key) in itertools.pairwise(spans):
            if end > start:
                raise InputError(f"{self.path}: arrays {key!r} and {next_key!r} overlap in the file (a zip bomb?)")

    def _member(self, key: str, info: zipfile.ZipInfo) -> _Member:
        local_extra, local_zip64, data_start = self._local_extra(info)
        data_end = data_start + info.compress_size
        if data_end > self._size:
            raise InputError(
                f"{self.path}: array {key!r}: member's {info.compress_size} compressed bytes run past the end of "
                f"the file (truncated or corrupt)"
            )
        _check_declared_size(self.path, key, info)
        with _input_errors(self.path, f"array {key!r}: "), self._zip.open(_declaring_more(info)) as stream:
            header = _NpyHeader.parse(stream)
        if header.dtype.hasobject:
            raise InputError(f"{self.path}: array {key!r} holds Python objects (pickled); sparsify refuses to unpickle")
        if len(header.raw) + header.data_bytes != info.file_size:
            raise InputError(
                f"{self.path}: array {key!r}: member holds {info.file_size} bytes but its .npy header "
                f"needs {len(header.raw) + header.data_bytes} (truncated or corrupt)"
            )
        return _Member(info, header, local_extra, local_zip64, data_end)

    def _local_extra(self, info: zipfile.ZipInfo) -> tuple[bytes, bool, int]:
        """The local header's extra field without its zip64 record, whether it had one, and where the data starts.

        zipfile does not expose local headers; it writes ``ZipInfo.extra`` there plus a zip64 record
        when ``force_zip64`` is set or the member is large, and only the former in the directory.
        """
        self._file.seek(info.header_offset)
        fixed = self._file.read(_LOCAL_HEADER.size)
        if len(fixed) < _LOCAL_HEADER.size or not fixed.startswith(_LOCAL_SIGNATURE):
            raise zipfile.BadZipFile(f"bad local header for member {info.filename!r}")
        name_length, extra_length = _LOCAL_HEADER.unpack(fixed)[-2:]
        self._file.seek(name_length, io.SEEK_CUR)
        extra, zip64 = _without_zip64(self._file.read(extra_length))
        return extra, zip64, info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


class NpzWriter(WeightWriter):
    """Writes an npz archive member by member, each tensor as it arrives.

    ``same_format=True``: each member is rebuilt from the reader's record (zip fields, the exact
    ``.npy`` header, zip64, compression), so archives written by ``np.savez``,
    ``np.savez_compressed`` or plain :mod:`zipfile` come back byte-identical.

    ``same_format=False``: a plain ``np.savez``-style archive (stored, 1980 timestamps, zip64, one
    ``<name>.npy`` per tensor). npz cannot name bfloat16 or float8: such arrays are stored as numpy
    stores them, as raw void (``<V2``, ``<V1``), and read back as ``|V2``/``|V1``.
    """

    format = "npz"

    def __init__(self, path: Path, tensors: list[TensorInfo], meta: SourceMeta, same_format: bool) -> None:
        super().__init__(path, tensors, meta, same_format)
        comment, self._members = _rebuild_plan(meta.rebuild, self.infos) if same_format else (b"", {})
        with _output_errors(self.path):
            self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._zip.comment = comment

    def write(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if not self.same_format:
            info = zipfile.ZipInfo(name + _SUFFIX, date_time=(1980, 1, 1, 0, 0, 0))
            with _output_errors(self.path), self._zip.open(info, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, array, allow_pickle=False)
            return
        member = self._members.get(name)
        if member is None:
            raise InputError(f"{self.path}: array {name!r} was not in the npz file being rebuilt")
        header = member.header
        array = _as_stored(name, array, header)
        info = copy.copy(member.info)
        info.file_size = len(header.raw) + header.data_bytes  # lets zipfile pick zip64 for huge members
        with _output_errors(self.path), self._zip.open(info, "w", force_zip64=member.zip64) as stream:
            stream.write(header.raw)
            _write_data(stream, array, header.fortran_order)

    def finish(self) -> None:
        with _output_errors(self.path):
            self._zip.close()

    def abort(self) -> None:
        with suppress(Exception):
            self._zip.close()

    @property
    def rebuilds_bytes(self) -> bool:
        # stored members are rebuilt byte for byte; deflated ones depend on the zlib that recompresses
        return self.same_format and all(m.info.compress_type == zipfile.ZIP_STORED for m in self._members.values())


@dataclass(frozen=True)
class _Rebuilt:
    """One member as the writer rebuilds it: its zip fields, its exact ``.npy`` header, zip64 or not."""

    info: zipfile.ZipInfo
    header: _NpyHeader
    zip64: bool


def _rebuild_plan(rebuild: Any, tensors: list[TensorInfo]) -> tuple[bytes, dict[str, _Rebuilt]]:
    """The archive comment and each tensor's member from the reader's record (:meth:`_Member.rebuild`).

    The record comes from an archive's manifest: every field is checked here, before anything is
    written, so that a damaged one is a CorruptArchiveError naming it, not a failure of zipfile halfway
    through the file. The members must be the tensors, in order, with the tensors' dtypes and shapes.
    """
    if not isinstance(rebuild, dict) or not isinstance(rebuild.get("members"), list):
        raise CorruptArchiveError("npz rebuild record: no list of members")
    comment = _record_bytes(rebuild, "comment", "npz rebuild record", _ZIP_MAX_FIELD)
    records = rebuild["members"]
    if len(records) != len(tensors):
        raise CorruptArchiveError(
            f"npz rebuild record: {len(records)} members for the archive's {len(tensors)} tensors"
        )
    members: dict[str, _Rebuilt] = {}
    for index, (record, tensor) in enumerate(zip(records, tensors, strict=True)):
        where = f"npz rebuild record, member {index}"
        member = _rebuilt_member(record, where)
        key, header = member.info.filename[: -len(_SUFFIX)], member.header
        if key != tensor.name or key in members:
            raise CorruptArchiveError(
                f"{where}: {member.info.filename!r} where the archive's tensor is {tensor.name!r}"
            )
        if name_of(header.dtype) != tensor.dtype or header.shape != tuple(tensor.shape):
            raise CorruptArchiveError(
                f"{where}: npy_header holds {name_of(header.dtype)} {header.shape}, the archive's tensor "
                f"{tensor.name!r} is {tensor.dtype} {tuple(tensor.shape)}"
            )
        members[key] = member
    return comment, members


def _rebuilt_member(record: Any, where: str) -> _Rebuilt:
    """A ZipInfo carrying a member's recorded fields (zipfile sets the flag bits itself), and its header."""
    if not isinstance(record, dict):
        raise CorruptArchiveError(f"{where}: not an object")
    missing = [name for name in _RECORD_FIELDS if name not in record]
    if missing:
        raise CorruptArchiveError(f"{where}: no field {missing[0]!r}")
    filename = record["filename"]
    if not isinstance(filename, str) or not filename.endswith(_SUFFIX) or "\0" in filename:
        raise CorruptArchiveError(f"{where}: filename {_short(filename)} is not a '<key>.npy' name")
    try:
        encoded = filename.encode("utf-8")
    except UnicodeEncodeError:
        raise CorruptArchiveError(f"{where}: filename {_short(filename)} cannot be encoded as UTF-8") from None
    if len(encoded) > _ZIP_MAX_FIELD:
        raise CorruptArchiveError(f"{where}: filename of {len(encoded)} bytes, more than a zip header holds")
    date_time = record["date_time"]
    if not (
        isinstance(date_time, list)
        and len(date_time) == len(_DATE_TIME_RANGES)
        and all(_is_int(v) and low <= v <= high for v, (low, high) in zip(date_time, _DATE_TIME_RANGES, strict=False))
    ):
        raise CorruptArchiveError(
            f"{where}: date_time {_short(date_time)} is not a zip timestamp (year 1980-2107, month 0-15, day 0-31, "
            "hour 0-31, minute 0-63, second 0-63)"
        )
    for name, high in _INT_FIELDS.items():
        if not (_is_int(record[name]) and 0 <= record[name] <= high):
            raise CorruptArchiveError(f"{where}: {name} {_short(record[name])} is not an integer in 0-{high}")
    if not _is_int(record["compress_type"]) or record["compress_type"] not in _ZIP_METHODS:
        raise CorruptArchiveError(
            f"{where}: compress_type {_short(record['compress_type'])} is not one of "
            f"{', '.join(map(str, _ZIP_METHODS))}"
        )
    if not isinstance(record["zip64"], bool):
        raise CorruptArchiveError(f"{where}: zip64 {_short(record['zip64'])} is not true or false")
    comment = _record_bytes(record, "comment", where, _ZIP_MAX_FIELD)
    extra = _record_bytes(record, "extra", where, _ZIP_MAX_FIELD - _ZIP64_EXTRA_BYTES)
    raw = _record_bytes(record, "npy_header", where, None)
    try:
        header = _NpyHeader.parse(io.BytesIO(raw))
    except ValueError as exc:
        raise CorruptArchiveError(f"{where}: npy_header is not a .npy header: {_one_line(exc)}") from None
    if header.raw != raw:
        raise CorruptArchiveError(f"{where}: npy_header has {len(raw) - len(header.raw)} bytes after the header")
    if header.dtype.hasobject:
        raise CorruptArchiveError(f"{where}: npy_header names Python objects ({header.dtype.str})")
    info = zipfile.ZipInfo(filename, date_time=tuple(date_time))
    info.compress_type = record["compress_type"]
    for name in _INT_FIELDS:
        if name != "flag_bits":  # zipfile sets those itself
            setattr(info, name, record[name])
    info.comment = comment
    info.extra = extra
    return _Rebuilt(info, header, record["zip64"])


def _record_bytes(record: dict[str, Any], name: str, where: str, limit: int | None) -> bytes:
    """The bytes of a base64 field of a rebuild record, at most ``limit`` of them."""
    text = record.get(name)
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        data = base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, and non-ASCII text
        raise CorruptArchiveError(f"{where}: {name} {_short(text)} is not base64: {_one_line(exc)}") from None
    if limit is not None and len(data) > limit:
        raise CorruptArchiveError(f"{where}: {name} of {len(data)} bytes, more than a zip header holds ({limit})")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """``repr(value)``, cut to a length a one-line message can carry."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_stored(name: str, array: np.ndarray, header: _NpyHeader) -> np.ndarray:
    """``array`` with the dtype its recorded header names; raw void stands in for any same-size type."""
    same_size = array.dtype.itemsize == header.dtype.itemsize
    if array.shape != header.shape or not (
        name_of(array.dtype) == name_of(header.dtype) or (same_size and "V" in (array.dtype.kind, header.dtype.kind))
    ):
        raise InputError(
            f"array {name!r} is {array.dtype.str} {array.shape}, but the npz file being rebuilt held "
            f"{header.dtype.str} {header.shape}"
        )
    return array.view(header.dtype)


def _write_data(stream, array: np.ndarray, fortran_order: bool) -> None:
    """Write the array's bytes in C or Fortran order in pieces, as ``np.lib.format.write_array`` does."""
    buffersize = max(_CHUNK_BYTES // array.itemsize, 1) if array.itemsize else 0
    flags = ["external_loop", "buffered", "zerosize_ok"]
    for chunk in np.nditer(array, flags=flags, buffersize=buffersize, order="F" if fortran_order else "C"):
        stream.write(chunk.tobytes("C"))


def _check_declared_size(path: Path, key: str, info: zipfile.ZipInfo) -> None:
    """Refuse a member whose declared uncompressed size its compressed bytes cannot hold (a zip bomb).

    Stored members hold exactly their size; deflated ones at most ``_DEFLATE_MAX_RATIO`` times it. Other
    methods (bzip2, LZMA) have no useful bound; their data is read without trusting the declared size.
    """
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise InputError(
            f"{path}: array {key!r}: stored member declares {info.file_size} bytes but holds {info.compress_size}"
        )
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > (
        _DEFLATE_MAX_RATIO * info.compress_size + _DEFLATE_SLACK
    ):
        raise InputError(
            f"{path}: array {key!r}: member declares {info.file_size} bytes from {info.compress_size} deflated "
            f"bytes, more than deflate can expand to (a zip bomb?)"
        )


def _declaring_more(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    """A copy of ``info`` declaring ``_LOOKAHEAD`` bytes more, so that reading shows a stream longer than declared.

    zipfile itself stops at the declared size, and checks the CRC where it stops. Declaring more lets bytes
    past the declared end come back before that check (which would fail over the longer data, with a less
    telling message); a stream of the declared length still ends, and has its CRC checked, where it ends.
    """
    longer = copy.copy(info)
    longer.file_size = info.file_size + _LOOKAHEAD
    return longer


def _read_exact(stream, size: int, trusted: bool) -> np.ndarray:
    """``size`` bytes from ``stream`` as a new uint8 array, read in pieces; ValueError when short.

    ``trusted``: ``size`` was checked against the compressed size, so it is allocated at once; otherwise
    memory grows only with the bytes that really arrive.
    """
    if not trusted:
        return _read_growing(stream, size)
    data = np.empty(size, np.uint8)
    view = memoryview(data)
    done = 0
    while done < size:
        got = stream.readinto(view[done : done + _CHUNK_BYTES])
        if not got:
            raise ValueError(f"member ends after {done} of {size} bytes of array data")
        done += got
    return data


def _read_growing(stream, size: int) -> np.ndarray:
    """Like :func:`_read_exact`, keeping the pieces as they come and joining them at the end."""
    pieces, done = [], 0
    while done < size:
        piece = stream.read(min(_CHUNK_BYTES, size - done))
        if not piece:
            raise ValueError(f"member ends after {done} of {size} bytes of array data")
        pieces.append(piece)
        done += len(piece)
    return np.frombuffer(b"".join(pieces), np.uint8).copy()


def _without_zip64(extra: bytes) -> tuple[bytes, bool]:
    """A zip extra field without its zip64 records, and whether there were any."""
    kept, found, offset = b"", False, 0
    while offset + 4 <= len(extra):
        record_id, length = struct.unpack_from("<HH", extra, offset)
        record = extra[offset : offset + 4 + length]
        if record_id == _ZIP64_EXTRA_ID:
            found = True
        else:
            kept += record
        offset += 4 + length
    return kept + extra[offset:], found


@contextmanager
def _input_errors(path: Path, where: str = "") -> Iterator[None]:
    """Turn what zipfile, numpy and the OS raise on a bad file into a one-line InputError."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        struct.error,
        zlib.error,  # a damaged deflated member
        lzma.LZMAError,  # a damaged LZMA member (bzip2 raises OSError)
    ) as exc:
        raise InputError(f"{path}: {where}not a readable npz file: {_one_line(exc)}") from exc
    except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encrypted member
        raise InputError(f"{path}: {where}unsupported npz member: {_one_line(exc)}") from exc


@contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """Turn an OS failure while writing into a one-line OutputError."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
