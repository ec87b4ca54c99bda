"""Floating-point reductions and products whose results are the same on every machine.

Everything an archive records (norms, errors, metrics, budgets derived from them) and every decoded
tensor must be a function of the input and the options alone. ``np.dot``, ``@`` and ``np.linalg``
go through BLAS, whose kernel (chosen by CPU, ``OPENBLAS_CORETYPE``, thread count) decides the order
in which products are summed and whether they are fused: the last bits of the result, and through
them the archive's bytes, would depend on the machine.

The functions here use only element-wise numpy operations (each rounded once, IEEE 754) and numpy's
pairwise ``add.reduce``, whose summation order is fixed by the array's length, in blocks of
:data:`BLOCK` elements summed left to right; :func:`matmul` uses scipy's compiled CSR kernel, which
adds the products of each output element in increasing index order.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

BLOCK = 1 << 16
"""Elements per block of the reductions: a block's temporaries stay in the CPU cache."""


def sum_of_squares(values: np.ndarray, finite_only: bool = False) -> float:
    """Σ x² over the entries of a real array (any real dtype, cast to float64 a block at a time),
    over its finite entries only if ``finite_only`` (the others count as 0); inf when the sum overflows."""
    flat = np.asarray(values).reshape(-1)
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, flat.size, BLOCK):
            block = flat[start : start + BLOCK].astype(np.float64, copy=False)
            if finite_only and not np.isfinite(block).all():
                block = np.where(np.isfinite(block), block, 0.0)
            total += float(np.add.reduce(np.multiply(block, block)))
    return total


def inner(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a·b over all entries of two real arrays of the same size (float64, a block at a time)."""
    fa, fb = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if fa.size != fb.size:
        raise ValueError(f"inner: sizes {fa.size} and {fb.size} differ")
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, fa.size, BLOCK):
            x = fa[start : start + BLOCK].astype(np.float64, copy=False)
            y = fb[start : start + BLOCK].astype(np.float64, copy=False)
            total += float(np.add.reduce(np.multiply(x, y)))
    return total


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The float64 product ``a @ b`` of an (m, k) and a (k, n) matrix, without BLAS.

    Each output element is Σ_j a[i, j] b[j, n] added in increasing j by scipy's CSR times dense
    kernel (``a``'s zeros are skipped, which changes no sum). For a sparse ``a`` pass a
    ``scipy.sparse`` matrix directly.
    """
    b64 = np.ascontiguousarray(b, dtype=np.float64)
    if scipy.sparse.issparse(a):
        left = scipy.sparse.csr_matrix(a, dtype=np.float64)
    else:
        left = scipy.sparse.csr_matrix(np.asarray(a, dtype=np.float64))
    if left.shape[1] != b64.shape[0]:
        raise ValueError(f"matmul: shapes {left.shape} and {b64.shape} do not chain")
    if left.nnz == 0:
        return np.zeros((left.shape[0], b64.shape[1]), dtype=np.float64)
    left.sort_indices()
    return np.asarray(left @ b64)
