"""docs/FORMAT.md is enough to read an archive.

This module holds a small, independent ``.sparsify`` reader written from docs/FORMAT.md alone, using
only json, base64, struct, hashlib, math, numpy, ml_dtypes and zstandard. sparsify itself is used only
to *create* archives (``sparsify.compress``) and, as the reference, to decompress them
(``sparsify.decompress``); every byte is parsed, checked and decoded here and compared with the
original weights and with what ``decompress`` writes (read with safetensors / h5py): bit for bit.

Format 2.0 additions covered: the manifest envelope (§4.0), the ``zstd+planes`` codec (§5.3), the
``csr-delta`` sparse layout (§6.2), codes packed or one per byte, integer groups and codebooks (§6.6),
the ``quant`` method and its two uniform code forms (§6.7), value coders (§6.8) and the manifest's
``plan`` and ``options.target`` (§4.3, §4.7). Format 2.1: ``decoded_sha256`` (§4.4, §8.4), checked on
every decode, which this reader can do because it decodes svd, lasso and ksvd with the reference
arithmetic of §6.3-§6.5 and §10.2 (ordered dense and sparse products, the DCT matrix from its
polynomial cosines: no BLAS, no FFT, no libm cosine). The golden archives of tests/golden/ (1.0 in v1.0/,
2.0 in v2.0/, 2.1 at the top) are read too.
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
READABLE_MAJOR = 2  # §9: this reader reads every 1.x and 2.x, and refuses 3.0 and later


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


def _is_sha256(digest) -> bool:
    return isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise FormatError("duplicate key in header JSON")
    return dict(pairs)


def sha256(data) -> str:
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


def unzstd(frame: bytes, size: int) -> bytes:
    """§5.2: one zstd frame that must declare, and hold, exactly ``size`` bytes."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise FormatError(f"not a zstd frame: {exc}") from None
    if params.content_size != size:  # also refuses a frame without a content size
        raise FormatError(f"zstd frame holds {params.content_size} bytes, part needs {size}")
    try:
        out = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise FormatError(f"bad zstd frame: {exc}") from None
    if len(out) != size:
        raise FormatError("zstd part has the wrong size")
    return out


PLANE_METHODS_SEEN: set[int] = set()  # which plane methods (§5.3) the tests' archives used (a test checks)


def unplanes(data: bytes, size: int, itemsize: int) -> bytes:
    """§5.3: a ``zstd+planes`` part back to its ``size`` raw bytes."""
    if len(data) < 2:
        raise FormatError("planes part shorter than its header")
    flags, k = data[0], data[1]
    if flags & ~1 or k != itemsize or k < 2 or size % k or (flags & 1 and k not in (2, 4, 8)):
        raise FormatError(f"planes part: flags {flags:#x}, {k} planes for {itemsize}-byte elements, {size} bytes")
    n, head = size // k, 2 + 9 * k
    if len(data) < head:
        raise FormatError("planes part shorter than its header")
    entries = [struct.unpack_from("<BQ", data, 2 + 9 * j) for j in range(k)]
    if sum(length for _, length in entries) != len(data) - head:
        raise FormatError("planes part: plane lengths do not add up")
    planes = np.empty((k, n), dtype=np.uint8)
    offset = head
    for j, (method, length) in enumerate(entries):
        payload, offset = data[offset : offset + length], offset + length
        PLANE_METHODS_SEEN.add(method)
        if method == 0:  # raw
            if length != n:
                raise FormatError(f"raw plane {j} has {length} bytes, expected {n}")
            planes[j] = np.frombuffer(payload, dtype=np.uint8)
        elif method == 1:  # zstd
            planes[j] = np.frombuffer(unzstd(payload, n), dtype=np.uint8)
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


MANIFEST_CODECS = {"zstd+base64"}  # §4.0: how a 2.x envelope packs the manifest
MAX_MANIFEST = 1 << 30  # §4.0: the largest content size a packed manifest may declare


def load_manifest(text: str):
    """§4.0: the manifest from the metadata string: a 2.0 envelope (``manifest_codec``: the manifest's
    compact JSON in a zstd frame, base64) or, in 1.0 archives, the manifest's JSON itself."""
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
        manifest = json.loads(unzstd(frame, size).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"packed manifest is not UTF-8 JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != outer["format_version"]:
        raise FormatError("the envelope and the manifest declare different format versions")
    return manifest


class Reader:
    """Reads a whole archive into memory and decodes its tensors on request."""

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
            for key in ("sha256", "decoded_sha256"):  # §4.4, §8.2: lowercase hex, or (decoded_sha256) null
                digest = tensor.get(key)
                if not (digest is None and key == "decoded_sha256" or _is_sha256(digest)):
                    raise FormatError(f"{tensor['name']}: bad {key} {digest!r}")
        for part in manifest["source"]["blobs"].values():
            self._check_part(part)

    def _check_part(self, part) -> None:
        entry = self.entries.get(part["key"])
        if entry is None:
            raise FormatError(f"part {part['key']!r} is not in the file")
        begin, end = entry["data_offsets"]
        if end - begin != part["nbytes"] or not _is_sha256(part["sha256"]) or not _is_shape(part["shape"]):
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
        if sha256(raw) != part["sha256"]:
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
        return self.part_bytes(self.manifest["source"]["blobs"][name])

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


def quant_stage(parts: dict, stage: dict, m: int, n: int) -> np.ndarray:
    """§6.7: integer groups, a codebook, or a uniform step; float64 values, no cast on the way."""
    names, resolved = set(parts), stage["resolved"]
    if names == {"codebook", "index"}:
        return codebook_values(parts, resolved, m * n).reshape(m, n)
    if names == {"q", "step"}:
        step = parts["step"]
        if step.dtype != SAFETENSORS["F64"][1] or step.shape != (1,) or not np.isfinite(step[0]):
            raise FormatError("quant: step must be one finite F64")
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
    if names in ({"q", "scale"}, {"q", "scale", "zero"}):
        return int_values(parts, resolved, m, n)
    raise FormatError(f"quant: unknown parts {sorted(names)}")


DECODED_CHECKS: list[str] = []  # which checksum each decode was checked against (tests look)


def check_decoded(record: dict, decoded: np.ndarray) -> None:
    """§8.4: an exact tensor decodes to the original's bytes (``sha256``), a lossy one to the bytes the
    writer recorded (``decoded_sha256``, 2.1; nothing to check in older records). C order, own dtype."""
    exact = record["metrics"]["exact"]
    expected = record["sha256"] if exact else record.get("decoded_sha256")
    DECODED_CHECKS.append("sha256" if exact else "decoded_sha256" if expected is not None else "none")
    if expected is not None and sha256(np.ascontiguousarray(decoded).tobytes()) != expected:
        what = "the original's checksum" if exact else "decoded_sha256"
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


CURRENT = "2.1"  # the version FORMAT.md describes, which sparsify writes


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


def pack_manifest(manifest: dict) -> str:
    """§4.0: the metadata string of a 2.0 archive: an envelope holding the manifest's compact JSON as one
    zstd frame (content size and checksum; sparsify uses level 19), base64-coded."""
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    frame = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(text.encode("utf-8"))
    envelope = {
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "manifest_codec": "zstd+base64",
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
    assert sha256(np.ascontiguousarray(decoded).tobytes()) == record["sha256"]
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
    assert sha256(original.tobytes()) == record["sha256"]  # the checksum names the original
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
    coded = [p for t in reader.manifest["tensors"] for p in t["parts"] if p["codec"] in ("zstd", "zstd+planes")]
    assert coded
    for p in coded:
        assert reader.entries[p["key"]]["dtype"] == "U8" and reader.entries[p["key"]]["shape"] == [p["nbytes"]]
        assert p["nbytes"] < nbytes_of(p["dtype"], p["shape"])
    # the source's own header comes back from its blob
    (n,) = struct.unpack("<Q", FP32.read_bytes()[:8])
    assert reader.blob("header") == FP32.read_bytes()[8 : 8 + n]
    source = reader.manifest["source"]
    assert source["sha256"] == sha256(FP32.read_bytes()) and source["size"] == FP32.stat().st_size
    assert source["blobs"]["header"]["key"] == "__sparsify__/source/header"


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
    """§9: any 2.x (older or newer minor) is read, 3.0 is refused, by this reader and by sparsify; the
    envelope's version is checked first, and must be the manifest's."""
    data = make(tmp_path, FP32, "v.sparsify", pipeline="threshold:sparsity=0.9+zstd").read_bytes()
    old = f'"format_version":"{CURRENT}"'
    path = tmp_path / "edited.sparsify"
    for version in ("2.0", "2.7", "2.10"):  # envelope and manifest say the same
        path.write_bytes(edit_manifest(data, old, f'"format_version":"{version}"', 1))
        assert Reader(path).manifest["format_version"] == version
        assert sparsify.inspect(path)["tensors"]
    for version in ("3.0", "10.1"):
        path.write_bytes(edit_manifest(data, old, f'"format_version":"{version}"', 1))
        with pytest.raises(FormatError, match="newer"):
            Reader(path)
        with pytest.raises(sparsify.SparsifyError, match="newer than this sparsify"):
            sparsify.inspect(path)
    # an envelope claiming 3.0 is refused before its manifest is unpacked (a 3.x may pack it otherwise)
    path.write_bytes(with_metadata(data, envelope_with(data, format_version="3.0", manifest="not base64!")))
    with pytest.raises(FormatError, match="newer"):
        Reader(path)
    path.write_bytes(with_metadata(data, envelope_with(data, format_version="2.0")))  # the manifest says 2.1
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
        assert sha256(np.ascontiguousarray(original).tobytes()) == record["sha256"]
        if reader.manifest["format_version"] == CURRENT:  # §4.4: decoded_sha256 exactly for lossy tensors
            exact = record["metrics"]["exact"]
            assert record["decoded_sha256"] == (None if exact else sha256(np.ascontiguousarray(decoded).tobytes()))
        else:
            assert "decoded_sha256" not in record
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
def test_decoded_sha256(tmp_path, originals, pipeline):
    """§8.4: every lossy tensor's decode, by this reader's reference arithmetic, has the recorded
    decoded_sha256 (bf16 source too); an edited one is refused by both readers, and so is an edited
    checksum of an exact tensor."""
    source = BF16 if "bf16" in pipeline else FP32
    path = make(tmp_path, source, "d.sparsify", pipeline=pipeline)
    reader = Reader(path)
    DECODED_CHECKS.clear()
    check_archive(reader, reference(tmp_path, path, ".safetensors"), load_file(str(source)))
    assert DECODED_CHECKS == ["sha256", "decoded_sha256"] * 3  # biases exact, weights lossy
    data = path.read_bytes()
    for name, key in (("fc2.weight", "decoded_sha256"), ("fc2.bias", "sha256")):
        manifest = load_manifest(metadata_text(data))
        next(t for t in manifest["tensors"] if t["name"] == name)[key] = "0" * 64
        damaged = tmp_path / "damaged.sparsify"
        damaged.write_bytes(with_metadata(data, pack_manifest(manifest)))
        with pytest.raises(FormatError, match="decoded bytes differ"):
            Reader(damaged).tensor(name)
        out = tmp_path / "damaged.safetensors"
        with pytest.raises(sparsify.CorruptArchiveError, match="differ from the (recorded|original's) checksum"):
            sparsify.decompress(damaged, out)
        assert not out.exists()


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


def h5_tensors(path: Path, names) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in names}


def test_planes_archive(tmp_path):
    """keep+zstd: multi-byte parts are zstd+planes; every plane method and both rotations occur."""
    seen: set[tuple[int, int]] = set()
    for source in (FP32, BF16, CREPE):
        reader = Reader(make(tmp_path, source, f"{source.stem}.sparsify", pipeline="keep+zstd"))
        names = [t["name"] for t in reader.manifest["tensors"]]
        originals = load_file(str(source)) if source.suffix == ".safetensors" else h5_tensors(source, names)
        for name in names:
            check_lossless(reader, name, originals[name])
            (part,) = reader.record(name)["parts"]
            if part["codec"] == "zstd+planes":
                stored = reader.stored(part)
                assert stored[1] == numpy_type(part["dtype"]).itemsize
                seen |= {(stored[0], stored[2 + 9 * j]) for j in range(stored[1])}
    assert {flags for flags, _ in seen} == {0, 1} and {method for _, method in seen} == {0, 1, 2}
    reader = Reader(make(tmp_path, BF16, "bf16-half.sparsify", pipeline="threshold:sparsity=0.5+zstd"))
    for name in WEIGHTS:
        reader.tensor(name)
    assert 3 in PLANE_METHODS_SEEN  # packed indices in a zstd frame


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
    """§4.0: a 2.0 archive's metadata string is a small envelope around the zstd-compressed, base64-coded
    manifest; repacking the manifest as the document says gives the archive back byte for byte."""
    data = (GOLDEN / "digits_mlp.threshold.sparsify").read_bytes()
    envelope = json.loads(metadata_text(data))
    assert list(envelope) == ["format", "format_version", "manifest_codec", "manifest"]
    assert envelope["format"] == "sparsify" and envelope["format_version"] == CURRENT
    assert envelope["manifest_codec"] == "zstd+base64"
    manifest = load_manifest(metadata_text(data))
    compact = json.dumps(manifest, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    frame = base64.b64decode(envelope["manifest"], validate=True)
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == len(compact) and params.has_checksum
    assert with_metadata(data, pack_manifest(manifest)) == data  # the writer's exact bytes (same zstd)
    plain = json.dumps(compact.decode("utf-8"))  # what the 1.0 form costs inside the header's JSON
    assert len(json.dumps(metadata_text(data))) < len(plain) / 2
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
        ({"manifest_codec": "brotli"}, "'brotli'.*2\\.1"),  # names the codec and the version
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


GOLDEN_NAMES = sorted(p.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("*.sparsify"))


def test_golden_set():
    """Every format version has its golden archives (tests/golden/make_golden.py: GOLDEN and OLDER)."""
    from golden.make_golden import GOLDEN as CURRENT_SET
    from golden.make_golden import OLDER

    assert GOLDEN_NAMES == sorted([*CURRENT_SET, *OLDER])
    assert {name.split("/")[0] if "/" in name else CURRENT for name in GOLDEN_NAMES} == {"v1.0", "v2.0", CURRENT}


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_archives(tmp_path, name):
    """Archives of sparsify releases: 1.0 (the manifest's JSON as the metadata string), 2.0 (envelope) and
    2.1 (decoded_sha256 in lossy records, checked by this reader's reference arithmetic)."""
    path = GOLDEN / name
    reader = Reader(path)
    version = reader.manifest["format_version"]
    assert ("manifest_codec" in json.loads(metadata_text(path.read_bytes()))) == (version != "1.0")
    assert version == (name.split("/")[0][1:] if "/" in name else CURRENT)
    originals = load_file(str(SAMPLES / reader.manifest["source"]["name"]))
    DECODED_CHECKS.clear()
    check_archive(reader, reference(tmp_path, path, ".safetensors"), originals)
    lossy = [not t["metrics"]["exact"] for t in reader.manifest["tensors"]]
    expected = ["decoded_sha256" if lossy_one else "sha256" for lossy_one in lossy]
    if version != CURRENT:  # older records have no decoded checksum: only the exact tensors are checked
        expected = ["none" if lossy_one else "sha256" for lossy_one in lossy]
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
