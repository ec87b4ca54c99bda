"""Batch orthogonal matching pursuit: many signals coded at once against one dictionary.

For each signal y (length L) and a dictionary D (L x K), OMP approximately solves

.. math::

    \\min_x \\; \\|y - D x\\|_2^2 \\quad \\text{subject to} \\quad \\|x\\|_0 \\le k
    \\quad (\\text{or until } \\|y - D x\\|_2^2 \\le \\varepsilon)

greedily: add the atom most correlated with the residual, re-fit all chosen coefficients by least
squares, repeat. This is Batch-OMP (Rubinstein, Zibulevsky & Elad 2008): it needs only the Gram
matrix G = DᵀD and the correlations Dᵀy, never the signals, and keeps a progressive Cholesky
factorisation of the chosen atoms' Gram block. Here it also runs *vectorised across signals*: the
Python loop is over the k = 1..nnz steps (and over chunks of signals, to stay in cache), every
operation inside acts on all signals of a chunk at once.

Per step, with L_k the Cholesky factor of G[I, I] (I = chosen atoms) and its inverse kept instead
of triangular solves, the residual correlations α = Dᵀr are updated by one orthogonal direction:

    w   = L_{k-1}⁻¹ G[I, a]             d = sqrt(G[a, a] - ‖w‖²)
    z_k = (Dᵀy[a] - wᵀ z_{1..k-1}) / d  (z = L⁻¹ Dᵀy[I]; ‖r‖² = ‖y‖² - ‖z‖²)
    α  -= z_k · G[:, I] (L_k⁻¹)[k, :]ᵀ   (Dᵀ of the new orthonormal direction)

and at the end x[I] = L⁻ᵀ z. The selection rule and stopping tests follow scikit-learn's
``orthogonal_mp_gram``, so both pick the same supports on the same problem (up to exact ties).

Pure numpy; no state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Signals per chunk: the working set (correlations, gathered Gram rows) then stays in cache.
_CHUNK_ELEMENTS = 1 << 18
# A signal stops when its largest residual correlation falls to this fraction of its largest initial
# one (its residual is numerically orthogonal to every atom: further atoms would only store noise).
_RELATIVE_FLOOR = 1e-10


class OMPResult(NamedTuple):
    """Codes in compact form, one row per signal.

    support:     int64 array of shape (S, nnz): the chosen atoms in the order chosen, -1 in unused slots.
    coefs:       float64 array of shape (S, nnz): their coefficients (0 in unused slots).
    residual_sq: float64 array of shape (S,): ‖y - D x‖² per signal, from ‖y‖² - ‖z‖² (None when
                 ``y_sq`` was not given).
    """

    support: np.ndarray
    coefs: np.ndarray
    residual_sq: np.ndarray | None


def batch_omp(
    gram: np.ndarray,
    xy: np.ndarray,
    nnz: int,
    tol_sq: float | np.ndarray | None = None,
    y_sq: np.ndarray | None = None,
) -> np.ndarray:
    """Orthogonal matching pursuit codes of many signals, from the Gram matrix.

    Solves, for every signal y_s (column s of Y, never needed itself),

    .. math:: \\min_{x_s} \\|y_s - D x_s\\|_2^2 \\ \\text{s.t.}\\ \\|x_s\\|_0 \\le \\text{nnz}

    greedily, stopping a signal early when its squared residual is at most ``tol_sq``.

    Parameters
    ----------
    gram : ndarray of shape (K, K)
        G = DᵀD for a dictionary D of K atoms (unit-norm atoms are usual, not required).
    xy : ndarray of shape (K, S)
        DᵀY: the correlations of the S signals with the atoms.
    nnz : int
        At most this many nonzeros per signal (>= 0).
    tol_sq : float or ndarray of shape (S,), optional
        Stop a signal once ‖y - D x‖² <= tol_sq (checked before each step, so a signal already within
        tolerance gets no atom). Needs ``y_sq``.
    y_sq : ndarray of shape (S,), optional
        ‖y_s‖², for ``tol_sq``.

    Returns
    -------
    codes : ndarray of shape (K, S)
        X with Y ≈ D X, at most ``nnz`` nonzeros per column.

    Examples
    --------
    >>> D = np.eye(3)
    >>> batch_omp(D.T @ D, D.T @ np.array([[3.0], [0.5], [-2.0]]), 2).ravel().tolist()
    [3.0, 0.0, -2.0]
    """
    gram = np.asarray(gram, dtype=np.float64)
    xy = np.asarray(xy, dtype=np.float64)
    result = batch_omp_support(gram, xy.T, nnz, tol_sq=tol_sq, y_sq=y_sq)
    return codes_to_dense(result.support, result.coefs, gram.shape[0])


def codes_to_dense(support: np.ndarray, coefs: np.ndarray, atoms: int) -> np.ndarray:
    """The dense (atoms, S) code matrix of compact codes (``support``, ``coefs``: shape (S, nnz))."""
    signals, width = support.shape
    codes = np.zeros((atoms, signals), dtype=np.float64)
    used = support >= 0
    columns = np.broadcast_to(np.arange(signals)[:, None], (signals, width))
    codes[support[used], columns[used]] = coefs[used]
    return codes


def batch_omp_support(
    gram: np.ndarray,
    xy_signals: np.ndarray,
    nnz: int,
    *,
    tol_sq: float | np.ndarray | None = None,
    y_sq: np.ndarray | None = None,
) -> OMPResult:
    """Like :func:`batch_omp`, but signal-major in and compact out.

    Parameters
    ----------
    gram : ndarray of shape (K, K)
        G = DᵀD.
    xy_signals : ndarray of shape (S, K)
        YᵀD: row s holds the correlations of signal s with the atoms.
    nnz, tol_sq, y_sq
        As in :func:`batch_omp`.

    Returns
    -------
    OMPResult
        ``support`` and ``coefs`` of shape (S, nnz'), nnz' = min(nnz, K); ``residual_sq`` when
        ``y_sq`` is given.
    """
    gram = np.asarray(gram, dtype=np.float64)
    xy_signals = np.asarray(xy_signals, dtype=np.float64)
    atoms = gram.shape[0]
    if gram.shape != (atoms, atoms) or xy_signals.ndim != 2 or xy_signals.shape[1] != atoms:
        raise ValueError(f"gram {gram.shape} and xy {xy_signals.shape} do not fit: need (K, K) and (S, K)")
    if nnz < 0:
        raise ValueError(f"nnz must be >= 0, not {nnz}")
    if tol_sq is not None and y_sq is None:
        raise ValueError("tol_sq needs y_sq (the squared norms of the signals)")
    signals = xy_signals.shape[0]
    width = min(int(nnz), atoms)
    support = np.full((signals, width), -1, dtype=np.int64)
    coefs = np.zeros((signals, width), dtype=np.float64)
    residual = None if y_sq is None else np.array(y_sq, dtype=np.float64).reshape(signals)
    tol = None if tol_sq is None else np.broadcast_to(np.asarray(tol_sq, dtype=np.float64), (signals,))
    if width == 0 or signals == 0:
        return OMPResult(support, coefs, residual)
    diag = np.ascontiguousarray(np.diagonal(gram))
    chunk = max(1, _CHUNK_ELEMENTS // (atoms * (width + 2)))
    for start in range(0, signals, chunk):
        block = slice(start, min(start + chunk, signals))
        _omp_block(
            gram,
            diag,
            np.ascontiguousarray(xy_signals[block]),
            width,
            None if tol is None else tol[block],
            None if residual is None else residual[block],
            support[block],
            coefs[block],
        )
    return OMPResult(support, coefs, residual)


def _omp_block(
    gram: np.ndarray,
    diag: np.ndarray,
    alpha0: np.ndarray,
    width: int,
    tol: np.ndarray | None,
    residual: np.ndarray | None,
    support: np.ndarray,
    coefs: np.ndarray,
) -> None:
    """OMP on one chunk of signals; writes ``support``, ``coefs`` and ``residual`` in place."""
    count, atoms = alpha0.shape
    rows = np.arange(count)
    alpha = alpha0.copy()
    linv = np.zeros((count, width, width))  # inverse Cholesky factor of G[I, I], per signal
    z = np.zeros((count, width))  # L^-1 (D^T y)[I]
    chosen_rows = np.empty((count, width, atoms))  # G[I_j, :] per signal
    floor = np.abs(alpha0).max(axis=1) * _RELATIVE_FLOOR
    active = floor > 0
    if tol is not None:
        active &= residual > tol
    eps = np.finfo(np.float64).eps
    for k in range(width):
        if not active.any():
            break
        magnitude = np.abs(alpha)
        pick = magnitude.argmax(axis=1)
        active &= magnitude[rows, pick] > floor
        if k:
            active &= ~(support[:, :k] == pick[:, None]).any(axis=1)  # chosen twice: residual is orthogonal
        chosen_rows[:, k] = gram[pick]
        cross = chosen_rows[rows[:, None], np.arange(k)[None, :], pick[:, None]]  # G[I, a], shape (count, k)
        w = np.einsum("sij,sj->si", linv[:, :k, :k], cross)
        d_sq = diag[pick] - np.einsum("si,si->s", w, w)
        active &= d_sq > eps * diag[pick]  # the new atom depends on the chosen ones
        w[~active] = 0.0
        d = np.sqrt(np.where(active, d_sq, 1.0))
        linv[:, k, :k] = -np.einsum("si,sij->sj", w, linv[:, :k, :k]) / d[:, None]
        linv[:, k, k] = 1.0 / d
        zk = (alpha0[rows, pick] - np.einsum("si,si->s", w, z[:, :k])) / d
        zk[~active] = 0.0
        z[:, k] = zk
        support[active, k] = pick[active]
        if residual is not None:
            residual -= zk * zk
            if tol is not None:
                active &= residual > tol
        if k + 1 < width:
            step = linv[:, k, : k + 1] * zk[:, None]
            alpha -= np.einsum("sj,sja->sa", step, chosen_rows[:, : k + 1])
    coefs[:] = np.einsum("sij,si->sj", linv, z)
    coefs[support < 0] = 0.0
    if residual is not None:
        np.maximum(residual, 0.0, out=residual)
