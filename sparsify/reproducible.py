"""Floating-point reductions and products whose results are the same on every machine.

Everything an archive records (norms, errors, metrics, budgets derived from them, the checksum of a
decoded tensor) must be a function of the input and the options alone. ``np.dot``, ``@``,
``np.linalg``, compiled sparse kernels and libm's transcendental functions are not: the BLAS kernel
(chosen by CPU, ``OPENBLAS_CORETYPE``, thread count) decides the order in which products are summed,
a compiler may fuse a multiply and an add on one platform and not on another, and ``cos`` differs
between C libraries and SIMD paths.

The functions here use only element-wise numpy operations (each rounded once, IEEE 754: the same on
every platform) in a fixed order, and numpy's pairwise ``add.reduce`` over contiguous blocks of
:data:`BLOCK` elements, whose summation order is fixed by the block's length; block sums are added
left to right.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1 << 16
"""Elements per block of the reductions: a block's temporaries stay in the CPU cache."""


def sum_of_squares(values: np.ndarray, finite_only: bool = False) -> float:
    """Σ x² over the entries of a real array (any real dtype, cast to float64 a block at a time),
    over its finite entries only if ``finite_only`` (the others count as 0); inf when the sum overflows."""
    flat = np.asarray(values).reshape(-1)
    total = _sum_of_squares(flat, False)
    if finite_only and not np.isfinite(total):  # only then can a non-finite entry be in it
        total = _sum_of_squares(flat, True)
    return total


def _sum_of_squares(flat: np.ndarray, mask_non_finite: bool) -> float:
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, flat.size, BLOCK):
            block = flat[start : start + BLOCK].astype(np.float64)  # a copy: squared in place
            if mask_non_finite:
                block[~np.isfinite(block)] = 0.0
            np.multiply(block, block, out=block)
            total += float(np.add.reduce(block))
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
    """The float64 product of a dense (m, k) and a (k, n) matrix, without BLAS:
    ``out[i] = ((0 + a[i, 0] b[0]) + a[i, 1] b[1]) + ... + a[i, k-1] b[k-1]`` (from +0.0, so a -0.0
    sum comes out +0.0), each product and sum rounded once. Rows are done in blocks whose output
    stays in the CPU cache."""
    a64 = np.ascontiguousarray(a, dtype=np.float64)
    b64 = np.ascontiguousarray(b, dtype=np.float64)
    (m, k), (k2, n) = a64.shape, b64.shape
    if k != k2:
        raise ValueError(f"matmul: shapes {a64.shape} and {b64.shape} do not chain")
    out = np.zeros((m, n), dtype=np.float64)
    rows = max(1, BLOCK // max(n, 1))
    scratch = np.empty((rows, n), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, m, rows):
            block, term = out[start : start + rows], scratch[: min(rows, m - start)]
            for j in range(k):
                np.multiply(a64[start : start + rows, j, None], b64[j], out=term)
                block += term
    return out


def sparse_matmul(left, atoms: np.ndarray) -> np.ndarray:
    """The float64 product of a sparse (s, k) CSR matrix and a dense (k, l) one, without a compiled
    kernel: row i of the result is Σ_j left[i, j] atoms[j] over the row's entries, added in increasing
    j, each product and sum rounded once. Vectorised over the rows: one pass per entry position."""
    import scipy.sparse

    left = scipy.sparse.csr_matrix(left)
    left.sort_indices()
    atoms64 = np.ascontiguousarray(atoms, dtype=np.float64)
    s, k = left.shape
    if k != atoms64.shape[0]:
        raise ValueError(f"sparse_matmul: shapes {left.shape} and {atoms64.shape} do not chain")
    out = np.zeros((s, atoms64.shape[1]), dtype=np.float64)
    counts = np.diff(left.indptr)
    if left.nnz == 0:
        return out
    row_of = np.repeat(np.arange(s), counts)
    position = np.arange(left.nnz) - left.indptr[row_of]
    order = np.argsort(position, kind="stable")  # entries grouped by their position in their row
    bounds = np.concatenate(([0], np.cumsum(np.bincount(position))))
    with np.errstate(over="ignore", invalid="ignore"):
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            at = order[start:end]  # the p-th entry of every row that has one: each row at most once
            out[row_of[at]] += left.data[at, None] * atoms64[left.indices[at]]
    return out


def dct_matrix(length: int, rows: np.ndarray | None = None) -> np.ndarray:
    """The orthonormal DCT-II matrix C (length x length), ``C[k, n] = s_k cos(pi (2n + 1) k / (2 length))``
    with ``s_0 = sqrt(1/length)``, ``s_k = sqrt(2/length)`` -- or only its ``rows`` k, in that order;
    ``C @ x`` is scipy's ``dct(x, norm="ortho")`` and ``C.T @ X`` its inverse. The cosines come from
    :func:`cos_pi_fraction`, not libm."""
    k = (np.arange(length, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64))[:, None]
    n = np.arange(length, dtype=np.int64)[None, :]
    cosines = cos_pi_fraction((2 * n + 1) * k, 2 * length)
    scale = np.where(k == 0, np.sqrt(1.0 / length), np.sqrt(2.0 / length))
    return cosines * scale


# 1/(2i+1) for the series of atanh: below 1e-19 for |z| <= 3 - 2 sqrt(2) (m in [sqrt(1/2), sqrt(2))).
_ATANH_TERMS = tuple(1.0 / (2 * i + 1) for i in range(13))
_LN2 = 0.6931471805599453
LOG10_2 = 0.30102999566398120
"""log10(2), to turn :func:`log2` into a decimal logarithm."""


def log2(values) -> np.ndarray:
    """log2 of positive finite values, to about 1 ulp, the same everywhere (not libm's, whose result
    depends on the C library and the SIMD path): x = m 2**e exactly (frexp), m in [sqrt(1/2), sqrt(2)),
    ln m = 2 atanh((m - 1)/(m + 1)) by its series, evaluated with element-wise numpy operations."""
    mantissa, exponent = np.frexp(np.asarray(values, dtype=np.float64))
    low = mantissa < 0.7071067811865476
    mantissa = np.where(low, mantissa * 2.0, mantissa)  # exact
    exponent = np.where(low, exponent - 1, exponent)
    z = (mantissa - 1.0) / (mantissa + 1.0)
    z2 = z * z
    series = np.zeros_like(z)
    for c in reversed(_ATANH_TERMS):
        series = series * z2 + c
    return exponent + (2.0 * z * series) / _LN2


# Taylor coefficients of cos and sin, 1/(2i)! and 1/(2i+1)!, up to x^18 and x^19: below 1e-17 for |x| <= pi/4.
_COS_TERMS = tuple(1.0 / float(np.prod(np.arange(1, 2 * i + 1, dtype=np.float64))) for i in range(10))
_SIN_TERMS = tuple(1.0 / float(np.prod(np.arange(1, 2 * i + 2, dtype=np.float64))) for i in range(10))


def cos_pi_fraction(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """cos(pi * numerator / denominator) for integer numerators, to about 1 ulp, the same everywhere:
    the angle is reduced exactly in integers to [0, pi/4], then a Taylor polynomial is evaluated with
    element-wise numpy operations."""
    num = np.mod(np.asarray(numerator, dtype=np.int64), 2 * denominator)
    num = np.where(num > denominator, 2 * denominator - num, num)  # cos(pi t) = cos(pi (2 - t))
    sign = np.where(2 * num > denominator, -1.0, 1.0)  # cos(pi t) = -cos(pi (1 - t)) past t = 1/2
    num = np.where(2 * num > denominator, denominator - num, num)  # now t in [0, 1/2]
    use_sin = 4 * num > denominator  # cos(pi t) = sin(pi (1/2 - t)) past t = 1/4
    reduced = np.where(use_sin, denominator - 2 * num, 2 * num)  # 2 denominator t', t' in [0, 1/4]
    x = np.pi * (reduced.astype(np.float64) / (2.0 * denominator))
    x2 = x * x
    cos_poly = np.zeros_like(x)
    sin_poly = np.zeros_like(x)
    for c, s_ in zip(reversed(_COS_TERMS), reversed(_SIN_TERMS), strict=True):
        cos_poly = cos_poly * -x2 + c  # Horner in -x^2
        sin_poly = sin_poly * -x2 + s_
    return sign * np.where(use_sin, sin_poly * x, cos_poly)
