"""Quantisation with error feedback (GPTQ / OBQ): rounding errors passed on to the columns not yet coded.

A linear layer's weight W (m, n) meets inputs x (n,) whose second-moment matrix is H = E[x xᵀ]
(``NAME:inputs`` of an importance file, :mod:`sparsify.importance`). The error it adds to the output
is E‖ΔW x‖² = Σ_i Δw_i H Δw_iᵀ: where the inputs are correlated, an error in one column can be
cancelled in part by the columns that share its inputs. Rounding column after column, each column's
rounding error is fed into the columns still to come, weighted by how well they can cancel it --
Frantar et al.'s GPTQ (ICLR 2023), the greedy solution of Optimal Brain Quantisation (Frantar &
Alistarh, NeurIPS 2022). Per row i and column j in order:

    r_ij = w'_ij - s_ij round(w'_ij / s_ij),    e_ij = r_ij / U_jj,    w'_i,l -= e_ij U_jl  (l > j)

where w' starts as w, s are the quantiser's steps and U is the upper triangular factor of the
inverse of the damped H (H + δ I = (UᵀU)⁻¹; V = U⁻¹ is :func:`feedback_factor`). The codes are the integers
round(w' / s), decoded as a plain uniform quantiser's: error feedback changes only the encoder. The
output error of the codes under the damped H is exactly Σ_j e_ij² per row (the losses of the
greedy steps add up), which :func:`quantise_with_feedback` returns: the distortion that rate control
weighs, at no extra cost.

Everything here is element-wise numpy arithmetic in a fixed order (no BLAS, no LAPACK), so the codes
are the same on every machine (:mod:`sparsify.reproducible`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAMPING = 0.01
"""δ = DAMPING x the mean of H's diagonal, added to the diagonal: GPTQ's default; it keeps the
factor well conditioned where inputs are (nearly) linearly dependent or never active."""


def damping(moments: np.ndarray) -> float:
    """δ for ``moments`` H: :data:`DAMPING` x the mean of its diagonal (1 where that is 0: no input
    at all, every column then weighs the same)."""
    n = moments.shape[0]
    mean = float(np.add.reduce(np.ascontiguousarray(np.diagonal(moments)))) / n if n else 0.0
    return DAMPING * mean if mean > 0 else 1.0


def damped_diagonal(moments: np.ndarray) -> np.ndarray:
    """H_jj + δ (n,) float64: the importance per column that the input moments H give (a channel
    that never carries input weighs δ, the floor that the damping sets)."""
    h = np.asarray(moments, dtype=np.float64)
    return np.diagonal(h) + damping(h)


def feedback_factor(moments: np.ndarray) -> np.ndarray:
    """V (n, n) float64, upper triangular with a positive diagonal, such that V Vᵀ = H + δ I for the
    symmetric positive semi-definite ``moments`` H (n, n) (only its lower triangle is read; δ:
    :func:`damping`); the factor U of the module docstring is V⁻¹, which
    :func:`quantise_with_feedback` never needs. V = R L R, where R reverses the index order and L is
    the Cholesky factor of R (H + δ I) R (ValueError if that is not positive definite)."""
    h = np.array(moments, dtype=np.float64, copy=True)
    n = h.shape[0]
    if h.shape != (n, n):
        raise ValueError(f"feedback_factor: moments of shape {h.shape} are not square")
    np.fill_diagonal(h, damped_diagonal(h))
    # R Hᵀ R = R H R, and its lower triangle holds the entries of H's lower triangle
    lower = cholesky(np.ascontiguousarray(h.T[::-1, ::-1]))
    return np.ascontiguousarray(lower[::-1, ::-1])


PANEL = 64
"""Columns per panel of the blocked loops: the updates of a panel's columns are applied to the rest
of the matrix together, a cache-sized block of rows at a time."""
_TILE = 1 << 16  # elements per row block of those updates


def _subtract_products(target: np.ndarray, left: np.ndarray, right: np.ndarray, sign: float = -1.0) -> None:
    """target[i, l] += sign x left[i, t] right[t, l] for t = 0, 1, ... in turn (each product and sum
    rounded once: the order the unblocked loop would add them in), a block of rows at a time."""
    rows, cols = target.shape
    if rows == 0 or cols == 0:
        return
    per = max(1, _TILE // cols)
    scratch = np.empty((per, cols), dtype=np.float64)
    add = np.add if sign > 0 else np.subtract
    for start in range(0, rows, per):
        block = target[start : start + per]
        term = scratch[: block.shape[0]]
        for t in range(left.shape[1]):
            np.multiply(left[start : start + per, t, None], right[t], out=term)
            add(block, term, out=block)


def cholesky(k: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor L (L Lᵀ = k) of a symmetric positive definite (n, n) ``k``, from its
    lower triangle: right-looking, in panels of :data:`PANEL` columns; every entry is updated in
    the same order as by the unblocked algorithm, so the result does not depend on the panel size."""
    a = np.tril(np.asarray(k, dtype=np.float64))
    n = a.shape[0]
    for p in range(0, n, PANEL):
        e = min(p + PANEL, n)
        for j in range(p, e):
            pivot = a[j, j]
            if not pivot > 0:
                raise ValueError("feedback_factor: the damped moments are not positive definite")
            a[j, j] = np.sqrt(pivot)
            a[j + 1 :, j] /= a[j, j]
            a[j + 1 :, j + 1 : e] -= a[j + 1 :, j, None] * a[None, j + 1 : e, j]
        panel = np.ascontiguousarray(a[e:, p:e])
        _subtract_products(a[e:, e:], panel, np.ascontiguousarray(panel.T))
    return np.tril(a)


def quantise_with_feedback(
    values: np.ndarray, steps: np.ndarray | float, factor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(codes (m, n) float64 integers, loss (m,) float64) of ``values`` (m, n) quantised column after
    column with steps ``steps`` (broadcastable to (m, n)) and the error feedback of ``factor`` V
    (:func:`feedback_factor`, (n, n)); loss_i = Σ_j e_ij², row i's output error under the damped
    moments (module docstring).

    With x = w - s q the rounding residuals of the columns done, the feedback of the module
    docstring is w'_l = w_l + (Σ_(j<l) x_j V_jl) / V_ll, and e_l = V_ll (w'_l - s_l q_l): the sums
    are accumulated column by column, in panels of :data:`PANEL` (the same order either way)."""
    w = np.asarray(values, dtype=np.float64)
    m, n = w.shape
    if factor.shape != (n, n):
        raise ValueError(f"quantise_with_feedback: a factor of shape {factor.shape} for {n} columns")
    s = np.broadcast_to(np.asarray(steps, dtype=np.float64), (m, n))
    fed = np.zeros((m, n), dtype=np.float64)  # Σ_(j<l) x_j V_jl
    codes = np.empty((m, n), dtype=np.float64)
    scaled = np.empty((m, n), dtype=np.float64)  # e_ij
    residual = np.empty((m, n), dtype=np.float64)  # x_ij
    for p in range(0, n, PANEL):
        e = min(p + PANEL, n)
        for j in range(p, e):
            target = w[:, j] + fed[:, j] / factor[j, j]
            q = np.rint(target / s[:, j])
            codes[:, j] = q
            scaled[:, j] = (target - q * s[:, j]) * factor[j, j]
            residual[:, j] = w[:, j] - q * s[:, j]
            fed[:, j + 1 : e] += residual[:, j, None] * factor[None, j, j + 1 : e]
        _subtract_products(fed[:, e:], np.ascontiguousarray(residual[:, p:e]), factor[p:e, e:], sign=1.0)
    loss = np.add.reduce(scaled * scaled, axis=1)
    return codes, loss


def quantise_many(
    values: np.ndarray, steps: list[np.ndarray | float], factor: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`quantise_with_feedback` of ``values`` (m, n) with each of ``steps``, in one pass: the
    rows of every step stacked (rows are independent under the feedback, so each result is the one a
    call of its own gives, bit for bit), which shares the per-column work of the loop."""
    if not steps:
        return []
    w = np.asarray(values, dtype=np.float64)
    m, n = w.shape
    stacked = np.concatenate([np.broadcast_to(np.asarray(s, dtype=np.float64), (m, n)) for s in steps])
    codes, loss = quantise_with_feedback(np.tile(w, (len(steps), 1)), stacked, factor)
    return [(codes[k * m : (k + 1) * m], loss[k * m : (k + 1) * m]) for k in range(len(steps))]


@dataclass(frozen=True)
class Prepared:
    """Feedback results made together (:func:`quantise_many`) for one matrix and several steps,
    which a ``feedback=true`` stage takes instead of running the loop itself (:meth:`lookup`)."""

    values: np.ndarray
    steps: tuple[np.ndarray | float, ...]
    results: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def make(cls, values: np.ndarray, steps: list[np.ndarray | float], factor: np.ndarray) -> Prepared:
        return cls(np.asarray(values, dtype=np.float64), tuple(steps), tuple(quantise_many(values, steps, factor)))

    def lookup(self, values: np.ndarray, steps: np.ndarray | float) -> tuple[np.ndarray, np.ndarray] | None:
        """The (codes, loss) made for exactly these ``values`` and ``steps``; None if they were not."""
        if values.shape != self.values.shape or not np.array_equal(values, self.values):
            return None
        for made, result in zip(self.steps, self.results, strict=True):
            if np.shape(made) == np.shape(steps) and np.array_equal(made, steps):
                return result
        return None
