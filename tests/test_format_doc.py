"""docs/FORMAT.md is enough to read an archive.

This module holds a small, independent ``.sparsify`` reader written from docs/FORMAT.md alone, using
only json, base64, struct, hashlib, math, numpy, ml_dtypes, zstandard and xxhash (and the format's
manifest dictionary, a data file, §4.0). sparsify itself is used only to *create* archives
(``sparsify.compress``) and, as the reference, to decompress them (``sparsify.decompress``); every byte
is parsed, checked and decoded here and compared with the original weights and with what
``decompress`` writes (read with safetensors / h5py): bit for bit.

Format 2.0 additions covered: the manifest envelope (§4.0), the ``zstd+planes`` codec (§5.3), the
``csr-delta`` sparse layout (§6.2), codes packed or one per byte, integer groups and codebooks (§6.6),
the ``quant`` method and its two uniform code forms (§6.7), value coders (§6.8) and the manifest's
``plan`` and ``options.target`` (§4.3, §4.7). Format 2.1: the decoded tensors' checksums (§4.4, §8.4),
checked on every decode, which this reader can do because it decodes svd, lasso and ksvd with the
reference arithmetic of §6.3-§6.5 and §10.2 (ordered dense and sparse products, the DCT matrix from its
polynomial cosines: no BLAS, no FFT, no libm cosine). Format 3.0: checksum strings (XXH3-64, and SHA-256
as 2.x's digests are read, §8.6), the manifest compressed with the format's dictionary (§4.0), source
blobs held in the manifest as text (``source.inline``, §4.2), the ``zstd+planes2`` codec (§5.3) and
page-aligned large archives (§2.1). The golden archives of tests/golden/ (1.0 in v1.0/, 2.0 in v2.0/,
2.1 in v2.1/, 3.0 at the top) are read too, and the worked example of §11 is checked against the bytes
of the golden archive it describes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import struct
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest
import xxhash
import zstandard
from safetensors.numpy import load_file, save_file
from threadpoolctl import threadpool_limits  # test speed only (see the fixture below), not the reader

import sparsify  # only to create archives and as the reference decoder

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
FP32 = SAMPLES / "digits_mlp.safetensors"
BF16 = SAMPLES / "digits_mlp_bf16.safetensors"
HDF5 = SAMPLES / "digits_mlp.h5"
CREPE = SAMPLES / "crepe-tiny" / "weights.h5"
WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")
BIASES = ("fc1.bias", "fc2.bias", "fc3.bias")


# ---------------------------------------------------------------------------------------------------
# The reader (FORMAT.md §2-§9)
# ---------------------------------------------------------------------------------------------------


class FormatError(Exception):
    """The file breaks a rule of FORMAT.md."""


def _le(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype


# FORMAT.md §3.1: safetensors name -> (bits, numpy dtype or None for packed types)
SAFETENSORS = {
    "BOOL": (8, np.dtype(np.bool_)),
    "U8": (8, np.dtype(np.uint8)),
    "I8": (8, np.dtype(np.int8)),
    "U16": (16, _le(np.uint16)),
    "I16": (16, _le(np.int16)),
    "U32": (32, _le(np.uint32)),
    "I32": (32, _le(np.int32)),
    "U64": (64, _le(np.uint64)),
    "I64": (64, _le(np.int64)),
    "F16": (16, _le(np.float16)),
    "BF16": (16, np.dtype(ml_dtypes.bfloat16)),
    "F32": (32, _le(np.float32)),
    "F64": (64, _le(np.float64)),
    "C64": (64, _le(np.complex64)),
    "F8_E5M2": (8, np.dtype(ml_dtypes.float8_e5m2)),
    "F8_E4M3": (8, np.dtype(ml_dtypes.float8_e4m3fn)),
    "F8_E4M3FNUZ": (8, np.dtype(ml_dtypes.float8_e4m3fnuz)),
    "F8_E5M2FNUZ": (8, np.dtype(ml_dtypes.float8_e5m2fnuz)),
    "F8_E8M0": (8, np.dtype(ml_dtypes.float8_e8m0fnu)),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}
MAX_HEADER = 100_000_000
READABLE_MAJOR = 3  # §9: this reader reads every 1.x, 2.x and 3.x, and refuses 4.0 and later


def numpy_type(name: str) -> np.dtype | None:
    """§3: a safetensors name, else a numpy ``dtype.str`` (never Python objects)."""
    if name in SAFETENSORS:
        return SAFETENSORS[name][1]
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise FormatError(f"unknown element type {name!r}") from None
    if dtype.hasobject:
        raise FormatError(f"element type {name!r} holds Python objects")
    return dtype


def nbytes_of(name: str, shape) -> int:
    numel = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if name in SAFETENSORS:
        bits = numel * SAFETENSORS[name][0]
        if bits % 8:
            raise FormatError(f"{numel} x {name} is not a whole number of bytes")
        return bits // 8
    return numel * numpy_type(name).itemsize


def _is_shape(shape) -> bool:
    return isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)


CHECKSUM_DIGITS = {"xxh3": 16, "sha256": 64}  # §8.6: algorithm -> lowercase hex digits of its digest


def _is_checksum(value) -> bool:
    """§4.4, §8.6: ``"<algorithm>:<lowercase hex digest>"`` of a known algorithm, the digest in full."""
    if not isinstance(value, str):
        return False
    algorithm, _, digest = value.partition(":")
    return CHECKSUM_DIGITS.get(algorithm) == len(digest) and set(digest) <= set("0123456789abcdef")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise FormatError("duplicate key in header JSON")
    return dict(pairs)


def checksum(data, algorithm: str = "xxh3") -> str:
    """§8.6: the checksum string of ``data`` in ``algorithm``: XXH3-64 (seed 0, the digest as 16
    lowercase hex digits, most significant first) or SHA-256."""
    if algorithm == "xxh3":
        return "xxh3:" + xxhash.xxh3_64_hexdigest(data)
    if algorithm == "sha256":
        return "sha256:" + hashlib.sha256(data).hexdigest()
    raise FormatError(f"unknown checksum algorithm {algorithm!r}")


def matches(data, expected: str) -> bool:
    """§8.6: ``data`` has the checksum ``expected``, in the algorithm ``expected`` names."""
    if not _is_checksum(expected):
        raise FormatError(f"not a checksum: {expected!r}")
    return checksum(data, expected.partition(":")[0]) == expected


def sha256(data) -> str:
    """The bare hex SHA-256 that archives of format 2.x and 1.0 record (§9.2)."""
    return hashlib.sha256(data).hexdigest()


def matrix_shape(shape, layout: str) -> tuple[int, int]:
    """§7.1."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    rows = shape[0] if layout == "first" else shape[-1]
    numel = int(np.prod(shape, dtype=np.int64))
    return (rows, numel // rows) if rows else (0, 0)


def from_matrix(matrix: np.ndarray, shape, layout: str) -> np.ndarray:
    """§7.1, inverse of the matrix view."""
    if layout == "last" and len(shape) >= 2:
        return np.moveaxis(matrix.reshape((shape[-1], *shape[:-1])), 0, -1)
    return matrix.reshape(shape)


def cast_back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """§7.2 step 5."""
    if dtype.kind == "b":
        return values != 0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def unzstd(frame: bytes, size: int, dictionary: zstandard.ZstdCompressionDict | None = None) -> bytes:
    """§5.2: one zstd frame that must declare, and hold, exactly ``size`` bytes (§4.0: the manifest's
    frame of format 3.0 is decompressed with the format's dictionary)."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise FormatError(f"not a zstd frame: {exc}") from None
    if params.content_size != size:  # also refuses a frame without a content size
        raise FormatError(f"zstd frame holds {params.content_size} bytes, part needs {size}")
    try:
        decompressor = zstandard.ZstdDecompressor(dict_data=dictionary) if dictionary else zstandard.ZstdDecompressor()
        out = decompressor.decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"bad zstd frame: {exc}") from None
    if len(out) != size:
        raise FormatError("zstd part has the wrong size")
    return out


PLANE_METHODS_SEEN: set[int] = set()  # which plane methods (§5.3) the tests' archives used (a test checks)


def _planes_head(data: bytes, size: int, itemsize: int) -> tuple[int, int, int]:
    """§5.3: (flags, k, n) of a ``zstd+planes`` or ``zstd+planes2`` part, checked."""
    if len(data) < 2:
        raise FormatError("planes part shorter than its header")
    flags, k = data[0], data[1]
    if flags & ~1 or k != itemsize or k < 2 or size % k or (flags & 1 and k not in (2, 4, 8)):
        raise FormatError(f"planes part: flags {flags:#x}, {k} planes for {itemsize}-byte elements, {size} bytes")
    return flags, k, size // k


def unplanes(data: bytes, size: int, itemsize: int) -> bytes:
    """§5.3: a ``zstd+planes`` part (2.x) back to its ``size`` raw bytes."""
    flags, k, n = _planes_head(data, size, itemsize)
    head = 2 + 9 * k
    if len(data) < head:
        raise FormatError("planes part shorter than its header")
    entries = [struct.unpack_from("<BQ", data, 2 + 9 * j) for j in range(k)]
    if sum(length for _, length in entries) != len(data) - head:
        raise FormatError("planes part: plane lengths do not add up")
    payloads, offset = [], head
    for method, length in entries:
        payloads.append((method, data[offset : offset + length]))
        offset += length
    return _from_planes(flags, k, n, payloads)


def leb128(data: bytes, offset: int) -> tuple[int, int]:
    """§5.3: the unsigned LEB128 integer at ``offset`` (7 bits a byte, least significant group first,
    the high bit set on every byte but the last) and the offset after it; at most 9 bytes (63 bits)."""
    value = 0
    for i in range(9):
        if offset + i >= len(data):
            raise FormatError("planes part: a length runs past the header")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, offset + i + 1
    raise FormatError("planes part: a length of more than 9 bytes")


def unplanes2(data: bytes, size: int, itemsize: int, paired: bool = False) -> bytes:
    """§5.3: a ``zstd+planes2`` part (3.0), or with ``paired`` a ``zstd+planes3`` part (3.1), back to its
    ``size`` raw bytes: the header lists (plane, method, LEB128 length) in payload order, every plane
    exactly once."""
    flags, k, n = _planes_head(data, size, itemsize)
    offset, entries = 2, []
    for _ in range(k):
        if offset + 2 > len(data):
            raise FormatError("planes part shorter than its header")
        plane, method = data[offset], data[offset + 1]
        length, offset = leb128(data, offset + 2)
        entries.append((plane, method, length))
    if sorted(plane for plane, _, _ in entries) != list(range(k)):
        raise FormatError(f"planes part: the planes listed are {[plane for plane, _, _ in entries]}, not 0..{k - 1}")
    if sum(length for _, _, length in entries) != len(data) - offset:
        raise FormatError("planes part: plane lengths do not add up")
    payloads: list = [None] * k
    for plane, method, length in entries:
        if method == 4 and not paired:
            raise FormatError(f"plane {plane} has unknown method 4 (zstd+planes2)")
        payloads[plane] = (method, data[offset : offset + length])
        offset += length
    return _from_planes(flags, k, n, payloads)


def unpair(payload: bytes, n: int) -> np.ndarray:
    """§5.3 method 4: a paired plane of ``n`` bytes: ``base``, the escapes' coding ``c``, LEB128 ``e``
    and ``L``, a zstd frame of ``ceil(n / 2)`` index bytes (index 2i in the low nibble), the escapes."""
    if len(payload) < 2:
        raise FormatError("paired plane too short")
    base, c = payload[0], payload[1]
    if base > 240 or c not in (0, 1):
        raise FormatError(f"paired plane: base {base}, escape coding {c}")
    e, offset = leb128(payload, 2)
    length, offset = leb128(payload, offset)
    if offset + length > len(payload) or e > n:
        raise FormatError("paired plane: lengths past its payload")
    pairs = np.frombuffer(unzstd(payload[offset : offset + length], -(-n // 2)), dtype=np.uint8)
    rest = payload[offset + length :]
    if c == 0 and len(rest) != e:
        raise FormatError(f"paired plane: {len(rest)} raw escaped bytes, expected {e}")
    escaped = np.frombuffer(rest if c == 0 else unzstd(rest, e), dtype=np.uint8)
    indices = np.empty(2 * pairs.size, dtype=np.uint8)
    indices[0::2], indices[1::2] = pairs & 15, pairs >> 4
    if n % 2 and indices[-1] != 0:
        raise FormatError("paired plane: the padding nibble is not 0")
    indices = indices[:n]
    out = (indices.astype(np.int64) + base).astype(np.uint8)
    where = np.flatnonzero(indices == 15)
    if where.size != e:
        raise FormatError(f"paired plane: {where.size} indices 15, {e} escaped bytes")
    out[where] = escaped
    return out


def _from_planes(flags: int, k: int, n: int, payloads: list[tuple[int, bytes]]) -> bytes:
    """§5.3: each plane's (method, payload) in plane order decoded to its ``n`` bytes, the planes
    interleaved back into elements and (flags bit 0) every element rotated right by one bit."""
    planes = np.empty((k, n), dtype=np.uint8)
    for j, (method, payload) in enumerate(payloads):
        length = len(payload)
        PLANE_METHODS_SEEN.add(method)
        if method == 0:  # raw
            if length != n:
                raise FormatError(f"raw plane {j} has {length} bytes, expected {n}")
            planes[j] = np.frombuffer(payload, dtype=np.uint8)
        elif method == 1:  # zstd
            planes[j] = np.frombuffer(unzstd(payload, n), dtype=np.uint8)
        elif method == 4:  # paired (zstd+planes3 only: unplanes2 checked)
            planes[j] = unpair(payload, n)
        elif method in (2, 3):  # palette + packed indices (3: the index bytes in a zstd frame)
            if length < 2:
                raise FormatError(f"packed plane {j} too short")
            b, d = payload[0], payload[1]
            if b not in (1, 2, 4) or not 1 <= d <= 2**b or length < 2 + d:
                raise FormatError(f"packed plane {j}: {b} bits, palette of {d}")
            palette = np.frombuffer(payload[2 : 2 + d], dtype=np.uint8)
            per = 8 // b
            m = -(-n // per)
            body = payload[2 + d :]
            if method == 3:
                body = unzstd(body, m)
            elif len(body) != m:
                raise FormatError(f"packed plane {j} has {len(body)} index bytes, expected {m}")
            packed = np.frombuffer(body, dtype=np.uint8)
            shifts = (b * np.arange(per)).astype(np.uint8)  # element i: bits b*(i % per) and up, LSB first
            index = ((packed[:, None] >> shifts) & np.uint8(2**b - 1)).reshape(-1)[:n]
            if n and int(index.max()) >= d:
                raise FormatError(f"packed plane {j}: index outside the palette")
            planes[j] = palette[index]
        else:
            raise FormatError(f"plane {j} has unknown method {method}")
    raw = np.ascontiguousarray(planes.T).reshape(-1)  # element i's byte j is plane j's byte i
    if flags & 1:  # rotate every little-endian 8k-bit word right by one bit
        words = raw.view(np.dtype(f"<u{k}"))
        one, top = words.dtype.type(1), words.dtype.type(8 * k - 1)
        raw = ((words >> one) | ((words & one) << top)).view(np.uint8)
    return raw.tobytes()


def check_version(record) -> None:
    """§8.1, §9: ``format`` is "sparsify" and the major version of ``format_version`` is one this reader
    reads (any minor version of it, older or newer)."""
    if not isinstance(record, dict) or record.get("format") != "sparsify":
        raise FormatError("format is not 'sparsify'")
    version = record.get("format_version")
    try:
        major = int(version.split(".", 1)[0])
    except (AttributeError, ValueError):
        raise FormatError(f"invalid format_version {version!r}") from None
    if major > READABLE_MAJOR:
        raise FormatError(f"archive format {version} is newer than this reader ({READABLE_MAJOR}.x)")


# §4.0: the manifest dictionary of format 3.0, a data file of the format (zstd raw content), checked
# by its size and checksum before use
DICTIONARY_FILE = Path(__file__).resolve().parents[1] / "sparsify" / "archive" / "manifest-3.0.dict"
DICTIONARY_BYTES, DICTIONARY_CHECKSUM = 28488, "xxh3:e12e97b6b4604899"


def manifest_dictionary() -> zstandard.ZstdCompressionDict:
    data = DICTIONARY_FILE.read_bytes()
    assert len(data) == DICTIONARY_BYTES and checksum(data) == DICTIONARY_CHECKSUM, "damaged dictionary file"
    return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


# §4.0: how an envelope packs the manifest -> whether its frame is compressed with the dictionary
MANIFEST_CODECS = {"zstd+base64": False, "zstd+dict+base64": True}
MAX_MANIFEST = 1 << 30  # §4.0: the largest content size a packed manifest may declare


def load_manifest(text: str):
    """§4.0: the manifest from the metadata string: an envelope (``manifest_codec``: the manifest's
    compact JSON in a zstd frame, base64; 3.0 compresses it with the format's dictionary) or, in 1.0
    archives, the manifest's JSON itself. As stored: :func:`upgrade` gives older ones 3.0's names."""
    try:
        outer = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"metadata string is not JSON: {exc}") from None
    if not isinstance(outer, dict) or "manifest_codec" not in outer:
        return outer  # format 1.0: the manifest itself
    check_version(outer)  # §9: the envelope's major version first (a later one may pack differently)
    codec = outer["manifest_codec"]
    if codec not in MANIFEST_CODECS:
        raise FormatError(f"manifest packed as {codec!r} (archive format {outer.get('format_version')}): unknown codec")
    packed = outer.get("manifest")
    if not isinstance(packed, str):
        raise FormatError("envelope without a packed manifest string")
    try:
        frame = base64.b64decode(packed, validate=True)  # strict: only the base64 alphabet, exact padding
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"packed manifest is not base64: {exc}") from None
    try:
        size = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise FormatError(f"packed manifest is not a zstd frame: {exc}") from None
    if size == zstandard.CONTENTSIZE_UNKNOWN:
        raise FormatError("packed manifest declares no content size")
    if size > MAX_MANIFEST:  # bounded before decompressing
        raise FormatError(f"packed manifest declares {size} bytes, more than {MAX_MANIFEST}")
    try:
        dictionary = manifest_dictionary() if MANIFEST_CODECS[codec] else None
        manifest = json.loads(unzstd(frame, size, dictionary).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"packed manifest is not UTF-8 JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != outer["format_version"]:
        raise FormatError("the envelope and the manifest declare different format versions")
    return manifest


# §9.2: the SHA-256 digests of format 2.x and 1.0 under 3.0's names, as checksum strings
RENAMED = {"sha256": "checksum", "content_sha256": "content_checksum", "decoded_sha256": "decoded_checksum"}


def upgrade(manifest: dict) -> dict:
    """§9.2: a 2.x or 1.0 manifest read as 3.0: in ``source``, its blob records, the tensor records
    and their part records, ``"sha256": "<hex>"`` becomes ``"checksum": "sha256:<hex>"`` (likewise
    ``content_sha256`` and ``decoded_sha256``; a ``null`` stays ``null``)."""

    def move(record: dict) -> None:
        for old, new in RENAMED.items():
            if old in record:
                value = record.pop(old)
                record[new] = f"sha256:{value}" if isinstance(value, str) else value

    source = manifest["source"]
    for record in [source, *source["blobs"].values()]:
        move(record)
    for tensor in manifest["tensors"]:
        move(tensor)
        for part in tensor["parts"]:
            move(part)
    return manifest


def major_of(version: str) -> int:
    return int(version.split(".", 1)[0])


class Reader:
    """Reads a whole archive into memory and decodes its tensors on request (``manifest``: in 3.0's
    field names, §9.2)."""

    def __init__(self, path: Path) -> None:
        self.data = Path(path).read_bytes()
        size = len(self.data)
        # §2.3 container checks
        if size < 8:
            raise FormatError("shorter than 8 bytes")
        (n,) = struct.unpack("<Q", self.data[:8])
        if n > MAX_HEADER or 8 + n > size:
            raise FormatError(f"bad header length {n}")
        if self.data[8:9] != b"{":
            raise FormatError("not a sparsify archive")
        try:
            header = json.loads(self.data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"header is not UTF-8 JSON: {exc}") from None
        if not isinstance(header, dict):
            raise FormatError("header is not an object")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise FormatError("__metadata__ must map strings to strings")
        self.base = 8 + n
        self.entries = {}
        for key, spec in header.items():
            if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
                raise FormatError(f"entry {key!r} malformed")
            offsets = spec["data_offsets"]
            if spec["dtype"] not in SAFETENSORS or not _is_shape(spec["shape"]):
                raise FormatError(f"entry {key!r} has a bad dtype or shape")
            if not (
                isinstance(offsets, list)
                and len(offsets) == 2
                and all(type(o) is int and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]
            ):
                raise FormatError(f"entry {key!r} has bad offsets")
            if offsets[1] - offsets[0] != nbytes_of(spec["dtype"], spec["shape"]):
                raise FormatError(f"entry {key!r}: size does not match dtype and shape")
            self.entries[key] = spec
        position = 0
        for spec in sorted(self.entries.values(), key=lambda s: tuple(s["data_offsets"])):
            if spec["data_offsets"][0] != position:
                raise FormatError("hole or overlap in the buffer")
            position = spec["data_offsets"][1]
        if self.base + position != size:
            raise FormatError("buffer does not end at the end of the file (truncated or trailing bytes)")
        # §8.1, §9 the manifest
        if "sparsify" not in metadata:
            raise FormatError("a plain safetensors file, not an archive")
        manifest = load_manifest(metadata["sparsify"])
        check_version(manifest)
        if major_of(manifest["format_version"]) < 3:
            upgrade(manifest)
        self.manifest = manifest
        # §8.2 manifest checks
        for tensor in manifest["tensors"]:
            shape = tensor["shape"]
            if not (isinstance(tensor["name"], str) and _is_shape(shape)):
                raise FormatError("bad tensor record")
            numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
            nbytes_of(tensor["dtype"], shape)
            view = tensor["view"]
            if view["layout"] not in ("first", "last") or (view["rows"], view["cols"]) != matrix_shape(
                shape, view["layout"]
            ):
                raise FormatError(f"{tensor['name']}: bad matrix view {view}")
            assert view["rows"] * view["cols"] == numel
            if not tensor["stages"]:
                raise FormatError(f"{tensor['name']}: no stages")
            for part in tensor["parts"]:
                self._check_part(part)
            for key in ("checksum", "decoded_checksum"):  # §4.4, §8.2: checksum strings, or (decoded) null
                digest = tensor.get(key)
                if not (digest is None and key == "decoded_checksum" or _is_checksum(digest)):
                    raise FormatError(f"{tensor['name']}: bad {key} {digest!r}")
        source = manifest["source"]
        if not _is_checksum(source["checksum"]):
            raise FormatError(f"bad source checksum {source['checksum']!r}")
        for name, part in source["blobs"].items():
            self._check_part(part)
            content = part.get("content_checksum")
            if not (content is None or _is_checksum(content)) or part["name"] != name:
                raise FormatError(f"source blob {name!r}: bad record")
        inline = source.get("inline", {})  # §4.2 (3.0): blobs held in the manifest as text
        if not isinstance(inline, dict) or not all(isinstance(v, str) for v in inline.values()):
            raise FormatError("source.inline must map names to strings")
        if set(inline) & set(source["blobs"]):
            raise FormatError(f"source blobs {sorted(set(inline) & set(source['blobs']))} are both inline and stored")
        if source["format"] == "safetensors" and "header" not in {*inline, *source["blobs"]}:
            raise FormatError("a safetensors source without its header blob")

    def _check_part(self, part) -> None:
        entry = self.entries.get(part["key"])
        if entry is None:
            raise FormatError(f"part {part['key']!r} is not in the file")
        begin, end = entry["data_offsets"]
        if end - begin != part["nbytes"] or not _is_checksum(part["checksum"]) or not _is_shape(part["shape"]):
            raise FormatError(f"part {part['key']!r} does not match its entry")
        logical = nbytes_of(part["dtype"], part["shape"])
        # §5.2: how the entry must look
        if part["codec"] is None and part["dtype"] in SAFETENSORS:
            expected = (part["dtype"], part["shape"])
        else:
            expected = ("U8", [part["nbytes"]])
        if (entry["dtype"], entry["shape"]) != expected:
            raise FormatError(f"part {part['key']!r}: entry is {entry['dtype']}{entry['shape']}, expected {expected}")
        if part["codec"] is None and logical != part["nbytes"]:
            raise FormatError(f"raw part {part['key']!r} has the wrong size")

    # -- parts --------------------------------------------------------------------------------

    def stored(self, part) -> bytes:
        """§8.3: the stored bytes, checksum verified before any use."""
        begin, end = self.entries[part["key"]]["data_offsets"]
        raw = self.data[self.base + begin : self.base + end]
        if not matches(raw, part["checksum"]):
            raise FormatError(f"checksum mismatch in {part['key']!r}")
        return raw

    def part_bytes(self, part) -> bytes:
        """§5.2: the logical bytes of a part."""
        raw = self.stored(part)
        size = nbytes_of(part["dtype"], part["shape"])
        if part["codec"] is None:
            return raw
        dtype = numpy_type(part["dtype"])
        itemsize = dtype.itemsize if dtype is not None else 1
        if part["codec"] == "zstd+planes":
            return unplanes(raw, size, itemsize)
        if part["codec"] in ("zstd+planes2", "zstd+planes3"):
            return unplanes2(raw, size, itemsize, paired=part["codec"] == "zstd+planes3")
        if part["codec"] not in ("zstd", "zstd+bytegroup"):
            raise FormatError(f"unknown codec {part['codec']!r}")
        out = unzstd(raw, size)
        if part["codec"] == "zstd+bytegroup":  # byte k of every element was stored in plane k
            if size % itemsize:
                raise FormatError("byte-grouped part is not a whole number of elements")
            out = np.frombuffer(out, np.uint8).reshape(itemsize, -1).T.tobytes()
        return out

    def part_array(self, part) -> np.ndarray:
        data = self.part_bytes(part)
        dtype = numpy_type(part["dtype"])
        if dtype is None:
            return np.frombuffer(data, dtype=np.uint8)
        return np.frombuffer(data, dtype=dtype).reshape(part["shape"])

    def blob(self, name: str) -> bytes:
        """§4.2, §8.3: a source blob: its text from ``source.inline`` as UTF-8 (3.0), or its stored part,
        whose decoded bytes must have ``content_checksum`` where the record has one (2.1 and later)."""
        source = self.manifest["source"]
        if name in source.get("inline", {}):
            return source["inline"][name].encode("utf-8")
        part = source["blobs"][name]
        data = self.part_bytes(part)
        if part.get("content_checksum") is not None and not matches(data, part["content_checksum"]):
            raise FormatError(f"source blob {name!r} differs from its content checksum")
        return data

    # -- tensors ------------------------------------------------------------------------------

    def record(self, name: str) -> dict:
        return next(t for t in self.manifest["tensors"] if t["name"] == name)

    def tensor(self, name: str) -> np.ndarray:
        """§7.2 (methods: §6), checked against the record's checksum (§8.4)."""
        record = self.record(name)
        decoded = self._decode(record)
        check_decoded(record, decoded)
        return decoded

    def _decode(self, record: dict) -> np.ndarray:
        name, shape, dtype = record["name"], record["shape"], numpy_type(record["dtype"])
        arrays = {p["name"]: self.part_array(p) for p in record["parts"]}
        stages = record["stages"]
        if stages[0]["method"] == "keep":
            if len(stages) != 1:
                raise FormatError("keep must be the only stage")
            data = arrays["0.keep.data"].tobytes()
            return np.frombuffer(data, dtype=np.uint8) if dtype is None else np.frombuffer(data, dtype).reshape(shape)
        rows, cols = record["view"]["rows"], record["view"]["cols"]
        total = np.zeros((rows, cols), dtype=np.float64)
        for i, stage in enumerate(stages):
            method = stage["method"]
            if method not in STAGE_DECODERS:
                raise FormatError(f"{name}: unknown or misplaced method {method!r}; refusing to decode it")
            try:
                parts = {p: arrays[f"{i}.{method}.{p}"] for p in stage["parts"]}
            except KeyError as exc:
                raise FormatError(f"{name}: missing part {exc.args[0]!r}") from None
            parts = decode_values(parts, stage.get("values", {}))  # §6.8: value-coded parts first
            total += STAGE_DECODERS[method](parts, stage, rows, cols)  # §7.2: the sum of all stages
        return cast_back(from_matrix(total, shape, record["view"]["layout"]), dtype)


def sparse_to_dense(parts: dict, m: int, n: int) -> np.ndarray:
    """§6.2: CSR, CSR with column gaps, or bitmask parts to a dense float64 (m, n) matrix, validated first."""
    values = parts["values"].reshape(-1).astype(np.float64)
    dense = np.zeros((m, n), dtype=np.float64)
    if set(parts) == {"indptr", "deltas", "values"}:
        parts = {"indptr": parts["indptr"], "indices": columns_from_gaps(parts, m, n), "values": parts["values"]}
    if set(parts) == {"mask", "values"}:
        mask_bytes = parts["mask"].reshape(-1)
        if mask_bytes.dtype != np.uint8 or mask_bytes.size != (m * n + 7) // 8:
            raise FormatError("bitmask has the wrong size")
        mask = np.unpackbits(mask_bytes, count=m * n, bitorder="big").astype(bool)
        if int(mask.sum()) != values.size:
            raise FormatError("bitmask and values disagree")
        dense.reshape(-1)[mask] = values
        return dense
    if set(parts) != {"indptr", "indices", "values"}:
        raise FormatError(f"unknown sparse layout {sorted(parts)}")
    indptr, indices = parts["indptr"].reshape(-1), parts["indices"].reshape(-1)
    if indptr.dtype.kind != "u" or indices.dtype.kind != "u":
        raise FormatError("CSR index parts must be unsigned")
    indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    if (
        indptr.size != m + 1
        or indptr[0] != 0
        or indptr[-1] != values.size
        or np.any(np.diff(indptr) < 0)
        or indices.size != values.size
        or (indices.size and indices.max() >= n)
    ):
        raise FormatError("inconsistent CSR parts")
    dense[np.repeat(np.arange(m), np.diff(indptr)), indices] = values
    return dense


def columns_from_gaps(parts: dict, m: int, n: int) -> np.ndarray:
    """§6.2 ``csr-delta``: the column of every value, a running sum of the gaps restarted at each row
    (the first gap of a row is its first column). Everything is checked before summing."""
    indptr, gaps = parts["indptr"].reshape(-1), parts["deltas"].reshape(-1)
    nnz = parts["values"].size
    if indptr.dtype.kind != "u" or gaps.dtype.kind != "u":
        raise FormatError("csr-delta index parts must be unsigned")
    indptr = indptr.astype(np.int64)
    if indptr.size != m + 1 or indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise FormatError("inconsistent csr-delta indptr")
    if gaps.size != nnz or (nnz and int(gaps.max()) >= n):  # no gap reaches n: the sums cannot overflow
        raise FormatError("csr-delta gaps do not fit the matrix")
    row_of = np.repeat(np.arange(m), np.diff(indptr))
    first = np.zeros(nnz, dtype=bool)
    first[indptr[:-1][np.diff(indptr) > 0]] = True
    if np.any(gaps[~first] == 0):
        raise FormatError("csr-delta: a column repeats within a row")
    columns = np.empty(nnz, dtype=np.int64)
    for r in np.unique(row_of):  # row by row, plainly
        begin, end = indptr[r], indptr[r + 1]
        columns[begin:end] = np.cumsum(gaps[begin:end].astype(np.int64))
    if nnz and int(columns.max()) >= n:
        raise FormatError("csr-delta column outside the matrix")
    return columns.astype(np.uint64)


def threshold_stage(parts: dict, stage: dict, m: int, n: int) -> np.ndarray:
    """§6.2."""
    return sparse_to_dense(parts, m, n)


FLOAT_PARTS = {np.dtype(SAFETENSORS[k][1]) for k in ("F16", "BF16", "F32", "F64")}


# -- §6.3-§6.5, §10.2: the reference decode arithmetic ---------------------------------------------


def ordered_dense_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """§6.3: (m, k) x (k, w) in float64, each output element from +0 adding a[i, j] * b[j, c] in
    increasing j, every term, each product and sum rounded once (numpy's separate * and +)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(a.shape[1]):
            out += a[:, j, None] * b[j]
    return out


def ordered_sparse_product(codes: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """§6.4: (S, K) sparse codes (given dense, float64) x (K, L) atoms: row s from +0 adding
    codes[s, k] * atoms[k] over the row's nonzero entries in increasing k, each operation rounded once."""
    atoms = np.asarray(atoms, dtype=np.float64)
    out = np.zeros((codes.shape[0], atoms.shape[1]), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(codes.shape[1]):
            rows = np.flatnonzero(codes[:, k])  # NaN is nonzero too
            if rows.size:
                out[rows] += codes[rows, k, None] * atoms[k]
    return out


# §6.4: the Taylor coefficients 1/(2i)! and 1/(2i+1)!, i = 0..9 (the factorials are exact in float64)
COS_COEFFICIENTS = [1.0 / float(math.factorial(2 * i)) for i in range(10)]
SIN_COEFFICIENTS = [1.0 / float(math.factorial(2 * i + 1)) for i in range(10)]


def cos_pi(p: np.ndarray, q: int) -> np.ndarray:
    """§6.4: cos(pi p / q) for integers p >= 0, q >= 1: exact reduction to [0, pi/4], then Horner."""
    r = np.asarray(p, dtype=np.int64) % (2 * q)
    r = np.where(r > q, 2 * q - r, r)  # r / q in [0, 1]
    negative = 2 * r > q
    sign = np.where(negative, -1.0, 1.0)
    r = np.where(negative, q - r, r)  # [0, 1/2]
    sine = 4 * r > q
    a = np.where(sine, q - 2 * r, 2 * r)  # the angle is pi a / (2q), in [0, pi/4]
    x = math.pi * (a.astype(np.float64) / float(2 * q))
    t = x * x
    cos_poly, sin_poly = np.zeros_like(x), np.zeros_like(x)
    for c, s in zip(reversed(COS_COEFFICIENTS), reversed(SIN_COEFFICIENTS), strict=True):
        cos_poly = cos_poly * -t + c
        sin_poly = sin_poly * -t + s
    return sign * np.where(sine, sin_poly * x, cos_poly)


def dct_matrix(length: int) -> np.ndarray:
    """§6.4: T_L[k, l] = cos_pi((2l + 1) k, 2L) * w_k, w_0 = sqrt(1/L), w_k = sqrt(2/L)."""
    k = np.arange(length, dtype=np.int64)[:, None]
    sample = np.arange(length, dtype=np.int64)[None, :]
    weights = np.array([math.sqrt(1.0 / length)] + [math.sqrt(2.0 / length)] * (length - 1))[:, None]
    return cos_pi((2 * sample + 1) * k, 2 * length) * weights


def svd_stage(parts: dict, stage: dict, m: int, n: int) -> np.ndarray:
    """§6.3: us @ vt, or per column block with ``block=N`` (ranks + concatenated factors)."""
    us, vt = parts["us"], parts["vt"]
    if us.dtype not in FLOAT_PARTS or vt.dtype != us.dtype:
        raise FormatError(f"svd: factors of types {us.dtype} and {vt.dtype}")
    us, vt = np.ascontiguousarray(us, dtype=np.float64), np.ascontiguousarray(vt, dtype=np.float64)
    block = stage["config"].get("block")
    if block is None:
        if set(parts) != {"us", "vt"} or us.ndim != 2 or us.shape[0] != m or vt.shape != (us.shape[1], n):
            raise FormatError(f"svd: factors {us.shape} x {vt.shape} do not make {m} x {n}")
        if us.shape[1] > min(m, n):
            raise FormatError("svd: rank exceeds min(m, n)")
        return ordered_dense_product(us, vt)
    if type(block) is not int or block < 1:
        raise FormatError(f"svd: bad block {block!r}")
    widths = [block] * (n // block) + ([n % block] if n % block else [])
    ranks = parts["ranks"]
    if ranks.dtype.kind != "u" or ranks.shape != (len(widths),):
        raise FormatError("svd: bad ranks part")
    ranks = ranks.astype(np.int64)
    if any(r > min(m, w) for r, w in zip(ranks, widths, strict=True)):
        raise FormatError("svd: a block rank exceeds its block")
    if us.shape != (m, int(ranks.sum())) or vt.shape != (int(np.dot(ranks, widths)) if widths else 0,):
        raise FormatError(f"svd: factors {us.shape}, {vt.shape} do not fit the block ranks")
    out = np.zeros((m, n), dtype=np.float64)
    col = a = b = 0
    for r, w in zip(ranks.tolist(), widths, strict=True):
        if r:
            out[:, col : col + w] = ordered_dense_product(us[:, a : a + r], vt[b : b + r * w].reshape(r, w))
        col, a, b = col + w, a + r, b + r * w
    return out


def signal_shape(m: int, n: int, segment) -> tuple[int, int]:
    """§6.4 signals: (L, S)."""
    if segment is None:
        return m, n
    if type(segment) is not int or segment < 1:
        raise FormatError(f"bad segment {segment!r}")
    return segment, -(-(m * n) // segment)


def signals_to_matrix(signals: np.ndarray, m: int, n: int, segment) -> np.ndarray:
    """§6.4: the (m, n) stage matrix from the (L, S) signals (segment padding dropped)."""
    if segment is None:
        return signals.reshape(m, n)
    return np.ascontiguousarray(signals.T).reshape(-1)[: m * n].reshape(m, n)


def lasso_stage(parts: dict, stage: dict, m: int, n: int) -> np.ndarray:
    """§6.4: decoded by resolved.dict (a learned dictionary may have fallen back to identity)."""
    kind = stage["resolved"].get("dict", stage["config"].get("dict", "identity"))
    segment = stage["config"].get("segment")
    length, count = signal_shape(m, n, segment)
    if kind == "identity":
        return sparse_to_dense(parts, m, n)
    if kind == "dct":
        codes = sparse_to_dense(parts, count, length)  # signals x atoms
        return signals_to_matrix(ordered_sparse_product(codes, dct_matrix(length)).T, m, n, segment)
    if kind == "learned":
        coded = {k: v for k, v in parts.items() if k != "dictionary"}
        if "dictionary" not in parts:
            raise FormatError("lasso: dict=learned without a dictionary part")
        dictionary = parts["dictionary"]
        if dictionary.dtype not in FLOAT_PARTS or dictionary.ndim != 2 or dictionary.shape[0] != length:
            raise FormatError(f"lasso: dictionary {dictionary.dtype}{dictionary.shape} for signals of length {length}")
        codes = sparse_to_dense(coded, count, dictionary.shape[1])  # signals x atoms
        return signals_to_matrix(ordered_sparse_product(codes, dictionary.astype(np.float64).T).T, m, n, segment)
    raise FormatError(f"lasso: unknown dictionary {kind!r}")


def ksvd_stage(parts: dict, stage: dict, m: int, n: int) -> np.ndarray:
    """§6.5: D @ X with X (atoms x signals) in the ``codes_`` parts, summed in ascending atom order."""
    segment = stage["config"].get("segment")
    length, count = signal_shape(m, n, segment)
    dictionary = parts.get("dictionary")
    if dictionary is None or dictionary.dtype not in FLOAT_PARTS or dictionary.ndim != 2:
        raise FormatError("ksvd: missing or bad dictionary")
    if dictionary.shape[0] != length:
        raise FormatError(f"ksvd: dictionary {dictionary.shape} for signals of length {length}")
    codes = {k[len("codes_") :]: v for k, v in parts.items() if k.startswith("codes_")}
    if len(codes) + 1 != len(parts):
        raise FormatError(f"ksvd: unexpected parts {sorted(parts)}")
    x = sparse_to_dense(codes, dictionary.shape[1], count)  # atoms x signals
    signals = ordered_sparse_product(x.T, dictionary.astype(np.float64).T)  # row s = y_s, atoms ascending
    return signals_to_matrix(signals.T, m, n, segment)


# -- §6.6 bit packing, integer groups, codebooks --------------------------------------------------


CODES_SEEN: set[tuple[str, bool]] = set()  # (which encoding, packed) the tests' archives used (tests check)


def load_codes(stored: np.ndarray, bits: int, count: int, resolved: dict, what: str) -> np.ndarray:
    """§6.6: ``count`` codes of ``bits`` bits, bit-packed or (``resolved.packed`` false) one per byte."""
    packed = resolved.get("packed", True)  # absent: packed (archives written before the choice existed)
    if type(packed) is not bool:
        raise FormatError(f"{what}: 'packed' is {packed!r}, not a bool")
    CODES_SEEN.add((what, packed))
    if packed:
        return unpack_codes(stored, bits, count)
    if stored.dtype != np.uint8 or stored.shape != (count,):
        raise FormatError(f"{what}: unpacked codes {stored.dtype}{stored.shape}, expected U8 ({count},)")
    if count and int(stored.max()) >= 2**bits:
        raise FormatError(f"{what}: an unpacked code does not fit {bits} bits")
    return stored.astype(np.int64)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """§6.6: ``count`` codes of ``bits`` bits from a big-endian bit stream (code k: bits k*b .. k*b+b-1)."""
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise FormatError("packed codes must be a 1-D U8 part")
    if packed.size != -(-count * bits // 8):
        raise FormatError(f"{packed.size} bytes do not hold exactly {count} codes of {bits} bits")
    stream = np.unpackbits(packed, count=count * bits, bitorder="big").reshape(count, bits).astype(np.int64)
    return stream @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def as_rows_shape(shape) -> tuple[int, int]:
    """§6.6: (rows, cols) of a value array: 2-D as is, 0-D/1-D one row, N-D shape[0] x the rest."""
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) <= 1:
        return 1, count
    return shape[0], (count // shape[0] if shape[0] else 0)


def int_values(parts: dict, resolved: dict, rows: int, cols: int) -> np.ndarray:
    """§6.6 integer groups: float64 (rows, cols) values from ``q``, ``scale`` and optional ``zero``."""
    bits, group, symmetric = resolved.get("bits"), resolved.get("group"), resolved.get("symmetric")
    if type(bits) is not int or not 1 <= bits <= 8 or type(group) is not int or group < 0:
        raise FormatError(f"integer coding: bits {bits!r}, group {group!r}")
    if resolved.get("rows") != rows or set(parts) - {"q", "scale", "zero"} or not {"q", "scale"} <= set(parts):
        raise FormatError(f"integer coding: rows {resolved.get('rows')!r} / parts {sorted(parts)} do not fit")
    if symmetric is not ("zero" not in parts):
        raise FormatError("integer coding: 'symmetric' disagrees with the presence of a 'zero' part")
    width = cols if group == 0 or group >= cols else group
    groups = -(-cols // width) if width else 0
    scale = parts["scale"]
    if scale.dtype not in (SAFETENSORS["F16"][1], SAFETENSORS["F32"][1]) or scale.shape != (rows, groups):
        raise FormatError(f"integer coding: scale {scale.dtype}{scale.shape}, expected F16/F32 ({rows}, {groups})")
    if "zero" in parts:
        zero = parts["zero"]
        if zero.dtype != np.uint8 or zero.shape != (rows, groups):
            raise FormatError("integer coding: zero points must be U8 (rows, groups)")
        offset = zero.astype(np.float64)
    else:
        offset = np.full((rows, groups), 2.0 ** (bits - 1))
    codes = load_codes(parts["q"], bits, rows * cols, resolved, "integer groups").reshape(rows, cols)
    group_of = np.arange(cols) // width if width else np.zeros(0, dtype=np.int64)  # group of each column
    return (codes.astype(np.float64) - offset[:, group_of]) * scale.astype(np.float64)[:, group_of]


def codebook_values(parts: dict, resolved: dict, count: int) -> np.ndarray:
    """§6.6 codebook: float64 ``codebook[index]`` for ``count`` packed indices."""
    if set(parts) != {"codebook", "index"}:
        raise FormatError(f"codebook coding with parts {sorted(parts)}")
    codebook, bits = parts["codebook"], resolved.get("bits")
    if codebook.dtype != SAFETENSORS["F32"][1] or codebook.ndim != 1 or codebook.size == 0:
        raise FormatError("codebook must be a non-empty 1-D F32 part")
    if type(bits) is not int or not 1 <= bits <= 8 or codebook.size > 2**bits:
        raise FormatError(f"codebook of {codebook.size} entries with {bits!r}-bit indices")
    index = load_codes(parts["index"], bits, count, resolved, "codebook")
    if count and int(index.max()) >= codebook.size:
        raise FormatError("codebook index out of range")
    return codebook.astype(np.float64)[index]


# -- §6.8 value coders ---------------------------------------------------------------------------

VALUE_TYPES = FLOAT_PARTS | {SAFETENSORS[k][1] for k in SAFETENSORS if k.startswith("F8_")}  # float part types
CAST_CODERS = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
INT_CODERS = {"int8": 8, "int4": 4}


def decode_values(parts: dict, records: dict) -> dict:
    """§6.8: replace each value-coded part's sub-parts (``<part>.<sub>``) by the part they decode to."""
    if not isinstance(records, dict):
        raise FormatError("stage 'values' must be an object")
    parts = dict(parts)
    for name, record in records.items():
        coder = record.get("coder")
        if "skipped" in record:  # stored as it is, under its own name
            if name not in parts:
                raise FormatError(f"skipped value coding of a missing part {name!r}")
            continue
        if coder not in CAST_CODERS and coder not in INT_CODERS and coder != "codebook":
            raise FormatError(f"unknown value coder {coder!r}; refusing to decode it")
        dtype, shape = numpy_type(record["dtype"]), record["shape"]
        if dtype not in VALUE_TYPES or not _is_shape(shape) or name in parts:
            raise FormatError(f"value coding of {name!r}: bad dtype, shape or name")
        try:
            subs = {sub: parts.pop(f"{name}.{sub}") for sub in record["parts"]}
        except KeyError as exc:
            raise FormatError(f"value coding of {name!r}: missing sub-part {exc.args[0]!r}") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        resolved = record["resolved"]
        if coder in CAST_CODERS:
            cast = subs.get("cast")
            if set(subs) != {"cast"} or cast.dtype != SAFETENSORS[CAST_CODERS[coder]][1] or cast.size != count:
                raise FormatError(f"{coder} coding of {name!r}: bad 'cast' sub-part")
            values = cast.astype(np.float64)
        elif coder in INT_CODERS:
            if resolved.get("bits") != INT_CODERS[coder]:
                raise FormatError(f"{coder} coding with {resolved.get('bits')!r} bits")
            values = int_values(subs, resolved, *as_rows_shape(shape))
        else:
            values = codebook_values(subs, resolved, count)
        parts[name] = values.astype(dtype).reshape(shape)  # float64 -> the part's own type
    if any("." in name for name in parts):
        raise FormatError(f"sub-parts without a value coding record: {sorted(parts)}")
    return parts


# -- §6.7 quant -------------------------------------------------------------------------------------

SIGNED = {np.dtype(np.int8), *(SAFETENSORS[k][1] for k in ("I16", "I32", "I64"))}


def uniform_step(parts: dict) -> np.ndarray:
    """§6.7: the uniform quantiser's ``step`` part, one finite F64."""
    step = parts["step"]
    if step.dtype != SAFETENSORS["F64"][1] or step.shape != (1,) or not np.isfinite(step[0]):
        raise FormatError("quant: step must be one finite F64")
    return step


def quant_stage(parts: dict, stage: dict, m: int, n: int) -> np.ndarray:
    """§6.7: integer groups, a codebook, or a uniform step; float64 values, no cast on the way."""
    names, resolved = set(parts), stage["resolved"]
    if names == {"codebook", "index"}:
        return codebook_values(parts, resolved, m * n).reshape(m, n)
    if names == {"q", "step"}:
        step = uniform_step(parts)
        bits = resolved.get("bits")  # the writer's choice, recorded: packed fields or signed integers
        CODES_SEEN.add(("uniform", bits is not None))
        if bits is not None:
            if bits not in (2, 4) or type(bits) is not int:
                raise FormatError(f"quant: {bits!r}-bit uniform codes")
            codes = unpack_codes(parts["q"], bits, m * n).astype(np.float64) - 2.0 ** (bits - 1)
        else:
            q = parts["q"]
            if q.dtype not in SIGNED or q.size != m * n:
                raise FormatError(f"quant: uniform codes {q.dtype}{q.shape} for a {m} x {n} matrix")
            codes = q.astype(np.float64)
        return codes.reshape(m, n) * float(step[0])
    if {"q", "step"} < names <= {"q", "step", "row_shift", "column_shift"}:
        return weighted_uniform(parts, resolved, m, n)
    if names in ({"q", "scale"}, {"q", "scale", "zero"}):
        return int_values(parts, resolved, m, n)
    raise FormatError(f"quant: unknown parts {sorted(names)}")


# §6.7 (3.2): 2**(k/4) = Q[k mod 4] * 2**floor(k/4), Q the nearest doubles to 2**0, 2**(1/4), 2**(1/2), 2**(3/4)
QUARTER_OCTAVES = (1.0, 1.189207115002721, 1.4142135623730951, 1.6817928305074290)
UNSIGNED = {np.dtype(f"<u{k}") for k in (1, 2, 4, 8)} | {np.dtype("u1")}


def quarter_octaves(shifts: np.ndarray) -> np.ndarray:
    return np.array([math.ldexp(QUARTER_OCTAVES[k % 4], k // 4) for k in shifts.tolist()], dtype=np.float64)


def weighted_uniform(parts: dict, resolved: dict, m: int, n: int) -> np.ndarray:
    """§6.7 weighted uniform (3.2): the codes in shift order (zigzag unless packed), a step per entry
    d * 2**(r_i/4) * 2**(c_j/4)."""
    step = uniform_step(parts)
    shifts = {}
    for name, count in (("row_shift", m), ("column_shift", n)):
        if name in parts:
            if parts[name].dtype != np.dtype("i1") or parts[name].shape != (count,):
                raise FormatError(f"quant: {name} must be {count} I8 shifts")
            shifts[name] = parts[name].astype(np.int64)
    bits = resolved.get("bits")
    CODES_SEEN.add(("weighted", bits is not None))
    if bits is not None:
        if bits not in (2, 4) or type(bits) is not int:
            raise FormatError(f"quant: {bits!r}-bit uniform codes")
        stored = unpack_codes(parts["q"], bits, m * n).astype(np.int64) - 2 ** (bits - 1)
    else:
        q = parts["q"]
        shape = (n, m) if "column_shift" in shifts else (m, n)
        if q.dtype not in UNSIGNED or q.shape != shape:
            raise FormatError(f"quant: weighted codes {q.dtype}{q.shape}, expected unsigned {shape}")
        z = q.astype(np.int64)
        stored = np.where(z % 2 == 0, z // 2, -(z + 1) // 2)  # zigzag: 0, 1, 2, 3 -> 0, -1, 1, -2
    # shift order: rows by a stable sort of row_shift, columns of column_shift, column by column
    row_order = np.argsort(shifts["row_shift"], kind="stable") if "row_shift" in shifts else np.arange(m)
    col_order = np.argsort(shifts["column_shift"], kind="stable") if "column_shift" in shifts else np.arange(n)
    permuted = stored.reshape(n, m).T if "column_shift" in shifts else stored.reshape(m, n)
    codes = np.empty((m, n), dtype=np.int64)
    codes[np.ix_(row_order, col_order)] = permuted
    row_steps = float(step[0]) * quarter_octaves(shifts.get("row_shift", np.zeros(m, np.int64)))
    col_factors = quarter_octaves(shifts.get("column_shift", np.zeros(n, np.int64)))
    return codes.astype(np.float64) * (row_steps[:, None] * col_factors[None, :])


DECODED_CHECKS: list[str] = []  # which checksum each decode was checked against (tests look)


def check_decoded(record: dict, decoded: np.ndarray) -> None:
    """§8.4: an exact tensor decodes to the original's bytes (``checksum``), a lossy one to the bytes
    the writer recorded (``decoded_checksum``, 2.1 on; nothing to check in older records). C order, own
    dtype."""
    exact = record["metrics"]["exact"]
    expected = record["checksum"] if exact else record.get("decoded_checksum")
    DECODED_CHECKS.append("checksum" if exact else "decoded_checksum" if expected is not None else "none")
    if expected is not None and not matches(np.ascontiguousarray(decoded).tobytes(), expected):
        what = "the original's checksum" if exact else "decoded_checksum"
        raise FormatError(f"{record['name']}: decoded bytes differ from {what}")


STAGE_DECODERS = {
    "threshold": threshold_stage,
    "svd": svd_stage,
    "lasso": lasso_stage,
    "ksvd": ksvd_stage,
    "quant": quant_stage,
}


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------


CURRENT = "3.3"  # the version FORMAT.md describes, which sparsify writes


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Small matrices: multi-threaded BLAS only adds contention (x100 slower on a busy 2-core machine)."""
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def originals() -> dict[str, np.ndarray]:
    return load_file(str(FP32))


def make(tmp_path: Path, source: Path, name: str, **options) -> Path:
    out = tmp_path / name
    sparsify.compress(source, out, **options)
    return out


def pack_manifest(manifest: dict, codec: str = "zstd+dict+base64") -> str:
    """§4.0: the metadata string of a 3.0 archive: an envelope holding the manifest's compact JSON as one
    zstd frame (content size and checksum; sparsify uses level 15, 9 past 64 KiB of JSON) compressed with the format's
    dictionary, base64-coded; ``codec`` ``"zstd+base64"``: 2.x's envelope, without the dictionary (2.x
    wrote it at level 19)."""
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    dictionary = manifest_dictionary() if MANIFEST_CODECS[codec] else None
    level = (15 if len(text.encode("utf-8")) <= 1 << 16 else 9) if dictionary is not None else 19
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, dict_data=dictionary)
    frame = compressor.compress(text.encode("utf-8"))
    envelope = {
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "manifest_codec": codec,
        "manifest": base64.b64encode(frame).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":"))


def with_metadata(data: bytes, text: str) -> bytes:
    """The archive ``data`` with ``__metadata__["sparsify"]`` replaced by ``text`` (§2: header re-padded so
    the buffer starts 8-byte aligned; the buffer itself is unchanged)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["sparsify"] = text
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def metadata_text(data: bytes) -> str:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])["__metadata__"]["sparsify"]


def edit_manifest(data: bytes, old: str, new: str, count: int) -> bytes:
    """The archive with ``old`` replaced by ``new`` (``count`` times) in its manifest's compact JSON."""
    text = json.dumps(load_manifest(metadata_text(data)), ensure_ascii=False, separators=(",", ":"))
    assert text.count(old) == count
    return with_metadata(data, pack_manifest(json.loads(text.replace(old, new))))


def narrowest_uint(value: int) -> str:
    return (
        next(n for n, limit in (("U8", 255), ("U16", 65535), ("U32", 2**32 - 1)) if value <= limit)
        if value <= 2**32 - 1
        else "U64"
    )


def check_lossless(reader: Reader, name: str, original: np.ndarray) -> None:
    decoded = reader.tensor(name)
    record = reader.record(name)
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert decoded.tobytes() == original.tobytes()
    assert matches(np.ascontiguousarray(decoded).tobytes(), record["checksum"])  # 2.x: a sha256: string
    assert record["metrics"]["exact"] is True


LAYOUT_PARTS = {  # §6.2: a stage's parts list names its sparse layout
    "csr": ["indptr", "indices", "values"],
    "csr-delta": ["indptr", "deltas", "values"],
    "bitmask": ["mask", "values"],
}


def check_pruned(reader: Reader, name: str, original: np.ndarray, layout: str) -> np.ndarray:
    """A one-stage threshold tensor: every entry is the original or 0, the largest ones kept."""
    record = reader.record(name)
    (stage,) = record["stages"]
    decoded = reader.tensor(name)
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert stage["resolved"]["layout"] == layout
    assert stage["parts"] == LAYOUT_PARTS[layout]
    kept = decoded != 0
    assert np.array_equal(decoded[kept], original[kept])  # bit-exact copies (no zeros in these weights)
    assert int(kept.sum()) == stage["resolved"]["nnz"] == round((1 - stage["config"]["sparsity"]) * original.size)
    assert np.abs(original[kept]).min() >= np.abs(original[~kept]).max()
    assert checksum(original.tobytes()) == record["checksum"]  # the checksum names the original
    # the manifest's metrics describe this decoded tensor (REPORT.md definitions)
    w, w_hat = original.astype(np.float64), decoded.astype(np.float64)
    rel = np.linalg.norm(w_hat - w) / np.linalg.norm(w)
    assert rel == pytest.approx(record["metrics"]["rel_error"], rel=1e-9)
    assert record["metrics"]["exact"] is False
    return decoded


def test_csr_raw_parts(tmp_path, originals):
    """High sparsity gives CSR; without a coder every part is stored raw in its own type."""
    reader = Reader(make(tmp_path, FP32, "csr.sparsify", pipeline="threshold:sparsity=0.95"))
    manifest = reader.manifest
    assert manifest["format"] == "sparsify" and manifest["format_version"] == CURRENT
    assert [t["name"] for t in manifest["tensors"]] == list(originals)  # source file order
    for name in BIASES:
        assert reader.record(name)["stages"][0]["method"] == "keep"
        check_lossless(reader, name, originals[name])
    for name in WEIGHTS:
        check_pruned(reader, name, originals[name], "csr")
        record = reader.record(name)
        nnz, cols = record["stages"][0]["resolved"]["nnz"], record["view"]["cols"]
        parts = {p["name"]: p for p in record["parts"]}
        assert parts["0.threshold.indptr"]["dtype"] == narrowest_uint(nnz)
        assert parts["0.threshold.indices"]["dtype"] == narrowest_uint(cols - 1)
        assert parts["0.threshold.values"]["dtype"] == "F32"
        assert all(p["codec"] is None for p in record["parts"])
        for p in record["parts"]:  # §5.1 keys, §5.2 entries in the part's own type
            assert p["key"] == f"{name}/{p['name']}"
            assert reader.entries[p["key"]]["dtype"] == p["dtype"]
    assert {p["dtype"] for t in manifest["tensors"] for p in t["parts"]} >= {"U8", "U16", "F32"}


def test_bitmask_zstd_parts(tmp_path, originals):
    """Half the weights kept: a bitmask is smaller than CSR; zstd-coded parts are U8 frames."""
    reader = Reader(make(tmp_path, FP32, "mask.sparsify", pipeline="threshold:sparsity=0.5+zstd"))
    for name in BIASES:
        check_lossless(reader, name, originals[name])
    for name in WEIGHTS:
        check_pruned(reader, name, originals[name], "bitmask")
        mask = next(p for p in reader.record(name)["parts"] if p["name"] == "0.threshold.mask")
        rows, cols = originals[name].shape
        assert mask["dtype"] == "U8" and mask["shape"] == [(rows * cols + 7) // 8]
        # big bit order, row-major: bit 7 of byte 0 is entry (0, 0)
        packed = reader.part_array(mask)
        kept = reader.tensor(name) != 0
        assert bool(packed[0] & 0x80) == kept[0, 0] and bool(packed[0] & 0x01) == kept[0, 7]
    coded = [p for t in reader.manifest["tensors"] for p in t["parts"] if p["codec"] in ("zstd", "zstd+planes2")]
    assert coded
    for p in coded:
        assert reader.entries[p["key"]]["dtype"] == "U8" and reader.entries[p["key"]]["shape"] == [p["nbytes"]]
        assert p["nbytes"] < nbytes_of(p["dtype"], p["shape"])
    # the source's own header comes back from its blob: held in the manifest as text (§4.2, 3.0)
    (n,) = struct.unpack("<Q", FP32.read_bytes()[:8])
    assert reader.blob("header") == FP32.read_bytes()[8 : 8 + n]
    source = reader.manifest["source"]
    assert source["checksum"] == checksum(FP32.read_bytes()) and source["size"] == FP32.stat().st_size
    assert source["inline"]["header"] == FP32.read_bytes()[8 : 8 + n].decode("utf-8") and source["blobs"] == {}
    assert not any(key.startswith("__sparsify__/") for key in reader.entries)


def test_stages_add_up(tmp_path, originals):
    """Two threshold stages (the second on the residual) decode to their sum; rules pick per tensor."""
    path = make(
        tmp_path,
        FP32,
        "stages.sparsify",
        pipeline="keep",
        rules=["fc2.weight=threshold:sparsity=0.95+threshold:sparsity=0.9+zstd"],
    )
    reader = Reader(path)
    record = reader.record("fc2.weight")
    assert [s["method"] for s in record["stages"]] == ["threshold", "threshold"]
    assert {p["name"].split(".")[0] for p in record["parts"]} == {"0", "1"}
    w = originals["fc2.weight"]
    decoded = reader.tensor("fc2.weight")
    kept = decoded != 0
    assert np.array_equal(decoded[kept], w[kept])
    assert int(kept.sum()) == sum(s["resolved"]["nnz"] for s in record["stages"])
    first = sparse_to_dense(
        {
            p: reader.part_array(next(q for q in record["parts"] if q["name"] == f"0.threshold.{p}"))
            for p in record["stages"][0]["parts"]
        },
        *w.shape,
    )
    assert 0 < np.count_nonzero(first) < kept.sum()  # stage 1 alone is not the whole tensor
    for name in ("fc1.weight", "fc3.weight", *BIASES):  # no rule: the default pipeline, keep
        check_lossless(reader, name, originals[name])


def test_layout_last(tmp_path, originals):
    """HDF5 (Keras) kernels are (in, out): their matrix view puts the last axis on the rows."""
    reader = Reader(make(tmp_path, HDF5, "h5.sparsify", pipeline="threshold:sparsity=0.9"))
    record = reader.record("model_weights/dense/dense/kernel:0")
    assert record["shape"] == [64, 256] and record["view"] == {"layout": "last", "rows": 256, "cols": 64}
    kernel = reader.tensor(record["name"])
    assert kernel.shape == (64, 256)
    check_pruned(reader, record["name"], np.ascontiguousarray(originals["fc1.weight"].T), "bitmask")


def test_bf16(tmp_path, originals):
    """BF16 tensors: values stored as BF16, decoded through ml_dtypes and cast back exactly."""
    reader = Reader(make(tmp_path, BF16, "bf16.sparsify", pipeline="threshold:sparsity=0.9+zstd"))
    for name in WEIGHTS:
        record = reader.record(name)
        assert record["dtype"] == "BF16"
        values = next(p for p in record["parts"] if p["name"] == "0.threshold.values")
        assert values["dtype"] == "BF16"
        expected = originals[name].astype(ml_dtypes.bfloat16)  # the file holds fp32 rounded to bf16
        decoded = reader.tensor(name)
        assert decoded.dtype == ml_dtypes.bfloat16
        kept = decoded.astype(np.float32) != 0
        assert np.array_equal(decoded[kept].view(np.uint16), expected[kept].view(np.uint16))
        assert int(kept.sum()) == record["stages"][0]["resolved"]["nnz"]
    for name in BIASES:
        check_lossless(reader, name, originals[name].astype(ml_dtypes.bfloat16))


def test_version_rule(tmp_path):
    """§9: any 3.x (older or newer minor) is read, 4.0 is refused, by this reader and by sparsify; the
    envelope's version is checked first, and must be the manifest's. (2.x and 1.0: the golden archives.)"""
    data = make(tmp_path, FP32, "v.sparsify", pipeline="threshold:sparsity=0.9+zstd").read_bytes()
    old = f'"format_version":"{CURRENT}"'
    path = tmp_path / "edited.sparsify"
    for version in ("3.1", "3.7", "3.10"):  # envelope and manifest say the same
        path.write_bytes(edit_manifest(data, old, f'"format_version":"{version}"', 1))
        assert Reader(path).manifest["format_version"] == version
        assert sparsify.inspect(path)["tensors"]
    for version in ("4.0", "10.1"):
        path.write_bytes(edit_manifest(data, old, f'"format_version":"{version}"', 1))
        with pytest.raises(FormatError, match="newer"):
            Reader(path)
        with pytest.raises(sparsify.SparsifyError, match="newer than this sparsify"):
            sparsify.inspect(path)
    # an envelope claiming 4.0 is refused before its manifest is unpacked (a 4.x may pack it otherwise)
    path.write_bytes(with_metadata(data, envelope_with(data, format_version="4.0", manifest="not base64!")))
    with pytest.raises(FormatError, match="newer"):
        Reader(path)
    with pytest.raises(sparsify.SparsifyError, match="newer than this sparsify"):
        sparsify.inspect(path)
    path.write_bytes(with_metadata(data, envelope_with(data, format_version="2.1")))  # the manifest says 3.0
    with pytest.raises(FormatError, match="different format versions"):
        Reader(path)
    with pytest.raises(sparsify.SparsifyError, match="the envelope says format"):
        sparsify.inspect(path)


def test_corruption_detected(tmp_path):
    """§2.3 and §8.3: flipped, truncated or extended files are refused."""
    path = make(tmp_path, FP32, "c.sparsify", pipeline="threshold:sparsity=0.9+zstd")
    data = path.read_bytes()
    reader = Reader(path)
    part = reader.record("fc2.weight")["parts"][-1]
    offset = reader.base + reader.entries[part["key"]]["data_offsets"][0] + 10
    flipped = tmp_path / "flipped.sparsify"
    flipped.write_bytes(data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :])
    bad = Reader(flipped)  # the header is intact ...
    reader.tensor("fc2.weight")
    with pytest.raises(FormatError, match="checksum"):  # ... the part is not
        bad.tensor("fc2.weight")
    for name, content in (("short", data[:-1]), ("long", data + b"\0"), ("tiny", data[:7])):
        target = tmp_path / f"{name}.sparsify"
        target.write_bytes(content)
        with pytest.raises(FormatError):
            Reader(target)
    with pytest.raises(FormatError, match="plain safetensors"):
        Reader(FP32)


def test_deterministic(tmp_path):
    """§10: same input and options, byte-identical archives."""
    a = make(tmp_path, FP32, "a.sparsify", pipeline="threshold:sparsity=0.9+zstd")
    b = make(tmp_path, FP32, "b.sparsify", pipeline="threshold:sparsity=0.9+zstd")
    assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------------------------------------------
# svd, lasso, ksvd (FORMAT.md §6.3-§6.5): bit-identical to what sparsify.decompress writes
# ---------------------------------------------------------------------------------------------------


def reference(tmp_path: Path, archive: Path, suffix: str) -> dict[str, np.ndarray]:
    """The tensors ``sparsify.decompress`` writes for ``archive``, read back by safetensors or h5py."""
    out = sparsify.decompress(archive, tmp_path / f"{archive.stem}.out{suffix}", force=True)
    if suffix == ".safetensors":
        return load_file(str(out))
    tensors: dict[str, np.ndarray] = {}
    with h5py.File(out, "r") as f:
        f.visititems(lambda name, obj: tensors.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return tensors


def check_archive(reader: Reader, expected: dict[str, np.ndarray], originals: dict[str, np.ndarray]) -> None:
    """Every tensor decodes bit-identically to ``expected``; lossy ones match their recorded metrics."""
    assert {t["name"] for t in reader.manifest["tensors"]} == set(expected)
    for record in reader.manifest["tensors"]:
        name = record["name"]
        decoded = reader.tensor(name)
        assert decoded.dtype == expected[name].dtype and decoded.shape == expected[name].shape, name
        assert decoded.tobytes() == expected[name].tobytes(), name
        original = originals[name]
        version = reader.manifest["format_version"]
        algorithm = "xxh3" if major_of(version) >= 3 else "sha256"  # §9.2: older digests read as sha256:
        assert checksum(np.ascontiguousarray(original).tobytes(), algorithm) == record["checksum"]
        if version not in ("1.0", "2.0"):  # §4.4: decoded_checksum exactly for lossy tensors (2.1 on)
            exact = record["metrics"]["exact"]
            lossy = checksum(np.ascontiguousarray(decoded).tobytes(), algorithm)
            assert record["decoded_checksum"] == (None if exact else lossy)
        else:
            assert "decoded_checksum" not in record
        if record["stages"][0]["method"] == "keep":
            assert "budget_scale" not in record
            assert decoded.tobytes() == original.tobytes()
            continue
        scale = record["budget_scale"]  # §4.4
        assert isinstance(scale, float) and 0 < scale <= 1
        if not any("max_error" in s["config"] for s in record["stages"]):
            assert scale == 1.0
        w, w_hat = original.astype(np.float64), decoded.astype(np.float64)
        rel = np.linalg.norm(w_hat - w) / np.linalg.norm(w)
        assert rel == pytest.approx(record["metrics"]["rel_error"], rel=1e-9, abs=1e-12), name
        bound = record["stages"][-1]["config"].get("max_error")
        if bound is not None:
            assert rel <= bound


def stage_of(reader: Reader, name: str, index: int = 0) -> tuple[dict, dict[str, dict]]:
    """A tensor's stage ``index`` and its part records by part name."""
    record = reader.record(name)
    stage = record["stages"][index]
    prefix = f"{index}.{stage['method']}."
    parts = {p["name"][len(prefix) :]: p for p in record["parts"] if p["name"].startswith(prefix)}
    assert list(parts) == stage["parts"]
    return stage, parts


@pytest.mark.parametrize(
    ("pipeline", "rules"),
    [
        ("svd:rank=4", []),
        ("svd:max_error=0.3,block=64", ["fc3.weight=svd:max_error=1.0"]),  # fc3.weight: rank 0
        ("lasso:alpha=0.02", []),
        ("lasso:nnz=8,dict=dct,segment=64", []),
        ("lasso:max_error=0.4,dict=learned", []),  # fc1.weight falls back to identity
        ("ksvd:atoms=16,nnz=2,iters=2", []),
        ("ksvd:nnz=2,atoms=16,iters=2,segment=32", []),
        ("svd:rank=2+threshold:sparsity=0.9", []),
    ],
)
def test_new_methods(tmp_path, originals, pipeline, rules):
    path = make(tmp_path, FP32, "m.sparsify", pipeline=pipeline, rules=rules)
    reader = Reader(path)
    check_archive(reader, reference(tmp_path, path, ".safetensors"), originals)
    for name in WEIGHTS:
        stage, parts = stage_of(reader, name)
        rows, cols = originals[name].shape
        method, config = stage["method"], stage["config"]
        if method == "svd" and "block" not in config:
            rank = parts["us"]["shape"][1]
            assert parts["us"]["shape"] == [rows, rank] and parts["vt"]["shape"] == [rank, cols]
            assert rank == stage["resolved"]["rank"] == (0 if config.get("max_error") == 1.0 else config.get("rank"))
            assert parts["us"]["dtype"] == parts["vt"]["dtype"] == "F32"
        elif method == "svd":
            ranks = reader.part_array(parts["ranks"]).tolist()
            widths = [64] * (cols // 64) + ([cols % 64] if cols % 64 else [])
            assert ranks == stage["resolved"]["ranks"] and len(ranks) == len(widths)
            assert parts["us"]["shape"] == [rows, sum(ranks)]
            assert parts["vt"]["shape"] == [sum(r * w for r, w in zip(ranks, widths, strict=True))]
        elif method == "lasso":
            kind = stage["resolved"]["dict"]
            length, count = signal_shape(rows, cols, config.get("segment"))
            assert (stage["resolved"]["signal_length"], stage["resolved"]["signals"]) == (length, count)
            if kind == "learned":
                assert config["dict"] == "learned" and stage["parts"][-1] == "dictionary"
                assert parts["dictionary"]["shape"] == [length, stage["resolved"]["atoms"]]
            else:
                assert "dictionary" not in parts and kind == config["dict"] or "fallback" in stage["resolved"]
            if kind == "dct":
                codes = sparse_to_dense({k: reader.part_array(v) for k, v in parts.items()}, count, length)
                assert np.count_nonzero(codes) <= 8 * count  # mean nnz <= 8 per signal
        elif method == "ksvd":
            resolved = stage["resolved"]
            length, count = signal_shape(rows, cols, config.get("segment"))
            assert parts["dictionary"]["shape"] == [length, 16]
            assert all(k.startswith("codes_") for k in stage["parts"][1:])
            codes = sparse_to_dense(
                {k[6:]: reader.part_array(v) for k, v in parts.items() if k != "dictionary"}, 16, count
            )
            assert np.count_nonzero(codes, axis=0).max() <= 2 == resolved["nnz"]  # atoms x signals
            assert np.count_nonzero(codes) == resolved["codes_nnz"]
    if "learned" in pipeline:  # resolved.dict, not config.dict, says how to decode (§6.4)
        kinds = {n: reader.record(n)["stages"][0]["resolved"]["dict"] for n in WEIGHTS}
        assert kinds == {"fc1.weight": "identity", "fc2.weight": "learned", "fc3.weight": "learned"}
        assert reader.record("fc1.weight")["stages"][0]["config"]["dict"] == "learned"


def test_composition_sum(tmp_path, originals):
    """svd then threshold on the residual: the tensor is the sum of both stages (§7.2)."""
    path = make(tmp_path, FP32, "comp.sparsify", pipeline="svd:rank=2+threshold:sparsity=0.9")
    reader = Reader(path)
    record = reader.record("fc2.weight")
    assert [s["method"] for s in record["stages"]] == ["svd", "threshold"]
    w = originals["fc2.weight"].astype(np.float64)
    _, svd_parts = stage_of(reader, "fc2.weight", 0)
    low_rank = svd_stage({k: reader.part_array(v) for k, v in svd_parts.items()}, record["stages"][0], *w.shape)
    assert np.linalg.norm(w - reader.tensor("fc2.weight")) < np.linalg.norm(w - low_rank)


def test_layout_last_and_view_override(tmp_path):
    """HDF5 kernels use layout last; ``view=first`` in a pipeline overrides it (§7.1)."""
    path = make(
        tmp_path,
        CREPE,
        "crepe.sparsify",
        pipeline="keep",
        rules=[
            "conv1/*kernel*=svd:rank=4+threshold:sparsity=0.95",
            "conv2/*kernel*=lasso:nnz=4,dict=dct,segment=64",
            "conv3/*kernel*=svd:rank=2,block=100,view=first",
            "classifier/*kernel*=ksvd:atoms=16,nnz=2,iters=2",
        ],
    )
    reader = Reader(path)
    expected = reference(tmp_path, path, ".h5")
    with h5py.File(CREPE, "r") as f:
        originals = {t["name"]: f[t["name"]][()] for t in reader.manifest["tensors"]}
    check_archive(reader, expected, originals)
    views = {t["name"].split("/")[0]: t["view"] for t in reader.manifest["tensors"] if "kernel" in t["name"]}
    assert views["conv1"] == {"layout": "last", "rows": 128, "cols": 512}
    assert views["classifier"] == {"layout": "last", "rows": 360, "cols": 256}
    assert views["conv3"] == {"layout": "first", "rows": 64, "cols": 256}


def test_unknown_method_refused(tmp_path):
    """§9: a method this reader does not know is refused, never guessed."""
    data = make(tmp_path, FP32, "u.sparsify", pipeline="svd:rank=4").read_bytes()
    patched = tmp_path / "unknown.sparsify"
    patched.write_bytes(edit_manifest(data, '"method":"svd"', '"method":"svx"', 3))
    reader = Reader(patched)  # the container and manifest are fine ...
    with pytest.raises(FormatError, match="unknown or misplaced method 'svx'"):
        reader.tensor("fc2.weight")  # ... the tensor is not decodable
    check_lossless(reader, "fc2.bias", load_file(str(FP32))["fc2.bias"])  # other tensors still are
    with pytest.raises(Exception, match="unknown method 'svx'"):
        sparsify.decompress(patched, tmp_path / "unknown.safetensors")


# ---------------------------------------------------------------------------------------------------
# Format 2.1: decoded_sha256 and the reference decode arithmetic (FORMAT.md §4.4, §6.3-§6.5, §8.4, §10.2)
# ---------------------------------------------------------------------------------------------------


def test_cos_pi_and_dct_matrix():
    """§6.4: the polynomial cosine is within an ulp or two of the true one, exact at the quadrant points,
    and T_L is the orthonormal DCT (its transpose applied to c is scipy's inverse DCT, up to rounding)."""
    for q in (1, 2, 3, 7, 64, 100, 512):
        p = np.arange(0, q + 1, dtype=np.int64)  # [0, pi]: math.cos's own argument is off by < 1 ulp of pi
        exact = np.array([math.cos(math.pi * int(v) / q) for v in p])
        assert np.all(np.abs(cos_pi(p, q) - exact) <= 4 * np.spacing(1.0)), q
        assert np.array_equal(cos_pi(p + 2 * q, q), cos_pi(p, q))  # reduced exactly: periodic ...
        assert np.array_equal(cos_pi(2 * q - p, q), cos_pi(p, q))  # ... and even, bit for bit
    assert cos_pi(np.array([0, 2, 4]), 2).tolist() == [1.0, -1.0, 1.0]  # p / q = 0, 1, 2
    assert cos_pi(np.array([1, 3]), 2).tolist() == [0.0, 0.0]  # pi/2, 3 pi/2: exactly zero
    assert cos_pi(np.array([1]), 3)[0] == pytest.approx(0.5, abs=np.spacing(0.5))  # to an ulp, not exactly
    for length in (1, 5, 64):
        t = dct_matrix(length)
        assert np.allclose(t @ t.T, np.eye(length), atol=1e-14)
        import scipy.fft  # the test's comparison only: the reader itself has no FFT

        c = np.random.default_rng(length).standard_normal((length, 3))
        assert np.allclose(ordered_sparse_product(c.T, t).T, scipy.fft.idct(c, type=2, norm="ortho", axis=0))


def test_ordered_products_by_hand():
    """§6.3, §6.4: the sums run from +0 in increasing index, every dense term, the nonzero sparse ones."""
    a = np.array([[1e16, 1.0, -1e16]])
    b = np.array([[1.0], [1.0], [1.0]])
    assert ordered_dense_product(a, b).tolist() == [[0.0]]  # (1e16 + 1) rounds to 1e16, then - 1e16
    assert ordered_dense_product(np.array([[1e16, -1e16, 1.0]]), b).tolist() == [[1.0]]  # another order
    zero = ordered_dense_product(np.array([[-0.0]]), np.array([[1.0]]))
    assert zero.tolist() == [[0.0]] and not np.signbit(zero).any()  # +0 + (-0) is +0
    inf = np.array([[np.inf, 1.0]])
    assert np.isnan(ordered_dense_product(np.array([[0.0]]), inf[:, :1])).all()  # 0 * inf: a dense term
    assert ordered_sparse_product(np.array([[0.0, 2.0]]), np.array([[np.inf], [1.0]])).tolist() == [[2.0]]
    assert ordered_dense_product(np.zeros((2, 0)), np.zeros((0, 3))).tolist() == [[0.0] * 3] * 2  # k = 0


@pytest.mark.parametrize(
    "pipeline",
    [
        "svd:rank=4+zstd",
        "svd:max_error=0.3,block=32",
        "lasso:nnz=8,dict=dct,segment=64",
        "lasso:alpha=0.02,dict=dct",
        "lasso:nnz=4,dict=learned,atoms=16+bf16",
        "ksvd:atoms=16,nnz=2,iters=2,segment=32",
        "svd:rank=2+threshold:sparsity=0.9+int8",
    ],
)
def test_decoded_checksum(tmp_path, originals, pipeline):
    """§8.4: every lossy tensor's decode, by this reader's reference arithmetic, has the recorded
    decoded_checksum (bf16 source too); an edited one is refused by both readers, and so is an edited
    checksum of an exact tensor."""
    source = BF16 if "bf16" in pipeline else FP32
    path = make(tmp_path, source, "d.sparsify", pipeline=pipeline)
    reader = Reader(path)
    DECODED_CHECKS.clear()
    check_archive(reader, reference(tmp_path, path, ".safetensors"), load_file(str(source)))
    assert DECODED_CHECKS == ["checksum", "decoded_checksum"] * 3  # biases exact, weights lossy
    data = path.read_bytes()
    for name, key in (("fc2.weight", "decoded_checksum"), ("fc2.bias", "checksum")):
        manifest = load_manifest(metadata_text(data))
        record = next(t for t in manifest["tensors"] if t["name"] == name)
        assert record[key].startswith("xxh3:")  # what 3.0 writes
        record[key] = "xxh3:" + "0" * 16
        damaged = tmp_path / "damaged.sparsify"
        damaged.write_bytes(with_metadata(data, pack_manifest(manifest)))
        with pytest.raises(FormatError, match="decoded bytes differ"):
            Reader(damaged).tensor(name)
        out = tmp_path / "damaged.safetensors"
        with pytest.raises(sparsify.CorruptArchiveError, match="differ from the (recorded|original's) checksum"):
            sparsify.decompress(damaged, out)
        assert not out.exists()


def test_checksum_strings():
    """§8.6: checksum strings name their algorithm; XXH3-64 (seed 0) of the specification's test
    input, SHA-256 of the empty string; anything else is not a checksum."""
    assert checksum(b"") == "xxh3:2d06800538d394c2"  # XXH3_64bits of the empty input
    assert checksum(b"", "sha256") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert checksum(b"a") == "xxh3:" + f"{xxhash.xxh3_64_intdigest(b'a'):016x}"  # most significant digit first
    assert matches(b"abc", checksum(b"abc")) and matches(b"abc", checksum(b"abc", "sha256"))
    assert not matches(b"abd", checksum(b"abc")) and not matches(b"abd", checksum(b"abc", "sha256"))
    for bad in ("xxh3:" + "0" * 15, "xxh3:" + "A" * 16, "sha256:" + "0" * 16, "crc32:00000000", "0" * 64, None, 7):
        assert not _is_checksum(bad), bad
        with pytest.raises(FormatError):
            matches(b"", bad)


def test_sha256_checksums_are_read(tmp_path):
    """§8.6: a record may name SHA-256 (``"sha256:<64 hex>"``, what 2.x digests become when read, §9.2):
    both readers check it as such, in tensors, parts and the source; a wrong one is refused."""
    data = (GOLDEN / "digits_mlp.keep.sparsify").read_bytes()
    original = FP32.read_bytes()
    manifest = load_manifest(metadata_text(data))
    reader = Reader(GOLDEN / "digits_mlp.keep.sparsify")
    for tensor in manifest["tensors"]:
        tensor["checksum"] = checksum(reader.tensor(tensor["name"]).tobytes(), "sha256")
        for part in tensor["parts"]:
            part["checksum"] = checksum(reader.stored(part), "sha256")
    manifest["source"]["checksum"] = checksum(original, "sha256")
    path = tmp_path / "sha256.sparsify"
    path.write_bytes(with_metadata(data, pack_manifest(manifest)))
    mixed = Reader(path)
    for tensor in manifest["tensors"]:
        assert mixed.tensor(tensor["name"]).tobytes() == reader.tensor(tensor["name"]).tobytes()
    out = sparsify.decompress(path, tmp_path / "sha256.safetensors")  # the whole-file check too (§8.5)
    assert out.read_bytes() == original
    manifest["source"]["checksum"] = "sha256:" + "0" * 64
    path.write_bytes(with_metadata(data, pack_manifest(manifest)))
    with pytest.raises(sparsify.CorruptArchiveError, match="differs from the file that was compressed"):
        sparsify.decompress(path, tmp_path / "wrong.safetensors")
    manifest["tensors"][1]["parts"][0]["checksum"] = "sha256:" + "0" * 64
    path.write_bytes(with_metadata(data, pack_manifest(manifest)))
    with pytest.raises(FormatError, match="checksum mismatch"):
        Reader(path).tensor(manifest["tensors"][1]["name"])
    with pytest.raises(sparsify.CorruptArchiveError, match="checksum mismatch"):
        with sparsify.archive.Archive(path) as archive:
            archive.decode(archive.tensors[1])


# ---------------------------------------------------------------------------------------------------
# Format 2.0: zstd+planes, csr-delta, value coders, quant, plan (FORMAT.md §4.7, §5.3, §6.2, §6.6-§6.8)
# ---------------------------------------------------------------------------------------------------


def planes_part(flags: int, planes: list[tuple[int, bytes]]) -> bytes:
    """A §5.3 part from (method, payload) per plane."""
    head = bytes((flags, len(planes))) + b"".join(struct.pack("<BQ", m, len(p)) for m, p in planes)
    return head + b"".join(p for _, p in planes)


def test_planes_by_hand():
    """§5.3's example, a packed plane, and the checks a reader must make."""
    example = planes_part(1, [(0, b"\x00\x01"), (0, b"\x00\x00"), (0, b"\x00\x00"), (0, b"\x7f\x80")])
    assert example[:11].hex() == "0104" + "00" + "0200000000000000"
    assert np.frombuffer(unplanes(example, 8, 4), "<f4").tolist() == [1.0, -2.0]
    # U16 elements 0x0000, 0x8001, 0x0002, 0x8003, 0x0004: the high bytes are a 1-bit palette plane
    low = (0, b"\x00\x01\x02\x03\x04")
    packed = (2, bytes((1, 2, 0x00, 0x80, 0b01010)))  # b=1, d=2, palette; element i is bit i (LSB first)
    expected = np.array([0x0000, 0x8001, 0x0002, 0x8003, 0x0004], "<u2").tobytes()
    assert unplanes(planes_part(0, [low, packed]), 10, 2) == expected
    framed = (3, bytes((1, 2, 0x00, 0x80)) + zstandard.ZstdCompressor(write_content_size=True).compress(b"\x0a"))
    assert unplanes(planes_part(0, [low, framed]), 10, 2) == expected
    four = (2, bytes((2, 3, 5, 6, 7, 0b10_01_00_10, 0b00_00_00_01)))  # b=2: 4 per byte, indices 2,0,1,2,1
    assert unplanes(planes_part(0, [(1, zstandard.ZstdCompressor().compress(bytes(5))), four]), 10, 2) == bytes(
        [0, 7, 0, 5, 0, 6, 0, 7, 0, 6]
    )
    bad = [
        planes_part(2, [low, packed]),  # unknown flag
        planes_part(0, [low]),  # 1 plane for 2-byte elements
        planes_part(0, [low, (2, bytes((1, 1, 0x00, 0b10)))]),  # index 1 outside a 1-entry palette
        planes_part(0, [low, (0, b"\x00" * 4)]),  # raw plane of the wrong length
        planes_part(0, [low, (4, b"\x00" * 5)]),  # unknown method
        planes_part(0, [low, packed]) + b"\x00",  # lengths do not add up
        planes_part(0, [low, (1, zstandard.ZstdCompressor(write_content_size=False).compress(bytes(5)))]),
    ]
    for data in bad:
        with pytest.raises(FormatError):
            unplanes(data, 10, 2)
    with pytest.raises(FormatError):
        unplanes(planes_part(1, [low, low, low]), 15, 3)  # rotation needs 2-, 4- or 8-byte elements


def leb128_bytes(value: int) -> bytes:
    """§5.3: ``value`` as unsigned LEB128."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def planes2_part(flags: int, entries: list[tuple[int, int, bytes]]) -> bytes:
    """A §5.3 ``zstd+planes2`` part from (plane, method, payload) in payload order."""
    head = bytes((flags, len(entries))) + b"".join(bytes((j, m)) + leb128_bytes(len(p)) for j, m, p in entries)
    return head + b"".join(p for _, _, p in entries)


def test_planes2_by_hand():
    """§5.3's ``zstd+planes2`` example (a raw plane stored before the coded one it follows), LEB128
    lengths, the checks a reader must make; sparsify's decoder agrees on every case."""
    from sparsify.coders.planes import decode_planes
    from sparsify.errors import CorruptArchiveError

    def both(data: bytes, size: int, itemsize: int) -> bytes:
        ours = unplanes2(data, size, itemsize)
        assert bytes(decode_planes(memoryview(data), size, itemsize, version=2)) == ours
        return ours

    # U16 elements 0x1100, 0x2201, 0x3300, 0x4401, 0x5500: plane 0 (low bytes) 00 01 00 01 00 packed,
    # 1 bit per index, palette 00 01, indices 0 1 0 1 0 -> 0b01010; plane 1 (high bytes) raw, stored first
    example = planes2_part(0, [(1, 0, bytes.fromhex("1122334455")), (0, 2, bytes.fromhex("010200010a"))])
    assert example.hex(" ") == "00 02 01 00 05 00 02 05 11 22 33 44 55 01 02 00 01 0a"
    expected = np.array([0x1100, 0x2201, 0x3300, 0x4401, 0x5500], "<u2").tobytes()
    assert both(example, 10, 2) == expected
    # the same planes in plane order, and plane 0 raw: the same elements
    assert both(planes2_part(0, [(0, 2, bytes.fromhex("010200010a")), (1, 0, bytes.fromhex("1122334455"))]), 10, 2)
    assert both(planes2_part(0, [(0, 0, bytes.fromhex("0001000100")), (1, 0, bytes.fromhex("1122334455"))]), 10, 2)
    assert [leb128_bytes(v).hex() for v in (0, 5, 127, 128, 300, 16384)] == ["00", "05", "7f", "8001", "ac02", "808001"]
    assert leb128(bytes.fromhex("ac02"), 0) == (300, 2) and leb128(bytes.fromhex("8001ff"), 0) == (128, 2)
    # 128 rotated float32 elements (the §11 example's shape): lengths of two LEB128 bytes
    values = np.linspace(0.25, 0.49, 128, dtype=np.float32)
    words = values.view("<u4")
    rotated = ((words << np.uint32(1)) | (words >> np.uint32(31))).view(np.uint8).reshape(128, 4)
    entries = [(j, 0, rotated[:, j].tobytes()) for j in range(3)]
    entries.append((3, 1, zstandard.ZstdCompressor(write_checksum=False).compress(rotated[:, 3].tobytes())))
    part = planes2_part(1, entries)
    assert part[: 17 - 3].hex(" ") == "01 04 00 00 80 01 01 00 80 01 02 00 80 01"
    assert both(part, 512, 4) == values.tobytes()
    low, high = (0, 0, bytes.fromhex("0001000100")), (1, 0, bytes.fromhex("1122334455"))
    bad = [
        planes2_part(0, [low, (0, 0, high[2])]),  # plane 0 twice, plane 1 missing
        planes2_part(0, [low, (2, 0, high[2])]),  # no plane 2 in 2-byte elements
        planes2_part(0, [low]),  # 1 plane for 2-byte elements
        planes2_part(2, [low, high]),  # unknown flag
        planes2_part(1, [(0, 0, b"\0" * 5), (1, 0, b"\0" * 5), (2, 0, b"\0" * 5)]),  # rotated 3-byte elements
        planes2_part(0, [low, (1, 0, b"\x11\x22\x33\x44")]),  # a raw plane of the wrong length
        planes2_part(0, [low, (1, 4, high[2])]),  # unknown method
        planes2_part(0, [low, (1, 2, bytes((1, 1, 0x00, 0b10)))]),  # index 1 outside a 1-entry palette
        planes2_part(0, [low, high]) + b"\x00",  # lengths do not add up
        planes2_part(0, [low, high])[:-1],  # truncated
        bytes.fromhex("0002 0000 85"),  # a length that runs past the header
        bytes.fromhex("0002 0000") + b"\x80" * 10 + b"\x00",  # a length of more than 63 bits
        planes2_part(0, [low, (1, 1, zstandard.ZstdCompressor(write_content_size=False).compress(high[2]))]),
    ]
    for data in bad:
        size, itemsize = (15, 3) if data[1] == 3 else (10, 2)
        with pytest.raises(FormatError):
            unplanes2(data, size, itemsize)
        with pytest.raises(CorruptArchiveError):
            decode_planes(memoryview(data), size, itemsize, version=2)


def h5_tensors(path: Path, names) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in names}


def test_planes_archive(tmp_path):
    """keep+zstd: multi-byte parts are zstd+planes3 or zstd+planes2 (3.1); every plane method and both
    rotations occur, and payloads come in plane order (small parts, coded every way) or with the raw
    planes first (large ones, §5.3): both orders occur and decode."""
    seen: set[tuple[int, int]] = set()
    orders = set()
    for source in (FP32, BF16, CREPE):
        reader = Reader(make(tmp_path, source, f"{source.stem}.sparsify", pipeline="keep+zstd"))
        names = [t["name"] for t in reader.manifest["tensors"]]
        originals = load_file(str(source)) if source.suffix == ".safetensors" else h5_tensors(source, names)
        for name in names:
            check_lossless(reader, name, originals[name])
            (part,) = reader.record(name)["parts"]
            assert part["codec"] != "zstd+planes"  # 2.x's codec is read, no longer written
            if part["codec"] in ("zstd+planes2", "zstd+planes3"):
                stored = reader.stored(part)
                assert stored[1] == numpy_type(part["dtype"]).itemsize
                offset, entries = 2, []
                for _ in range(stored[1]):
                    entries.append((stored[offset], stored[offset + 1]))
                    _, offset = leb128(stored, offset + 2)
                in_order = entries == sorted(entries)
                assert in_order or [m for _, m in entries] == sorted((m for _, m in entries), key=lambda m: m != 0)
                orders.add("plane order" if in_order else "raw first")
                seen |= {(stored[0], method) for _, method in entries}
                assert (4 in {m for _, m in entries}) == (part["codec"] == "zstd+planes3")  # paired: planes3 only
    assert {flags for flags, _ in seen} == {0, 1} and {method for _, method in seen} >= {0, 1, 2, 4}
    assert orders == {"plane order", "raw first"}
    reader = Reader(make(tmp_path, BF16, "bf16-half.sparsify", pipeline="threshold:sparsity=0.5+zstd"))
    for name in WEIGHTS:
        reader.tensor(name)
    assert 3 in PLANE_METHODS_SEEN  # packed indices in a zstd frame
    for name in ("v2.1/digits_mlp.keep.sparsify", "v2.0/digits_mlp.keep.sparsify"):
        older = Reader(GOLDEN / name)  # 2.x archives hold zstd+planes parts, still read
        planes = [t["name"] for t in older.manifest["tensors"] if t["parts"][0]["codec"] == "zstd+planes"]
        assert planes
        for tensor in planes:
            check_lossless(older, tensor, load_file(str(FP32))[tensor])


def test_zstd_frames_of_parts_have_no_checksum(tmp_path):
    """§5.2 (3.0): the writer's zstd frames carry their content size but no checksum of their own (the
    part's checksum covers them), in plain parts and in planes alike; the manifest's frame keeps its."""
    reader = Reader(GOLDEN / "digits_mlp.threshold.sparsify")
    frames = 0
    for tensor in reader.manifest["tensors"]:
        for part in tensor["parts"]:
            if part["codec"] == "zstd":
                params = zstandard.get_frame_parameters(reader.stored(part))
                assert params.content_size == nbytes_of(part["dtype"], part["shape"]) and not params.has_checksum
                frames += 1
    assert frames == 3
    frame = base64.b64decode(json.loads(metadata_text(reader.data))["manifest"])
    assert zstandard.get_frame_parameters(frame).has_checksum


def test_csr_delta(tmp_path, originals):
    """§6.2 csr-delta: per-row column gaps; chosen by stored size, recorded in resolved.layout."""
    path = make(tmp_path, FP32, "delta.sparsify", pipeline="threshold:sparsity=0.95+zstd")
    reader = Reader(path)
    layouts = {n: reader.record(n)["stages"][0]["resolved"]["layout"] for n in WEIGHTS}
    assert layouts["fc2.weight"] == "csr-delta" and layouts["fc1.weight"] == "bitmask"
    check_archive(reader, reference(tmp_path, path, ".safetensors"), originals)
    for name in WEIGHTS:
        check_pruned(reader, name, originals[name], layouts[name])
    _, parts = stage_of(reader, "fc2.weight")
    gaps = reader.part_array(parts["deltas"])
    indptr = reader.part_array(parts["indptr"]).astype(np.int64)
    kept = reader.tensor("fc2.weight") != 0
    for r in (0, 1, 77):  # the running sum of a row's gaps gives its columns
        assert np.cumsum(gaps[indptr[r] : indptr[r + 1]]).tolist() == np.flatnonzero(kept[r]).tolist()
    assert parts["deltas"]["dtype"] == narrowest_uint(int(gaps.max()))
    # raw parts too (HDF5 kernels, layout last): crepe at 0.9 has csr-delta and csr or bitmask tensors
    path = make(tmp_path, CREPE, "crepe-delta.sparsify", pipeline="threshold:sparsity=0.9")
    reader = Reader(path)
    expected = reference(tmp_path, path, ".h5")
    check_archive(reader, expected, h5_tensors(CREPE, expected))
    records = reader.manifest["tensors"]
    delta = [t for t in records if t["stages"][0]["resolved"].get("layout") == "csr-delta"]
    assert delta and all(p["codec"] is None for t in delta for p in t["parts"])
    assert all(t["stages"][0]["parts"] == ["indptr", "deltas", "values"] for t in delta)


def code_bytes(count: int, bits: int, resolved: dict) -> int:
    """§6.6: the size of a codes part, bit-packed or (``packed`` false) one code per byte."""
    assert isinstance(resolved["packed"], bool)  # sparsify 2.0 always records the choice
    return -(-count * bits // 8) if resolved["packed"] else count


def check_value_coding(reader: Reader, coder: str | None) -> None:
    """§4.4, §6.8: ``value_coder``, stage ``values`` records and the stored (sub-)part names agree."""
    for record in reader.manifest["tensors"]:
        lossless = record["stages"][0]["method"] == "keep"
        assert ("value_coder" in record) and (record["value_coder"] is None) == (coder is None or lossless)
        if record["value_coder"] is not None:
            assert record["value_coder"].split(":")[0] == coder
        for i, stage in enumerate(record["stages"]):
            values = stage.get("values")
            if record["value_coder"] is None or stage["method"] == "quant":
                assert values is None
                continue
            plain = [p for p in stage["parts"] if "." not in p]
            coded = [p for p in values if "skipped" not in values[p]]
            assert coded
            expected = [f"{name}.{sub}" for name in coded for sub in values[name]["parts"]]
            assert sorted(stage["parts"]) == sorted(plain + expected)
            for name in coded:
                entry = values[name]
                assert entry["coder"] == coder and entry["dtype"] in ("F16", "BF16", "F32", "F64")
                prefix = f"{i}.{stage['method']}.{name}."
                subs = {p["name"][len(prefix) :]: p for p in record["parts"] if p["name"].startswith(prefix)}
                assert list(subs) == entry["parts"]
                if coder in ("fp16", "bf16", "fp32"):
                    assert subs["cast"]["dtype"] == CAST_CODERS[coder] and subs["cast"]["shape"] == entry["shape"]
                elif coder in INT_CODERS:
                    rows, cols = as_rows_shape(entry["shape"])
                    resolved = entry["resolved"]
                    assert resolved["bits"] == INT_CODERS[coder] and resolved["rows"] == rows
                    groups = -(-cols // resolved["group"])
                    assert subs["q"]["dtype"] == "U8" and subs["q"]["shape"] == [
                        code_bytes(rows * cols, resolved["bits"], resolved)
                    ]
                    assert subs["scale"]["shape"] == [rows, groups] and subs["scale"]["dtype"] in ("F16", "F32")
                    assert ("zero" in subs) is (not resolved["symmetric"])
                else:
                    assert subs["codebook"]["dtype"] == "F32" and entry["resolved"]["bits"] == 4
                    count = int(np.prod(entry["shape"]))
                    assert subs["index"]["shape"] == [code_bytes(count, 4, entry["resolved"])]
                    codebook = reader.part_array(subs["codebook"])
                    assert np.all(np.diff(codebook) > 0)  # ascending


@pytest.mark.parametrize(
    ("source", "pipeline", "coder"),
    [
        (FP32, "threshold:sparsity=0.7+int4:group=128+zstd", "int4"),
        (BF16, "threshold:sparsity=0.5+int8:symmetric=false+zstd", "int8"),
        (FP32, "svd:rank=8+fp16+zstd", "fp16"),
        (FP32, "svd:rank=4,block=64+int8:group=16", "int8"),  # 2-D us in groups, 1-D vt, raw ranks
        (FP32, "ksvd:atoms=32,nnz=4+codebook:k=16+zstd", "codebook"),
        (BF16, "lasso:nnz=4,dict=learned,atoms=16+bf16+zstd", "bf16"),
        (FP32, "svd:rank=2+threshold:sparsity=0.95+fp32", "fp32"),
        (FP32, "quant:bits=8", None),
        (FP32, "quant:bits=3,group=64+zstd", None),
        (BF16, "quant:bits=4,group=48,symmetric=false+zstd", None),
        (FP32, "quant:codebook=16+zstd", None),
        (FP32, "quant:max_error=0.05+zstd", None),
        (FP32, "quant:step=0.5+zstd", None),
        (FP32, "svd:rank=4+quant:bits=4", None),
    ],
)
def test_value_coders_and_quant(tmp_path, source, pipeline, coder):
    """§6.6-§6.8: value-coded parts and quant stages decode bit-identically to sparsify's decoder."""
    path = make(tmp_path, source, "v.sparsify", pipeline=pipeline)
    reader = Reader(path)
    check_archive(reader, reference(tmp_path, path, ".safetensors"), load_file(str(source)))
    check_value_coding(reader, coder)
    for name in WEIGHTS:
        stage = reader.record(name)["stages"][-1]
        if stage["method"] != "quant":
            continue
        _, parts = stage_of(reader, name, len(reader.record(name)["stages"]) - 1)
        resolved, config, numel = stage["resolved"], stage["config"], reader.record(name)["view"]["rows"]
        numel *= reader.record(name)["view"]["cols"]
        if "codebook" in config:
            assert stage["parts"] == ["codebook", "index"] and resolved["k"] <= config["codebook"]
            assert parts["index"]["shape"] == [code_bytes(numel, resolved["bits"], resolved)]
        elif "step" in config or "max_error" in config:
            assert stage["parts"] == ["q", "step"] and parts["step"]["dtype"] == "F64"
            assert reader.part_array(parts["step"]).tolist() == [resolved["step"]]
            if "bits" in resolved:  # the writer packed the codes (2-bit within +-1, 4-bit within +-7)
                assert resolved["levels"] < 2 ** (resolved["bits"] - 1)
                assert parts["q"]["dtype"] == "U8" and parts["q"]["shape"] == [-(-numel * resolved["bits"] // 8)]
            else:  # or stored them as signed integers, the narrowest type holding resolved.levels
                assert parts["q"]["dtype"] == ("I8" if resolved["levels"] <= 127 else "I16")
                assert parts["q"]["shape"] == [reader.record(name)["view"]["rows"], numel // parts["q"]["shape"][0]]
        else:
            assert stage["parts"] == (["q", "scale"] if config["symmetric"] else ["q", "scale", "zero"])
            assert resolved["bits"] == config["bits"]
            assert parts["q"]["shape"] == [code_bytes(numel, config["bits"], resolved)]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the writer's fp16 try
def test_value_coding_skipped(tmp_path):
    """§6.8: a part the coder cannot store (fp16 overflow) is kept as it is, and says so."""
    rng = np.random.default_rng(0)
    big = {"w": (rng.standard_normal((64, 48)) * 1e5).astype(np.float32)}
    source = tmp_path / "big.safetensors"
    save_file(big, str(source))
    path = make(tmp_path, source, "big.sparsify", pipeline="svd:rank=2+fp16")
    reader = Reader(path)
    check_archive(reader, reference(tmp_path, path, ".safetensors"), big)
    stage = reader.record("w")["stages"][0]
    assert stage["values"]["us"] == {"coder": "fp16", "skipped": stage["values"]["us"]["skipped"]}
    assert stage["values"]["vt"]["parts"] == ["cast"] and stage["parts"] == ["us", "vt.cast"]


def test_unknown_value_coder_refused(tmp_path, originals):
    """§9: an unknown value coder is refused for its tensor, like an unknown method."""
    data = make(tmp_path, FP32, "u.sparsify", pipeline="threshold:sparsity=0.7+int4+zstd").read_bytes()
    patched = tmp_path / "unknown.sparsify"
    patched.write_bytes(edit_manifest(data, '"coder":"int4"', '"coder":"int5"', 3))
    reader = Reader(patched)
    with pytest.raises(FormatError, match="unknown value coder 'int5'"):
        reader.tensor("fc2.weight")
    check_lossless(reader, "fc2.bias", originals["fc2.bias"])
    with pytest.raises(Exception, match="int5"):
        sparsify.decompress(patched, tmp_path / "unknown.safetensors")


def test_rate_controlled(tmp_path, originals):
    """§4.3, §4.7: a target ratio records options.target and the plan; tensors decode as usual."""
    path = make(tmp_path, FP32, "target.sparsify", target_ratio=8)
    reader = Reader(path)
    manifest = reader.manifest
    options, plan = manifest["options"], manifest["plan"]
    assert options["pipeline"] == "auto" and options["target"] == {"ratio": 8}
    assert plan["mode"] == "ratio" and plan["target"] == {"ratio": 8} and plan["met"] is True
    assert plan["budget_bytes"] == pytest.approx(manifest["source"]["size"] / 8)
    assert path.stat().st_size <= plan["budget_bytes"] and "predicted_bytes" not in plan
    check_archive(reader, reference(tmp_path, path, ".safetensors"), originals)
    for name in WEIGHTS:
        record = reader.record(name)
        assert record["stages"][0]["method"] == "quant" and record["reason"].startswith("rate control")
    plain = Reader(make(tmp_path, FP32, "plain.sparsify", pipeline="keep"))
    assert plain.manifest["plan"] is None and plain.manifest["options"]["target"] is None


# ---------------------------------------------------------------------------------------------------
# Format 2.0: the manifest envelope (FORMAT.md §4.0), packed or one-per-byte codes (§6.6), golden archives
# ---------------------------------------------------------------------------------------------------

GOLDEN = Path(__file__).resolve().parent / "golden"


def zstd_frame_declaring(size: int) -> bytes:
    """A zstd frame header (RFC 8878: single segment, 4-byte content size) claiming ``size`` bytes, then an
    empty last raw block: nothing to decompress, only a size to believe or not."""
    return struct.pack("<IBI", 0xFD2FB528, 0b1010_0000, size) + b"\x01\x00\x00"


def envelope_with(data: bytes, **changes) -> str:
    envelope = json.loads(metadata_text(data))
    envelope.update(changes)
    return json.dumps({k: v for k, v in envelope.items() if v is not None}, separators=(",", ":"))


def test_manifest_envelope(tmp_path):
    """§4.0: a 3.0 archive's metadata string is a small envelope around the manifest, zstd-compressed
    with the format's dictionary and base64-coded; repacking the manifest as the document says gives
    the archive back byte for byte. The 2.x envelope (no dictionary) and the 1.0 form are still read."""
    data = (GOLDEN / "digits_mlp.threshold.sparsify").read_bytes()
    envelope = json.loads(metadata_text(data))
    assert list(envelope) == ["format", "format_version", "manifest_codec", "manifest"]
    assert envelope["format"] == "sparsify" and envelope["format_version"] == CURRENT
    assert envelope["manifest_codec"] == "zstd+dict+base64"
    manifest = load_manifest(metadata_text(data))
    compact = json.dumps(manifest, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    frame = base64.b64decode(envelope["manifest"], validate=True)
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == len(compact) and params.has_checksum
    assert params.dict_id == 0  # raw content: the frame names no dictionary, the codec does
    assert with_metadata(data, pack_manifest(manifest)) == data  # the writer's exact bytes (same zstd)
    plain = json.dumps(compact.decode("utf-8"))  # what the 1.0 form costs inside the header's JSON
    assert len(json.dumps(metadata_text(data))) < len(plain) / 2
    # the dictionary pays: the same manifest packed the 2.x way (no dictionary) takes far more
    without = pack_manifest(manifest, "zstd+base64")
    assert len(metadata_text(data)) < len(without) / 2
    old_codec = tmp_path / "zstd-base64.sparsify"
    old_codec.write_bytes(with_metadata(data, without))  # 2.x's codec: read by both readers
    assert Reader(old_codec).manifest == manifest
    assert [t["name"] for t in sparsify.inspect(old_codec)["tensors"]] == [t["name"] for t in manifest["tensors"]]
    # the 1.0 form, the manifest's JSON itself as the metadata string, is still read (by both readers)
    old_form = tmp_path / "plain.sparsify"
    old_form.write_bytes(with_metadata(data, compact.decode("utf-8")))
    assert Reader(old_form).manifest == manifest
    assert [t["name"] for t in sparsify.inspect(old_form)["tensors"]] == [t["name"] for t in manifest["tensors"]]
    # damaged envelopes: refused by this reader and by sparsify's
    text, good = envelope["manifest"], base64.b64decode(envelope["manifest"])
    padded = next(b for b in (base64.b64encode(good + b"x" * i).decode() for i in range(3)) if b.endswith("="))

    def b64(frame: bytes) -> str:
        return base64.b64encode(frame).decode("ascii")

    damaged = [  # (envelope fields changed, what this reader's message says)
        ({"manifest_codec": "brotli"}, "'brotli'.*3\\.3"),  # names the codec and the version
        ({"manifest_codec": "zstd+base64"}, "zstd frame"),  # a frame made with the dictionary needs it
        ({"format": "other"}, "not 'sparsify'"),
        ({"manifest": None}, "packed manifest"),
        ({"manifest": text[:60] + "\n" + text[60:]}, "base64"),  # strict base64: no line breaks
        ({"manifest": padded.rstrip("=")}, "base64"),  # nor missing padding
        ({"manifest": b64(zstandard.ZstdCompressor(write_content_size=False).compress(compact))}, "no content size"),
        ({"manifest": b64(zstd_frame_declaring(2**31))}, "declares 2147483648"),  # over the limit
        ({"manifest": b64(good[:-8])}, "zstd"),  # truncated frame
        ({"manifest": b64(zstandard.ZstdCompressor().compress(b"{x"))}, "JSON"),
    ]
    path = tmp_path / "damaged.sparsify"
    for changes, message in damaged:
        path.write_bytes(with_metadata(data, envelope_with(data, **changes)))
        with pytest.raises(FormatError, match=message):
            Reader(path)
        with pytest.raises(sparsify.SparsifyError):
            sparsify.inspect(path)
    path.write_bytes(with_metadata(data, envelope_with(data, manifest_codec="brotli")))
    with pytest.raises(sparsify.SparsifyError, match="brotli"):
        sparsify.inspect(path)


GOLDEN_NAMES = sorted(  # single archives (folder archives and their members: test_folder_format_doc.py)
    p.relative_to(GOLDEN).as_posix()
    for p in GOLDEN.rglob("*.sparsify")
    if p.is_file() and not any(parent.suffix == ".sparsify" for parent in p.relative_to(GOLDEN).parents)
)


def test_golden_set():
    """Every format version has its golden archives (tests/golden/make_golden.py: GOLDEN and OLDER)."""
    from golden.make_golden import GOLDEN as CURRENT_SET
    from golden.make_golden import OLDER

    assert GOLDEN_NAMES == sorted([*CURRENT_SET, *OLDER])
    versions = {name.split("/")[0] if "/" in name else CURRENT for name in GOLDEN_NAMES}
    assert versions == {"v1.0", "v2.0", "v2.1", "v3.0", "v3.1", "v3.2", CURRENT}


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_archives(tmp_path, name):
    """Archives of sparsify releases: 1.0 (the manifest's JSON as the metadata string), 2.0 (envelope),
    2.1 (decoded checksums in lossy records, checked by this reader's reference arithmetic), 3.0
    (checksum strings, the dictionary envelope, the inline header, zstd+planes2), 3.1 (zstd+planes3), 3.2
    (quant weighted=true) and 3.3 (quant feedback=true)."""
    path = GOLDEN / name
    reader = Reader(path)
    version = reader.manifest["format_version"]
    envelope = json.loads(metadata_text(path.read_bytes()))
    assert ("manifest_codec" in envelope) == (version != "1.0")
    if version != "1.0":  # §4.0: 3.x packs with the dictionary, 2.x without
        assert envelope["manifest_codec"] == ("zstd+dict+base64" if major_of(version) >= 3 else "zstd+base64")
    assert version == (name.split("/")[0][1:] if "/" in name else CURRENT)
    source = reader.manifest["source"]
    originals = load_file(str(SAMPLES / source["name"]))
    assert source["checksum"] == checksum((SAMPLES / source["name"]).read_bytes(), source["checksum"].split(":")[0])
    three = major_of(version) == 3
    assert source["checksum"].startswith("xxh3:" if three else "sha256:")  # §9.2: upgraded
    codecs = {p["codec"] for t in reader.manifest["tensors"] for p in t["parts"]}
    assert ("zstd+planes2" in codecs) == three or codecs <= {None, "zstd"}
    assert ("zstd+planes3" in codecs) <= (version in ("3.1", "3.2", CURRENT))  # 3.1's codec
    weighted = any(s["config"].get("weighted") for t in reader.manifest["tensors"] for s in t["stages"])
    assert weighted <= (name.endswith(("digits_mlp.weighted.sparsify", "digits_mlp.feedback.sparsify")))  # 3.2's
    assert weighted or not name.endswith("digits_mlp.weighted.sparsify")
    fed = any(s["config"].get("feedback") for t in reader.manifest["tensors"] for s in t["stages"])
    assert fed == (name == "digits_mlp.feedback.sparsify")  # 3.3's error feedback, in its golden archive
    (n,) = struct.unpack("<Q", (SAMPLES / source["name"]).read_bytes()[:8])
    assert reader.blob("header") == (SAMPLES / source["name"]).read_bytes()[8 : 8 + n]
    assert ("header" in source.get("inline", {})) == three  # §4.2: 3.x holds it as text
    DECODED_CHECKS.clear()
    check_archive(reader, reference(tmp_path, path, ".safetensors"), originals)
    lossy = [not t["metrics"]["exact"] for t in reader.manifest["tensors"]]
    expected = ["decoded_checksum" if lossy_one else "checksum" for lossy_one in lossy]
    if version in ("1.0", "2.0"):  # older records have no decoded checksum: only the exact tensors are checked
        expected = ["none" if lossy_one else "checksum" for lossy_one in lossy]
    assert DECODED_CHECKS == expected


@pytest.mark.parametrize(
    ("pipeline", "encoding"),
    [
        ("threshold:sparsity=0.7+int4:group=128+zstd", "integer groups"),
        ("quant:codebook=16+zstd", "codebook"),
        ("quant:step=0.5+zstd", "uniform"),
    ],
)
def test_codes_packed_or_one_per_byte(tmp_path, pipeline, encoding):
    """§6.6, §6.7: the writer stores codes bit-packed or one per byte (uniform: packed fields or signed
    integers), whichever codes smaller, and records the choice; both forms occur and decode."""
    path = make(tmp_path, FP32, "codes.sparsify", pipeline=pipeline)
    reader = Reader(path)
    CODES_SEEN.clear()
    check_archive(reader, reference(tmp_path, path, ".safetensors"), load_file(str(FP32)))
    assert {packed for what, packed in CODES_SEEN if what == encoding} == {True, False}
    if encoding == "uniform":
        return
    # claiming packed codes that are not: both readers refuse the tensors (the sizes cannot match)
    unpacked = '"packed":false'
    count = json.dumps(reader.manifest, separators=(",", ":")).count(unpacked)
    lying = tmp_path / "lying.sparsify"
    lying.write_bytes(edit_manifest(path.read_bytes(), unpacked, '"packed":true', count))
    liar = Reader(lying)
    affected = [t["name"] for t in reader.manifest["tensors"] if unpacked in json.dumps(t, separators=(",", ":"))]
    assert affected
    for name in affected:
        with pytest.raises(FormatError, match="do not hold exactly"):
            liar.tensor(name)
    with pytest.raises(sparsify.SparsifyError, match="cannot hold exactly"):
        sparsify.decompress(lying, tmp_path / "lying.safetensors")


def test_unpacked_codes_by_hand():
    """§6.6: one code per byte: a 1-D U8 part of exactly ``count`` codes, each < 2**bits."""
    codes = np.array([1, 2, 3, 0, 7], dtype=np.uint8)
    assert load_codes(codes, 3, 5, {"packed": False}, "test").tolist() == [1, 2, 3, 0, 7]
    assert load_codes(np.array([0x29, 0x8E], np.uint8), 3, 5, {}, "test").tolist() == [1, 2, 3, 0, 7]  # packed
    for stored, resolved in (
        (codes, {"packed": True}),  # 5 bytes cannot be 5 packed 3-bit codes
        (codes[:4], {"packed": False}),  # too few codes
        (codes.reshape(5, 1), {"packed": False}),  # not 1-D
        (codes.astype(np.uint16), {"packed": False}),  # not U8
        (np.array([1, 2, 3, 0, 8], np.uint8), {"packed": False}),  # 8 does not fit 3 bits
        (codes, {"packed": "false"}),  # not a bool
    ):
        with pytest.raises(FormatError):
            load_codes(stored, 3, 5, resolved, "test")


# ---------------------------------------------------------------------------------------------------
# The document's own figures and bytes (FORMAT.md §4.0, §5.3, §11) against the golden archive they describe
# ---------------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
ELIDED = " … "  # FORMAT.md's mark for the middle of a string left out


def doc_section(heading: str) -> str:
    """The text of the FORMAT.md section whose heading starts with ``heading`` (``"## 11."``, ``"### 5.3"``),
    up to the next heading of its level or above."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n" + heading) + 1
    level = heading.split(" ")[0]
    ends = [text.find("\n" + "#" * n + " ", start + 1) for n in range(2, len(level) + 1)]
    ends = [e for e in ends if e > 0]
    return text[start : min(ends) if ends else len(text)]


def code_blocks(text: str) -> list[str]:
    """The bodies of the fenced code blocks of ``text``, in order."""
    parts = text.split("```")
    return [block.split("\n", 1)[1] if "\n" in block else "" for block in parts[1::2]]


def flat(text: str) -> str:
    return " ".join(text.split())


def shown_as(doc, real, where: str = "$") -> None:
    """The document shows ``real`` as ``doc``: equal, but for strings whose middle is elided (``…``), objects
    with keys left out (the rest in the same order) and lists of records (tensors) with records left out."""
    if isinstance(doc, str) and ELIDED in doc:
        head, tail = doc.split(ELIDED)
        assert isinstance(real, str) and real.startswith(head) and real.endswith(tail), where
    elif isinstance(doc, dict):
        assert isinstance(real, dict) and set(doc) <= set(real), (where, sorted(set(doc) - set(real)))
        assert list(doc) == [k for k in real if k in doc], f"{where}: keys in another order"
        for key, value in doc.items():
            shown_as(value, real[key], f"{where}.{key}")
    elif isinstance(doc, list) and doc and all(isinstance(d, dict) and "name" in d for d in doc):
        by_name = {r["name"]: r for r in real}
        assert [d["name"] for d in doc] == [r["name"] for r in real if r["name"] in {d["name"] for d in doc}], where
        for d in doc:
            shown_as(d, by_name[d["name"]], f"{where}[{d['name']}]")
    else:
        assert type(doc) is type(real) and doc == real, (where, doc, real)


def test_worked_example_is_the_golden_archive():
    """§11 (and the figures §4.0 quotes from it) describe tests/golden/digits_mlp.threshold.sparsify byte for
    byte: the first bytes, the header, the envelope, the manifest, the parts read by hand."""
    path = GOLDEN / "digits_mlp.threshold.sparsify"
    data = path.read_bytes()
    text = doc_section("## 11.")
    blocks = code_blocks(text)
    reader = Reader(path)
    (n,) = struct.unpack("<Q", data[:8])
    header_json = data[8 : 8 + n].rstrip(b" ")
    envelope_text = metadata_text(data)
    envelope = json.loads(envelope_text)
    frame = base64.b64decode(envelope["manifest"])
    params = zstandard.get_frame_parameters(frame)
    manifest = load_manifest(envelope_text)
    compact = json.dumps(manifest, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    records = {t["name"]: t for t in manifest["tensors"]}
    parts = {p["name"]: p for p in records["fc3.weight"]["parts"]}
    values = reader.stored(parts["0.threshold.values"])
    source = FP32.read_bytes()
    (source_n,) = struct.unpack("<Q", source[:8])
    buffer = len(data) - 8 - n
    # the first 16 bytes, as xxd prints them
    words = " ".join(data[i : i + 2].hex() for i in range(0, 16, 2))
    printable = "".join(chr(b) if 32 <= b < 127 else "." for b in data[:16])
    assert f"00000000: {words}  {printable}" in blocks[1]
    # the header, its manifest elided (the doc's "A ... B" in the base64 text)
    shown = json.loads("".join(line.strip() for line in blocks[2].splitlines()))
    real = json.loads(header_json)
    assert list(shown) == list(real)
    for key, spec in real.items():
        if key != "__metadata__":
            assert shown[key] == spec, key
    shown_envelope = json.loads(shown["__metadata__"]["sparsify"])
    assert list(shown_envelope) == list(envelope)
    head, tail = shown_envelope.pop("manifest").split(" ... ")
    assert envelope["manifest"].startswith(head) and envelope["manifest"].endswith(tail)
    assert all(envelope[k] == v for k, v in shown_envelope.items())
    # the manifest, pretty-printed with tensors and the middle of the inline header left out
    shown_as(json.loads(blocks[3]), manifest)
    # the figures of the prose
    content_size = struct.unpack("<H", frame[5:7])[0]
    with_dictionary_not = len(with_metadata(data, pack_manifest(manifest, "zstd+base64")))
    as_one_zero = with_metadata(data, compact.decode("utf-8"))
    stored_plane3 = values[17 + 384 :]
    values_at = reader.entries[parts["0.threshold.values"]["key"]]["data_offsets"][0]
    planes_header = " | ".join(values[a:b].hex(" ") for a, b in ((0, 2), (2, 6), (6, 10), (10, 14), (14, 17)))
    indptr = " ".join(map(str, reader.part_array(parts["0.threshold.indptr"]).tolist()))
    figures = [
        f"The archive is {len(data):,} bytes",
        f"the header length `0x{n:04x}` = {n}",
        f"The header ({n} bytes: {len(header_json)} bytes of JSON followed by {n - len(header_json)} padding spaces",
        f"so that 8 + {n} = {8 + n} = 8 x {(8 + n) // 8} and the buffer starts at {8 + n}",
        f"{8 + n} + {buffer} = {len(data)}, the file size",
        f"The metadata string is the envelope of §4.0 ({len(envelope_text)} characters; "
        f"{len(json.dumps(envelope_text, ensure_ascii=False))} bytes of header",
        f"Its `manifest` is {len(envelope['manifest'])} base64 characters, which decode to {len(frame)} bytes",
        f"`{frame[:4].hex(' ')}` (magic number), `{frame[4]:02x}`",
        f"`{frame[5:7].hex(' ')}` (content size 0x{content_size:04x} + 256 = {params.content_size:,})",
        f"gives the manifest's {len(compact):,} bytes of compact JSON",
        f"would make the archive {with_dictionary_not:,} bytes",
        f"it would take {len(json.dumps(compact.decode('utf-8'), ensure_ascii=False)):,} header bytes and make the "
        f"archive {len(as_one_zero):,} bytes",
        f"is {len(values)} bytes at file offset {8 + n} + {values_at}",
        f"`{parts['0.threshold.values']['checksum']}` (§8.6)",
        f"The header is the first 17 bytes, `{planes_header}`",
        f"17 + 3 × 128 + {len(stored_plane3)} = {len(values)}",
        f"The frame, `{stored_plane3[:6].hex(' ')} …`",
        f"has the bytes `{' '.join(values[17 + 128 * j : 18 + 128 * j].hex() for j in range(3))} "
        f"{unzstd(stored_plane3, 128)[:1].hex()}`",
        f"`indptr` (11 `U8` values, raw: `{indptr}`)",
        f"a {parts['0.threshold.deltas']['nbytes']}-byte zstd frame whose content size is 128",
        f"is the record's `decoded_checksum`, `{records['fc3.weight']['decoded_checksum']}`",
        f"the original's, `checksum`, is `{records['fc3.weight']['checksum']}`",
        f"the {source_n} header bytes of `digits_mlp.safetensors` ({len(source[8 : 8 + source_n].rstrip(b' '))} "
        f"bytes of JSON and {source_n - len(source[8 : 8 + source_n].rstrip(b' '))} spaces of padding)",
        f"the source's {len(source):,} bytes with the checksum `{manifest['source']['checksum']}`",
    ]
    missing = [figure for figure in figures if figure not in flat(text)]
    assert not missing, f"docs/FORMAT.md §11 does not say: {missing}"
    assert values[:17].hex(" ") in flat(doc_section("### 5.3"))  # §5.3 quotes this part's header too
    assert reader.tensor("fc3.weight").tobytes()[:4] == struct.pack("<f", 0.27409548)
    keep = Reader(GOLDEN / "digits_mlp.keep.sparsify")
    assert keep.manifest["source"]["checksum"] == manifest["source"]["checksum"] == checksum(source)
    # §4.0 quotes the sizes of the manifest packed each way
    envelope_figures = [
        f"the manifest is {len(compact):,} bytes of compact JSON, which as an escaped string would take "
        f"{len(json.dumps(compact.decode('utf-8'), ensure_ascii=False)):,} header bytes",
        f"without the dictionary, takes {len(json.dumps(pack_manifest(manifest, 'zstd+base64'))):,}",
        f"the 3.0 envelope {len(json.dumps(envelope_text, ensure_ascii=False)):,}",
    ]
    missing = [figure for figure in envelope_figures if figure not in flat(doc_section("### 4.0"))]
    assert not missing, f"docs/FORMAT.md §4.0 does not say: {missing}"


def test_paired_example_is_the_documents():
    """§5.3's paired plane example, decoded by this reader from a payload made by hand."""
    text = flat(doc_section("### 5.3"))
    assert "the plane `03 04 04 c8 11 04 13 03` with `base` 3 has the indices 0 1 1 15 14 1 15 0" in text
    assert "the index bytes `10 f1 1e 0f`, and `e` = 2 escaped bytes `c8 13`" in text
    frame = zstandard.ZstdCompressor(write_content_size=True, write_checksum=False).compress(bytes.fromhex("10f11e0f"))
    payload = bytes((3, 0, 2, len(frame))) + frame + bytes.fromhex("c813")
    assert unpair(payload, 8).tobytes() == bytes.fromhex("030404c811041303")
    assert unpair(payload, 7).tobytes() == bytes.fromhex("030404c8110413")  # 7 bytes: the last nibble is padding
    for n in (6, 9):  # a frame of 4 index bytes holds 7 or 8 indices
        with pytest.raises(FormatError):
            unpair(payload, n)


def test_planes2_example_is_the_documents():
    """§5.3's ``zstd+planes2`` example bytes are the part test_planes2_by_hand decodes."""
    example = planes2_part(0, [(1, 0, bytes.fromhex("1122334455")), (0, 2, bytes.fromhex("010200010a"))])
    block = next(b for b in code_blocks(doc_section("### 5.3")) if b.startswith("00 02 |"))
    assert block.splitlines()[0].replace("| ", "") == example.hex(" ")
    assert f"The part is {len(example)} bytes" in flat(doc_section("### 5.3"))


def test_dictionary_is_the_documents():
    """§4.0: the manifest dictionary's size and checksum as the document gives them."""
    text = flat(doc_section("### 4.0"))
    data = DICTIONARY_FILE.read_bytes()
    assert f"**{len(data):,} bytes** with the checksum **`{checksum(data)}`**" in text


def test_page_aligned_archives(tmp_path, monkeypatch):
    """§2.1 (3.0): the archive of a source of 32 MiB or more has its buffer at a multiple of 4096, one of a
    smaller source at a multiple of 8 only; the same bytes whether the writer shifts the parts in place
    (fallocate) or copies them; both read as any archive."""
    import sparsify.fileops

    big = 32 << 20
    rng = np.random.default_rng(0)
    small = {"bias": rng.standard_normal(100).astype(np.float32)}
    made = {}
    for name, nbytes in (("at", big), ("below", big - 8192)):
        tensors = {"weight": np.arange(nbytes // 4, dtype=np.float32), **small}
        source = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(source))
        assert (source.stat().st_size >= big) == (name == "at")
        archive = make(tmp_path, source, f"{name}.sparsify", pipeline="keep")
        reader = Reader(archive)
        assert reader.base % 8 == 0 and (reader.base % 4096 == 0) == (name == "at"), reader.base
        assert reader.manifest["source"]["size"] == source.stat().st_size
        for tensor, array in tensors.items():
            check_lossless(reader, tensor, array)
        made[name] = (source, archive.read_bytes())
        del reader
    source, aligned = made["at"]
    monkeypatch.setattr(sparsify.fileops, "shift_start", lambda fd, by: False)  # as where fallocate cannot
    assert make(tmp_path, source, "copied.sparsify", pipeline="keep").read_bytes() == aligned
