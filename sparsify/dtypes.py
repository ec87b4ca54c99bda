"""Element types: safetensors dtype names <-> numpy/ml_dtypes dtypes.

sparsify names every tensor's element type with one string, recorded in the manifest:

* the safetensors name (``F32``, ``BF16``, ``F8_E4M3``, ``I64``, ``BOOL`` ...) when the type is one of
  the safetensors format's own; these are little-endian;
* otherwise numpy's ``dtype.str`` (``>f4``, ``<c16``, ``|V2``, ``<U3``), for npz and HDF5 tensors that
  safetensors cannot name.

Sub-byte types (``F4``, ``F6_*``) are packed in files; sparsify carries them as raw bytes only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from sparsify.errors import InputError


@dataclass(frozen=True)
class SafetensorsType:
    """One safetensors dtype: its bit width and, when numpy can hold it, the numpy dtype (``numpy``;
    ml_dtypes' types by their name in ``ml_name``, imported only when one is first needed: importing
    ml_dtypes takes most of a second)."""

    name: str
    bits: int
    plain: np.dtype | None = None
    ml_name: str | None = None

    @property
    def numpy(self) -> np.dtype | None:
        return _ml_dtype(self.ml_name) if self.ml_name is not None else self.plain


@functools.cache
def _ml_dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name))


def preload(names) -> None:
    """Import ml_dtypes now if any of these dtype names needs it: a process about to fork workers
    does so once for them all (each worker would otherwise pay most of a second)."""
    for name in names:
        kind = SAFETENSORS_TYPES.get(name)
        if kind is not None and kind.ml_name is not None:
            _ml_dtype(kind.ml_name)


def _np(dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)


SAFETENSORS_TYPES: dict[str, SafetensorsType] = {
    t.name: t
    for t in [
        SafetensorsType("BOOL", 8, np.dtype(np.bool_)),
        SafetensorsType("U8", 8, np.dtype(np.uint8)),
        SafetensorsType("I8", 8, np.dtype(np.int8)),
        SafetensorsType("F8_E5M2", 8, ml_name="float8_e5m2"),
        SafetensorsType("F8_E4M3", 8, ml_name="float8_e4m3fn"),
        SafetensorsType("F8_E4M3FNUZ", 8, ml_name="float8_e4m3fnuz"),
        SafetensorsType("F8_E5M2FNUZ", 8, ml_name="float8_e5m2fnuz"),
        SafetensorsType("F8_E8M0", 8, ml_name="float8_e8m0fnu"),
        SafetensorsType("I16", 16, _np(np.int16)),
        SafetensorsType("U16", 16, _np(np.uint16)),
        SafetensorsType("F16", 16, _np(np.float16)),
        SafetensorsType("BF16", 16, ml_name="bfloat16"),
        SafetensorsType("I32", 32, _np(np.int32)),
        SafetensorsType("U32", 32, _np(np.uint32)),
        SafetensorsType("F32", 32, _np(np.float32)),
        SafetensorsType("I64", 64, _np(np.int64)),
        SafetensorsType("U64", 64, _np(np.uint64)),
        SafetensorsType("F64", 64, _np(np.float64)),
        SafetensorsType("C64", 64, _np(np.complex64)),
        SafetensorsType("F4", 4),
        SafetensorsType("F6_E2M3", 6),
        SafetensorsType("F6_E3M2", 6),
    ]
}

_NAME_OF_NUMPY = {t.plain: t.name for t in SAFETENSORS_TYPES.values() if t.plain is not None}
# ml_dtypes' types are known by their dtype name (so telling them needs no import of ml_dtypes)
_NAME_OF_ML = {t.ml_name: t.name for t in SAFETENSORS_TYPES.values() if t.ml_name is not None}


def name_of(dtype: np.dtype) -> str:
    """The sparsify name of a numpy dtype (safetensors name where one exists, else ``dtype.str``)."""
    dtype = np.dtype(dtype)
    if dtype.name in _NAME_OF_ML and dtype == _ml_dtype(dtype.name):
        return _NAME_OF_ML[dtype.name]
    if dtype.byteorder == "=" and dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<") if np.little_endian else dtype.newbyteorder(">")
    return _NAME_OF_NUMPY.get(dtype, dtype.str)


def numpy_of(name: str) -> np.dtype | None:
    """The numpy dtype of a sparsify dtype name, or None for packed sub-byte types."""
    if name in SAFETENSORS_TYPES:
        return SAFETENSORS_TYPES[name].numpy
    try:
        dtype = np.dtype(name)
    except TypeError as exc:
        raise InputError(f"unknown element type {name!r}") from exc
    if dtype.hasobject:
        raise InputError(f"element type {name!r} holds Python objects, which sparsify refuses")
    return dtype


def nbytes_of(name: str, shape: tuple[int, ...]) -> int:
    """Bytes that ``shape`` elements of type ``name`` take in a file (packed for sub-byte types)."""
    numel = 1
    for d in shape:
        numel *= int(d)
    if name in SAFETENSORS_TYPES:
        bits = numel * SAFETENSORS_TYPES[name].bits
        if bits % 8:
            raise InputError(f"{numel} elements of {name} do not fill whole bytes")
        return bits // 8
    return numel * numpy_of(name).itemsize


def is_real_numeric(name: str) -> bool:
    """True for real numbers numpy can compute with: floats (ml_dtypes' too), ints, bools.

    These are the types lossy methods accept; complex, void, string and packed types are keep-only.
    """
    dtype = numpy_of(name)
    if dtype is None:
        return False
    if dtype.kind in "biuf":
        return True
    return dtype.kind == "V" and _is_ml_float(dtype)


def is_float(name: str) -> bool:
    """True for floating types, ml_dtypes' bfloat16 and float8 types included."""
    dtype = numpy_of(name)
    return dtype is not None and (dtype.kind == "f" or _is_ml_float(dtype))


def _is_ml_float(dtype: np.dtype) -> bool:
    if dtype.names is not None or dtype.kind not in "Vf":
        return False  # not one of ml_dtypes' types (unstructured, kind V or f): no need to import it
    import ml_dtypes

    try:
        ml_dtypes.finfo(dtype)
    except (ValueError, TypeError):
        return False
    return True
