"""Value coders: how the float parts of a decomposition are stored (precision, integers, codebooks).

A value coder is the pipeline stage between the methods and the byte coders
(``threshold:sparsity=0.7+int4:group=128+zstd``). It applies to every float part a method stores
(kept values, factors, dictionaries, codes) and replaces it by sub-parts:

========== ======================================== =============================================
coder      sub-parts                                decodes to
========== ======================================== =============================================
fp32/fp16/ ``cast`` (the values in that type)       the values cast back to the part's type
bf16
int8/int4  ``q`` (codes, bit-packed), ``scale``     (q - offset) * scale per group, in the part's
           (per group), ``zero`` (asymmetric only)  type (:mod:`sparsify.quantize`)
codebook   ``codebook`` (k values), ``index``       codebook[index]
           (bit-packed, ceil(log2 k) bits each)
========== ======================================== =============================================

A part that a coder cannot represent (non-finite values; a cast that would overflow) is stored as
it is, and its record says so (``skipped``). The method's reconstruction is computed from the
decoded sub-parts, so the residual that later stages see, the error the report measures, and
``max_error`` budgets all include the coding error.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from sparsify import dtypes
from sparsify.errors import CorruptArchiveError, InputError, UsageError
from sparsify.methods.base import Stage
from sparsify.params import Param
from sparsify.quantize import (
    Quantized,
    bits_for,
    dequantize,
    group_layout,
    kmeans_1d,
    nearest_centroid,
    pack_bits,
    quantize,
    unpack_bits,
)

CodedSize = Callable[[np.ndarray], int]
"""Bytes an array takes once through the pipeline's byte coders."""

# Codebooks are fitted on at most this many values (a seeded sample) and then assigned to all.
_KMEANS_SAMPLE = 1 << 20


class ValueCoder(Stage):
    """Stores a float array (any shape, any float dtype) as sub-parts, and decodes it back."""

    @abstractmethod
    def encode_values(
        self, values: np.ndarray, seed: int, coded_size: CodedSize | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """(sub-parts, resolved) for ``values``, or None when this coder cannot store them.

        ``coded_size(array)``: bytes an array takes once through the byte coders (default: raw), to
        choose between bit-packed codes and one code per byte (which entropy-codes better)."""

    @abstractmethod
    def decode_values(
        self, parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        """The array of ``shape`` and ``dtype`` that the sub-parts encode."""


def _float64(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(np.float64)


class _Cast(ValueCoder):
    target: ClassVar[str]

    def encode_values(self, values, seed, coded_size=None):
        original = _float64(values)
        with np.errstate(over="ignore"):  # an overflow is detected below: the part is then kept as it is
            cast = original.astype(dtypes.numpy_of(self.target))
        if not np.array_equal(np.isfinite(cast), np.isfinite(original)):
            return None  # overflow to inf
        return {"cast": cast}, {"dtype": self.target}

    def decode_values(self, parts, resolved, shape, dtype):
        cast = parts.get("cast")
        if cast is None:
            raise CorruptArchiveError("cast coding: missing part 'cast'")
        if cast.size != int(np.prod(shape, dtype=np.int64)):
            raise CorruptArchiveError(f"cast values hold {cast.size} entries, the part needs {shape}")
        return _float64(cast).astype(dtype).reshape(shape)


class Fp32(_Cast):
    name = "fp32"
    target = "F32"
    summary = "store float parts as float32"
    example = "svd:rank=16+fp32"


class Fp16(_Cast):
    name = "fp16"
    target = "F16"
    summary = "store float parts as float16 (parts that would overflow stay as they are)"
    example = "svd:rank=16+fp16+zstd"


class Bf16(_Cast):
    name = "bf16"
    target = "BF16"
    summary = "store float parts as bfloat16"
    example = "threshold:sparsity=0.9+bf16+zstd"


GROUP = Param("group", int, "values per scale along each row (0: one scale per row)", low=0)
SYMMETRIC = Param("symmetric", bool, "symmetric codes around zero (false: asymmetric, with a zero point)", default=True)


class _Int(ValueCoder):
    bits: ClassVar[int]

    def encode_values(self, values, seed, coded_size=None):
        return encode_int(values, self.bits, self.config["group"], self.config["symmetric"], coded_size)

    def decode_values(self, parts, resolved, shape, dtype):
        return decode_int(parts, resolved, shape).astype(dtype)


class Int8(_Int):
    name = "int8"
    bits = 8
    summary = "8-bit integers with a float16 scale per row or per group (round to nearest)"
    params = (replace(GROUP, default=0), SYMMETRIC)
    example = "threshold:sparsity=0.5+int8+zstd"


class Int4(_Int):
    name = "int4"
    bits = 4
    summary = "4-bit integers, two per byte, with a float16 scale per group (round to nearest)"
    params = (replace(GROUP, default=128), SYMMETRIC)
    example = "threshold:sparsity=0.7+int4:group=128+zstd"


class Codebook(ValueCoder):
    name = "codebook"
    summary = "k-means weight sharing (Deep Compression): k shared values and a ceil(log2 k)-bit index each"
    params = (Param("k", int, "number of shared values", default=16, low=2, high=256),)
    example = "threshold:sparsity=0.8+codebook:k=16+zstd"

    def encode_values(self, values, seed, coded_size=None):
        return encode_codebook(values, self.config["k"], seed, coded_size)

    def decode_values(self, parts, resolved, shape, dtype):
        return decode_codebook(parts, resolved, shape).astype(dtype)


def encode_int(
    values: np.ndarray, bits: int, group: int, symmetric: bool, coded_size: CodedSize | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Sub-parts ``q`` (codes), ``scale`` and (asymmetric) ``zero`` of finite ``values``."""
    original = _float64(values)
    if not np.all(np.isfinite(original)):
        return None
    quantized = quantize(original, bits, group, symmetric)
    codes, packed = store_codes(quantized.codes.reshape(-1), bits, coded_size)
    parts = {"q": codes, "scale": quantized.scale}
    if quantized.zero is not None:
        parts["zero"] = quantized.zero
    _, width = group_layout(quantized.codes.shape, group)
    resolved = {
        "bits": bits,
        "group": int(width),
        "symmetric": symmetric,
        "rows": int(quantized.codes.shape[0]),
        "packed": packed,
    }
    return parts, resolved


def store_codes(codes: np.ndarray, bits: int, coded_size: CodedSize | None) -> tuple[np.ndarray, bool]:
    """``codes`` (1-D uint8, each < 2**bits) bit-packed, or one per byte where that stores smaller
    after the byte coders (a byte-wise entropy coder cannot see symbols that straddle bytes).
    Returns (array, packed)."""
    packed = pack_bits(codes, bits)
    if bits == 8 or coded_size is None or coded_size(packed) <= coded_size(codes):
        return packed, True
    return codes, False


def _packed(resolved: Mapping[str, Any]) -> bool:
    """``resolved["packed"]`` (absent: packed, as archives before the choice existed)."""
    packed = resolved.get("packed", True)
    if not isinstance(packed, bool):
        raise CorruptArchiveError(f"codes: 'packed' is {packed!r}, not true or false")
    return packed


def resolved_int(resolved: Mapping[str, Any], key: str) -> int:
    """An integer field of a stored ``resolved`` record (from an archive: checked, not trusted)."""
    value = resolved.get(key) if isinstance(resolved, Mapping) else None
    if type(value) is not int:
        raise CorruptArchiveError(f"value coding: resolved {key!r} is {value!r}, not an integer")
    return value


def load_codes(stored: np.ndarray, bits: int, count: int, packed: bool) -> np.ndarray:
    """Inverse of :func:`store_codes` (validated: sizes, and codes < 2**bits)."""
    if packed:
        return unpack_bits(stored, bits, count)
    codes = np.ascontiguousarray(stored).reshape(-1)
    if codes.dtype != np.uint8 or codes.size != count or (count and int(codes.max()) >= 1 << bits):
        raise CorruptArchiveError(f"{codes.size} unpacked codes of type {codes.dtype} are not {count} {bits}-bit codes")
    return codes


def decode_int(parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """float64 values of ``shape`` from :func:`encode_int`'s sub-parts (validated)."""
    bits, width, rows = (resolved_int(resolved, key) for key in ("bits", "group", "rows"))
    count = int(np.prod(shape, dtype=np.int64))
    if not 1 <= bits <= 8 or width < 0 or rows < 0 or (count and (rows == 0 or count % rows)):
        raise CorruptArchiveError(f"invalid integer coding ({bits} bits, {rows} rows) for a part of shape {shape}")
    cols = count // rows if rows else 0
    groups, _ = group_layout((rows, cols), width)
    scale, zero = parts.get("scale"), parts.get("zero")
    expected = (rows, groups)
    if scale is None or scale.size != rows * groups or (zero is not None and zero.size != rows * groups):
        raise CorruptArchiveError(f"integer coding: scales do not fit {rows} rows of {groups} groups")
    if "q" not in parts:
        raise CorruptArchiveError("integer coding: missing codes part 'q'")
    codes = load_codes(parts["q"], bits, count, _packed(resolved)).reshape(rows, cols)
    quantized = Quantized(codes, scale.reshape(expected), None if zero is None else zero.reshape(expected))
    return dequantize(quantized, bits, width).reshape(shape)


def encode_codebook(
    values: np.ndarray, k: int, seed: int, coded_size: CodedSize | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Sub-parts ``codebook`` (float32, ascending) and ``index`` (packed) of finite ``values``."""
    original = _float64(values).reshape(-1)
    if not np.all(np.isfinite(original)):
        return None
    sample = original
    if original.size > _KMEANS_SAMPLE:
        sample = np.random.default_rng(seed).choice(original, _KMEANS_SAMPLE, replace=False)
    centroids = kmeans_1d(sample, k).astype(np.float32)
    centroids = np.unique(centroids)
    bits = bits_for(centroids.size)
    index, packed = store_codes(nearest_centroid(original, centroids.astype(np.float64)), bits, coded_size)
    return {"codebook": centroids, "index": index}, {"k": int(centroids.size), "bits": bits, "packed": packed}


def decode_codebook(parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """float64 values of ``shape`` from :func:`encode_codebook`'s sub-parts (validated)."""
    if "codebook" not in parts or "index" not in parts:
        raise CorruptArchiveError("codebook coding: missing part 'codebook' or 'index'")
    codebook = _float64(parts["codebook"]).reshape(-1)
    bits = resolved_int(resolved, "bits")
    if codebook.size == 0 or not 1 <= bits <= 8 or codebook.size > 1 << bits:
        raise CorruptArchiveError(f"invalid codebook of {codebook.size} values with {bits}-bit indices")
    index = load_codes(parts["index"], bits, int(np.prod(shape, dtype=np.int64)), _packed(resolved))
    if index.size and int(index.max()) >= codebook.size:
        raise CorruptArchiveError("codebook index out of range")
    return codebook[index].reshape(shape)


def is_value_part(array: np.ndarray) -> bool:
    """Whether a method's part holds float values (what value coders apply to)."""
    return dtypes.is_float(dtypes.name_of(array.dtype))


def encode_parts(
    coder: ValueCoder,
    parts: Mapping[str, np.ndarray],
    names: tuple[str, ...],
    seed: int,
    coded_size: CodedSize | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Apply ``coder`` to the parts called ``names``.

    Returns the parts to store (coded ones replaced by ``<part>.<sub-part>`` entries, the others as
    they are) and, per coded part, its record: coder, config, resolved, original dtype and shape and
    sub-part names -- or ``{"skipped": reason}`` when the coder could not store it.
    """
    stored: dict[str, np.ndarray] = {}
    records: dict[str, dict[str, Any]] = {}
    for name, array in parts.items():
        coded = coder.encode_values(array, seed, coded_size) if name in names else None
        if coded is None:
            stored[name] = array
            if name in names:
                records[name] = {"coder": coder.name, "skipped": "values cannot be represented (non-finite)"}
            continue
        sub_parts, resolved = coded
        stored.update({f"{name}.{sub}": value for sub, value in sub_parts.items()})
        records[name] = {
            "coder": coder.name,
            "config": coder.config,
            "resolved": resolved,
            "dtype": dtypes.name_of(array.dtype),
            "shape": list(array.shape),
            "parts": list(sub_parts),
        }
    return stored, records


def _stored_shape(shape: Any) -> tuple[int, ...]:
    """A part shape from a value coding record: non-negative integers whose product numpy can index."""
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape) or math.prod(shape) >= 2**63:
        raise CorruptArchiveError(f"invalid shape {shape!r}")
    return tuple(shape)


def decode_parts(
    stored: Mapping[str, np.ndarray], records: Mapping[str, Mapping[str, Any]], coders: Mapping[str, type[ValueCoder]]
) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_parts`: the method's parts, with coded ones decoded.

    ``stored``: the stage's stored parts by name (sub-parts as ``<part>.<sub-part>``); ``coders``: the
    value coder classes by name.
    """
    from sparsify.pipeline import check_config  # the grammar module imports this registry's package

    parts = dict(stored)
    for name, record in records.items():
        if "skipped" in record:
            continue
        cls = coders.get(record.get("coder"))
        if cls is None:
            raise CorruptArchiveError(f"part {name!r}: unknown value coder {record.get('coder')!r}")
        try:
            coder = cls(**check_config(cls, record["config"]))
            dtype = dtypes.numpy_of(record["dtype"])
            shape = _stored_shape(record["shape"])
            subs = {sub: parts.pop(f"{name}.{sub}") for sub in record["parts"]}
        except (KeyError, TypeError, ValueError, UsageError, InputError) as exc:
            raise CorruptArchiveError(f"part {name!r}: invalid value coding record ({exc})") from None
        if dtype is None or not dtypes.is_float(record["dtype"]):
            raise CorruptArchiveError(f"part {name!r}: value coding of a part that is not float ({record['dtype']})")
        parts[name] = coder.decode_values(subs, record["resolved"], shape, dtype)
    return parts
