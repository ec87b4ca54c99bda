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

:func:`omp_signals` takes the signals themselves (what K-SVD has): it forms Dᵀy a chunk at a time,
and for short signals (L <= 32, e.g. segments of 16) keeps the residual r as a vector instead of its
correlations: per step α = Dᵀr (one matrix product for the chunk, L terms per entry instead of
gathering a K-long Gram row per chosen atom), q_k = D_I (L_k⁻¹)[k, :]ᵀ, z_k = q_kᵀ r, r -= z_k q_k; the
same supports, and the residuals K-SVD needs come for free.

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
# Signals at most this long are coded in signal space by :func:`omp_signals` (see there), in chunks of
# about this many correlations: large enough that the chunk's matrix products amortise BLAS's start-up
# (threads), small enough to stay in cache.
_SIGNAL_SPACE_LENGTH = 32
_SIGNAL_CHUNK_ELEMENTS = 1 << 23


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


def _extend_inverse_cholesky(
    linv: np.ndarray, k: int, cross: np.ndarray, diag_new: np.ndarray, active: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Grow each signal's inverse Cholesky factor ``linv[s, :k, :k]`` of its chosen atoms' Gram matrix
    by the atom just picked: ``cross`` (count, k) = G[chosen, new], ``diag_new`` (count,) = G[new, new].
    Row ``k`` of ``linv`` is written in place; ``active`` (count,) is cleared, in place, for signals whose
    new atom depends on the chosen ones. Returns ``w = L⁻¹ cross`` (0 where inactive) and the new
    diagonal ``d`` of L (1 where inactive), shapes (count, k) and (count,)."""
    w = np.einsum("sij,sj->si", linv[:, :k, :k], cross)
    d_sq = diag_new - np.einsum("si,si->s", w, w)
    active &= d_sq > eps * diag_new
    w[~active] = 0.0
    d = np.sqrt(np.where(active, d_sq, 1.0))
    linv[:, k, :k] = -np.einsum("si,sij->sj", w, linv[:, :k, :k]) / d[:, None]
    linv[:, k, k] = 1.0 / d
    return w, d


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
        w, d = _extend_inverse_cholesky(linv, k, cross, diag[pick], active, eps)
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


class SignalCodes(NamedTuple):
    """Compact OMP codes of signals given as vectors, with what K-SVD needs of them.

    support, coefs: int64 / float64 arrays of shape (S, nnz), as in :class:`OMPResult`.
    residual:       float64 array of shape (S, L): y - D x per signal (None unless asked for).
    residual_sq:    float64 array of shape (S,): ‖y - D x‖², summed from ``residual`` when it is
                    computed, else ‖y‖² - ‖z‖² as in :class:`OMPResult`.
    """

    support: np.ndarray
    coefs: np.ndarray
    residual: np.ndarray | None
    residual_sq: np.ndarray


def omp_signals(dictionary: np.ndarray, signals: np.ndarray, nnz: int, *, residual: bool = False) -> SignalCodes:
    """Batch OMP of signals given as vectors: :func:`batch_omp_support` with DᵀY formed a chunk at a time.

    The correlations of a chunk of signals with the atoms are one matrix product that stays in cache
    (the whole (S, K) array for S = 732,528 signals and K = 256 atoms would be 1.5 GB); the chunk is then
    coded by the same vectorised Batch-OMP steps, and, with ``residual``, its residual y - D x is formed
    from the chunk's codes (each signal's atoms added in slot order, float64).

    Parameters
    ----------
    dictionary : ndarray of shape (L, K)
        D (unit-norm atoms are usual, not required).
    signals : ndarray of shape (S, L)
        Y signal-major: row s is signal s.
    nnz : int
        At most this many nonzeros per signal (>= 0).
    residual : bool
        Also return y - D x per signal.

    Returns
    -------
    SignalCodes
        Codes of shape (S, min(nnz, K)), the residual when asked for, and ‖y - D x‖² per signal.

    Examples
    --------
    >>> codes = omp_signals(np.eye(3), np.array([[3.0, 0.5, -2.0]]), 2, residual=True)
    >>> codes.support.tolist(), codes.coefs.tolist(), codes.residual.tolist()
    ([[0, 2]], [[3.0, -2.0]], [[0.0, 0.5, 0.0]])
    """
    dictionary = np.asarray(dictionary, dtype=np.float64)
    signals = np.asarray(signals, dtype=np.float64)
    length, atoms = dictionary.shape
    if signals.ndim != 2 or signals.shape[1] != length:
        raise ValueError(f"signals {signals.shape} do not fit a dictionary {dictionary.shape}: need (S, L)")
    if nnz < 0:
        raise ValueError(f"nnz must be >= 0, not {nnz}")
    count = signals.shape[0]
    width = min(int(nnz), atoms)
    gram = dictionary.T @ dictionary
    diag = np.ascontiguousarray(np.diagonal(gram))
    support = np.full((count, width), -1, dtype=np.int64)
    coefs = np.zeros((count, width), dtype=np.float64)
    out = np.array(signals) if residual else None
    y_sq = np.einsum("sl,sl->s", signals, signals)
    in_signal_space = length <= _SIGNAL_SPACE_LENGTH
    elements = _SIGNAL_CHUNK_ELEMENTS if in_signal_space else _CHUNK_ELEMENTS
    chunk = max(1, elements // max(1, atoms * (width + 2)))
    # Short signals: the residual's correlations D^T r (one matrix product, L terms) are cheaper than
    # updating them through gathered Gram rows (K values per chosen atom).
    for start in range(0, count if width else 0, chunk):
        block = slice(start, min(start + chunk, count))
        part = np.ascontiguousarray(signals[block])
        if in_signal_space:
            r = _omp_block_signals(dictionary, gram, diag, part, width, support[block], coefs[block])
            if out is not None:
                out[block] = r
            y_sq[block] = np.einsum("sl,sl->s", r, r)
            continue
        residual_sq = y_sq[block].copy()
        _omp_block(gram, diag, part @ dictionary, width, None, residual_sq, support[block], coefs[block])
        if out is not None:
            used = support[block] >= 0
            chosen = dictionary.T[np.where(used, support[block], 0)]  # (s, nnz, L)
            for slot in range(width):
                out[block] -= coefs[block, slot, None] * chosen[:, slot]
            y_sq[block] = np.einsum("sl,sl->s", out[block], out[block])
        else:
            y_sq[block] = residual_sq
    return SignalCodes(support, coefs, out, y_sq)


def _omp_block_signals(
    dictionary: np.ndarray,
    gram: np.ndarray,
    diag: np.ndarray,
    y: np.ndarray,
    width: int,
    support: np.ndarray,
    coefs: np.ndarray,
) -> np.ndarray:
    """OMP on one chunk of signals ``y`` (n, L) in signal space; writes ``support`` and ``coefs``, returns
    the residuals (n, L).

    The same steps as :func:`_omp_block` (selection, stopping rules, inverse Cholesky factor of
    G[I, I]), but the residual r is kept as a vector: the correlations are Dᵀr, the new orthonormal
    direction is q_k = D_I (L_k⁻¹)[k, :]ᵀ, z_k = q_kᵀ r and r -= z_k q_k.
    """
    count = y.shape[0]
    rows = np.arange(count)
    r = y.copy()
    linv = np.zeros((count, width, width))
    z = np.zeros((count, width))
    chosen = np.empty((count, width, y.shape[1]))  # the chosen atoms, per signal
    alpha = y @ dictionary
    floor = np.abs(alpha).max(axis=1) * _RELATIVE_FLOOR
    active = floor > 0
    eps = np.finfo(np.float64).eps
    for k in range(width):
        if k:
            alpha = r @ dictionary
        magnitude = np.abs(alpha, out=alpha)
        pick = magnitude.argmax(axis=1)
        active &= magnitude[rows, pick] > floor
        if k:
            active &= ~(support[:, :k] == pick[:, None]).any(axis=1)  # chosen twice: residual is orthogonal
        if not active.any():
            break
        chosen[:, k] = dictionary.T[pick]
        cross = gram[np.maximum(support[:, :k], 0), pick[:, None]]  # G[I, a], shape (count, k)
        w, d = _extend_inverse_cholesky(linv, k, cross, diag[pick], active, eps)
        q = np.einsum("sj,sjl->sl", linv[:, k, : k + 1], chosen[:, : k + 1])
        zk = np.einsum("sl,sl->s", q, r)
        zk[~active] = 0.0
        z[:, k] = zk
        support[active, k] = pick[active]
        r -= zk[:, None] * q
    coefs[:] = np.einsum("sij,si->sj", linv, z)
    coefs[support < 0] = 0.0
    return r
