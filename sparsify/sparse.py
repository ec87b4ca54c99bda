"""Sparse matrices as stored parts: CSR with narrow or delta-coded indices, or a bitmask.

A sparse (m, n) matrix with nnz stored values takes one of three layouts:

* ``csr``: ``indptr`` (m + 1 entries, the narrowest unsigned type holding nnz), ``indices`` (nnz
  column numbers, the narrowest unsigned type holding n - 1) and ``values`` (nnz, row-major order);
* ``csr-delta``: ``indptr``, ``deltas`` and ``values``: the column numbers of each row as gaps (the
  first one of a row as it is, each next one minus the one before it), in the narrowest unsigned
  type holding the largest gap -- for dense-ish rows mostly small numbers, which take fewer bytes
  and entropy-code well;
* ``bitmask``: ``mask`` (ceil(m * n / 8) bytes, numpy ``packbits`` of the row-major nonzero pattern,
  big bit order) and ``values``.

:func:`pack` picks the layout whose index parts take the fewest bytes as they will be stored (a
``coded_size`` function, e.g. after zstd; raw bytes by default; earlier in the list above on a tie);
:func:`unpack` validates before use, so a hostile archive with consistent checksums still cannot
index out of bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
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


def pack(
    mask: np.ndarray, values: np.ndarray, coded_size: Callable[[np.ndarray], int] | None = None
) -> dict[str, np.ndarray]:
    """Parts for the (m, n) matrix whose nonzero pattern is ``mask`` (bool) and whose stored values,
    in row-major order, are ``values`` (1-D, any dtype).

    ``coded_size(array)``: bytes an index array takes once stored (default: its raw size).
    """
    size = coded_size or (lambda array: array.nbytes)
    m, n = mask.shape
    nnz = int(values.size)
    rows, cols = np.nonzero(mask)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    row_starts = indptr[:-1][np.diff(indptr) > 0]
    gaps = np.diff(cols, prepend=0)
    gaps[row_starts] = cols[row_starts]
    indptr_part = indptr.astype(narrowest_uint(nnz))
    candidates = [
        {"indptr": indptr_part, "indices": cols.astype(narrowest_uint(max(n - 1, 0)))},
        {"indptr": indptr_part, "deltas": gaps.astype(narrowest_uint(int(gaps.max(initial=0))))},
    ]
    candidates.append({"mask": np.packbits(mask.reshape(-1))})
    best = min(candidates, key=lambda parts: sum(size(a) for a in parts.values()))
    return {**best, "values": values}


def unpack(parts: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The dense float64 (m, n) matrix the parts of :func:`pack` describe."""
    m, n = shape
    if "values" not in parts:
        raise CorruptArchiveError("missing sparse part 'values'")
    values = _as_float64(parts["values"])
    dense = np.zeros((m, n), dtype=np.float64)
    if "mask" in parts:
        packed = parts["mask"].reshape(-1)
        if packed.dtype != np.uint8:
            raise CorruptArchiveError(f"bitmask is of type {packed.dtype}, not bytes")
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
    import scipy.sparse

    m, n = shape
    if "mask" in parts:
        return scipy.sparse.csr_matrix(unpack(parts, shape))
    try:
        indptr = parts["indptr"].reshape(-1).astype(np.int64)
        values = _as_float64(parts["values"])
        indices = parts["indices"].reshape(-1).astype(np.int64) if "deltas" not in parts else None
    except KeyError as exc:
        raise CorruptArchiveError(f"missing sparse part {exc.args[0]!r}") from None
    if indices is None:
        indices = _columns_from_gaps(parts["deltas"].reshape(-1).astype(np.int64), indptr, values.size)
    if (
        indptr.size != m + 1
        or indptr[0] != 0
        or indptr[-1] != values.size
        or indices.size != values.size
        or np.any(np.diff(indptr) < 0)
        or (indices.size and (indices.min() < 0 or indices.max() >= n))
        or not _increasing_within_rows(indices, indptr)
    ):
        raise CorruptArchiveError(f"inconsistent CSR parts for a {m}x{n} matrix with {values.size} values")
    return scipy.sparse.csr_matrix((values, indices, indptr), shape=(m, n))


def _increasing_within_rows(indices: np.ndarray, indptr: np.ndarray) -> bool:
    """Column numbers strictly increase within every row (as the writer stores them): a repeated
    column would otherwise be summed by one reader and overwritten by another."""
    if indices.size < 2:
        return True
    rising = np.diff(indices) > 0
    boundaries = indptr[1:-1]
    boundaries = boundaries[(boundaries > 0) & (boundaries < indices.size)] - 1  # last entry of a row
    rising[boundaries] = True
    return bool(rising.all())


def _columns_from_gaps(gaps: np.ndarray, indptr: np.ndarray, nnz: int) -> np.ndarray:
    """Column numbers from per-row gaps: a running sum restarted at each row. Returns -1s when the
    sizes disagree, which the caller's range check rejects."""
    if gaps.size != nnz or indptr.size < 1 or indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        return np.full(nnz, -1, dtype=np.int64)
    running = np.cumsum(gaps)
    before_row = np.concatenate(([0], running))[indptr[:-1]]
    return running - np.repeat(before_row, np.diff(indptr))


def layout_of(parts: Mapping[str, np.ndarray]) -> str:
    """``"csr"``, ``"csr-delta"`` or ``"bitmask"``."""
    return "bitmask" if "mask" in parts else "csr-delta" if "deltas" in parts else "csr"


def _as_float64(values: np.ndarray) -> np.ndarray:
    """Stored values (1-D) as float64; CorruptArchiveError for a type that holds no numbers."""
    try:
        return values.reshape(-1).astype(np.float64)
    except (TypeError, ValueError):
        raise CorruptArchiveError(f"sparse values of type {values.dtype} are not numbers") from None
