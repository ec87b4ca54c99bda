"""Sparse matrices as stored parts: CSR with the narrowest index types, or a bitmask where smaller.

A sparse (m, n) matrix with nnz stored values takes either

* CSR: ``indptr`` (m + 1 entries, the narrowest unsigned type holding nnz), ``indices`` (nnz column
  numbers, the narrowest unsigned type holding n - 1) and ``values`` (nnz, row-major order); or
* bitmask: ``mask`` (ceil(m * n / 8) bytes, numpy ``packbits`` of the row-major nonzero pattern,
  big bit order) and ``values``.

:func:`pack` picks whichever takes fewer bytes (CSR on a tie); :func:`unpack` validates before use,
so a hostile archive with consistent checksums still cannot index out of bounds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse

from sparsify.errors import CorruptArchiveError


def narrowest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned little-endian integer type that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype).newbyteorder("<")
    return np.dtype(np.uint64).newbyteorder("<")


def csr_nbytes(m: int, n: int, nnz: int) -> int:
    """Bytes of CSR's index arrays (values excluded)."""
    return (m + 1) * narrowest_uint(nnz).itemsize + nnz * narrowest_uint(max(n - 1, 0)).itemsize


def bitmask_nbytes(m: int, n: int) -> int:
    """Bytes of a bitmask over an (m, n) matrix."""
    return (m * n + 7) // 8


def pack(mask: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    """Parts for the (m, n) matrix whose nonzero pattern is ``mask`` (bool) and whose stored values,
    in row-major order, are ``values`` (1-D, any dtype)."""
    m, n = mask.shape
    nnz = int(values.size)
    if csr_nbytes(m, n, nnz) <= bitmask_nbytes(m, n):
        rows, cols = np.nonzero(mask)
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
        return {
            "indptr": indptr.astype(narrowest_uint(nnz)),
            "indices": cols.astype(narrowest_uint(max(n - 1, 0))),
            "values": values,
        }
    return {"mask": np.packbits(mask.reshape(-1)), "values": values}


def unpack(parts: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The dense float64 (m, n) matrix the parts of :func:`pack` describe."""
    m, n = shape
    values = parts["values"].reshape(-1).astype(np.float64)
    dense = np.zeros((m, n), dtype=np.float64)
    if "mask" in parts:
        packed = parts["mask"].reshape(-1)
        if packed.size != bitmask_nbytes(m, n):
            raise CorruptArchiveError(f"bitmask has {packed.size} bytes, a {m}x{n} matrix needs {bitmask_nbytes(m, n)}")
        mask = np.unpackbits(packed, count=m * n).astype(bool)
        if int(mask.sum()) != values.size:
            raise CorruptArchiveError(f"bitmask marks {int(mask.sum())} entries but {values.size} values are stored")
        dense.reshape(-1)[mask] = values
        return dense
    return unpack_csr(parts, shape).toarray()


def unpack_csr(parts: Mapping[str, np.ndarray], shape: tuple[int, int]) -> scipy.sparse.csr_matrix:
    """The (m, n) matrix the parts of :func:`pack` describe, as a validated float64 scipy CSR matrix."""
    m, n = shape
    if "mask" in parts:
        return scipy.sparse.csr_matrix(unpack(parts, shape))
    try:
        indptr = parts["indptr"].reshape(-1).astype(np.int64)
        indices = parts["indices"].reshape(-1).astype(np.int64)
        values = parts["values"].reshape(-1).astype(np.float64)
    except KeyError as exc:
        raise CorruptArchiveError(f"missing sparse part {exc.args[0]!r}") from None
    if (
        indptr.size != m + 1
        or indptr[0] != 0
        or indptr[-1] != values.size
        or indices.size != values.size
        or np.any(np.diff(indptr) < 0)
        or (indices.size and (indices.min() < 0 or indices.max() >= n))
    ):
        raise CorruptArchiveError(f"inconsistent CSR parts for a {m}x{n} matrix with {values.size} values")
    return scipy.sparse.csr_matrix((values, indices, indptr), shape=(m, n))


def layout_of(parts: Mapping[str, np.ndarray]) -> str:
    """``"csr"`` or ``"bitmask"``."""
    return "bitmask" if "mask" in parts else "csr"
