"""L1 sparse coding (the lasso) for many signals at once: pure numpy math, no sparsify types.

Every function solves, for each column y of Y (shape (L, S)) and a dictionary D (shape (L, K)),

.. math::

    \\min_x \\; \\tfrac12 \\lVert y - D x \\rVert_2^2 + \\alpha \\lVert x \\rVert_1 ,

given only the Gram matrix G = DᵀD (K, K) and the correlations B = DᵀY (K, S). scikit-learn's
``Lasso`` minimises (1 / (2 n_samples)) ||y - X w||² + alpha_sk ||w||₁; with X = D, n_samples = L, the
same problem has ``alpha_sk = alpha / L``. ``sklearn.decomposition.sparse_encode(algorithm="lasso_cd",
alpha=alpha)`` divides by L itself, so its ``alpha`` is this module's.

* :func:`soft_threshold` -- the proximal map of t||x||₁ (the solution when D is orthonormal);
* :func:`fista_lasso` -- FISTA with adaptive restart, vectorised over signals, whose iterates are
  polished by semismooth-Newton (active-set) steps: the exact solution for a support and sign pattern
  is one small linear solve, accepted when it meets the KKT conditions;
* :func:`solve_on_support` -- batched least squares restricted to each signal's support (grouped by
  support size), used by the polishing step and by :func:`debias`;
* :func:`bisect_alpha` -- bisection on alpha for a monotone budget (``nnz`` or ``max_error``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Elements of the gathered (n, s, s) Gram blocks per batched solve (memory bound: 32 MB of float64).
_SOLVE_CHUNK = 1 << 22
# Relative slack on the KKT inequality |g_j| <= alpha off the support (rounding in G x).
_KKT_SLACK = 1e-9
# Support sizes are padded up to a multiple of this, so one batched solve covers several sizes.
_PAD = 8


def soft_threshold(z: np.ndarray, threshold: float) -> np.ndarray:
    """The proximal map of ``threshold * ||.||_1``: sign(z) max(|z| - threshold, 0), elementwise.

    Parameters
    ----------
    z : ndarray of any shape
    threshold : float >= 0

    Returns
    -------
    ndarray of the shape of ``z`` (float64 unless ``z`` is another float type).

    >>> soft_threshold(np.array([-3.0, 0.5, 2.0]), 1.0)
    array([-2.,  0.,  1.])
    """
    return z - np.clip(z, -threshold, threshold)


def lasso_objective(gram: np.ndarray, dty: np.ndarray, y_sq: np.ndarray, codes: np.ndarray, alpha: float) -> np.ndarray:
    """½||y - D x||² + alpha ||x||₁ for each signal, from G = DᵀD (K, K), B = DᵀY (K, S), ||y||² (S,).

    Returns an array of shape (S,). Uses ½(yᵀy - 2 bᵀx + xᵀ G x), so it may lose digits when the
    residual is far smaller than y; compute the residual directly when that matters.
    """
    quad = np.einsum("ks,ks->s", codes, gram @ codes)
    return 0.5 * (y_sq - 2.0 * np.einsum("ks,ks->s", dty, codes) + quad) + alpha * np.abs(codes).sum(axis=0)


def solve_on_support(gram: np.ndarray, rhs: np.ndarray, support: np.ndarray) -> np.ndarray:
    """For each column s: x_S = G_SS⁻¹ rhs_S on S = support[:, s], zero elsewhere.

    Batched: columns are grouped by support size, rounded up to a multiple of 8 (padded with identity
    rows and zero right-hand sides, whose solution is zero), and each group is solved with one stacked
    ``np.linalg.solve`` (in chunks of bounded memory). A singular or non-finite block falls back to the
    minimum-norm solution (pseudo-inverse) for that chunk.

    Parameters
    ----------
    gram : ndarray of shape (K, K), symmetric positive semi-definite
    rhs : ndarray of shape (K, S)
    support : bool ndarray of shape (K, S)

    Returns
    -------
    ndarray of shape (K, S), float64.
    """
    k, count = support.shape
    x = np.zeros((k, count), dtype=np.float64)
    sizes = support.sum(axis=0)
    buckets = -(-sizes // _PAD) * _PAD
    for size in np.unique(buckets):
        if size == 0:
            continue
        size = int(min(size, k))
        cols = np.flatnonzero(np.minimum(buckets, k) == size)
        step = max(1, _SOLVE_CHUNK // (size * size))
        eye = np.eye(size)
        for first in range(0, cols.size, step):
            c = cols[first : first + step]
            mask = support[:, c].T
            rows = np.argsort(~mask, axis=1, kind="stable")[:, :size]  # support atoms first, ascending
            valid = np.take_along_axis(mask, rows, axis=1)
            pair = valid[:, :, None] & valid[:, None, :]
            blocks = np.where(pair, gram[rows[:, :, None], rows[:, None, :]], eye)
            right = np.where(valid, np.take_along_axis(rhs[:, c].T, rows, axis=1), 0.0)[..., None]
            try:
                solution = np.linalg.solve(blocks, right)[..., 0]
                if not np.isfinite(solution).all():
                    raise np.linalg.LinAlgError
            except np.linalg.LinAlgError:
                solution = (np.linalg.pinv(blocks, hermitian=True) @ right)[..., 0]
            owner = np.broadcast_to(c[:, None], rows.shape)
            x[rows[valid], owner[valid]] = solution[valid]
    return x


def debias(gram: np.ndarray, dty: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Least-squares refit on each signal's support: argmin over supp(x') ⊆ supp(x) of ||y - D x'||².

    Parameters
    ----------
    gram : ndarray of shape (K, K), DᵀD
    dty : ndarray of shape (K, S), DᵀY
    codes : ndarray of shape (K, S), whose nonzeros give the supports

    Returns
    -------
    ndarray of shape (K, S). For an orthonormal D this is simply B on the support.
    """
    return solve_on_support(gram, dty, codes != 0)


def _kkt_ok(gram: np.ndarray, dty: np.ndarray, x: np.ndarray, signs: np.ndarray, alpha: float) -> np.ndarray:
    """Per column, the KKT conditions: x has the signs ``signs``, B - G x = alpha signs on the support and
    |B_j - G_j x| <= alpha off it."""
    support = signs != 0
    grad = dty - gram @ x
    scale = np.maximum(np.abs(dty).max(axis=0, initial=0.0), 1e-300)
    off_ok = np.where(support, True, np.abs(grad) <= alpha * (1 + _KKT_SLACK) + 1e-13 * scale).all(axis=0)
    # On the support the gradient must balance alpha exactly (fails when G_SS is singular and the
    # system inconsistent, e.g. more atoms than the signal length).
    on_ok = np.where(support, np.abs(grad - alpha * signs) <= _KKT_SLACK * (alpha + scale), True).all(axis=0)
    return off_ok & on_ok & (np.sign(x) == signs).all(axis=0)


def _newton(
    gram: np.ndarray, dty: np.ndarray, codes: np.ndarray, alpha: float, tau: float, steps: int, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """Semismooth Newton (primal-dual active set) steps from ``codes``; which columns reached the optimum.

    One step: the support and signs of the prox-gradient point p = x + tau (B - G x), thresholded at
    tau alpha; on support S with signs s the optimum solves G_SS x_S = B_S - alpha s. The result is the
    lasso minimiser iff it keeps the signs s and |B_j - G_j x| <= alpha off S (the KKT conditions of
    the convex problem), which is checked; columns that pass are final.
    """
    result = codes.copy()
    solved = np.zeros(codes.shape[1], dtype=bool)
    live = np.arange(codes.shape[1])
    x, b = codes, dty
    for _ in range(steps):
        point = b - gram @ x
        point *= tau
        point += x
        signs = np.where(np.abs(point) > tau * alpha, np.sign(point), 0.0)
        # A support larger than rank(G) has a singular G_SS and cannot be optimal with these signs: skip.
        small = np.count_nonzero(signs, axis=0) <= rank
        signs[:, ~small] = 0.0
        x = solve_on_support(gram, b - alpha * signs, signs != 0)
        ok = small & _kkt_ok(gram, b, x, signs, alpha)
        result[:, live[ok]] = x[:, ok]
        solved[live[ok]] = True
        keep = ~ok
        live, x, b = live[keep], x[:, keep], b[:, keep]
        if live.size == 0:
            break
    return result, solved


def fista_lasso(
    gram: np.ndarray,
    dty: np.ndarray,
    alpha: float,
    *,
    max_iter: int = 30000,
    tol: float = 1e-12,
    block: int = 4096,
    polish_every: int = 5,
    newton_steps: int = 2,
) -> np.ndarray:
    """Solve the lasso for every signal at once by FISTA with adaptive restart and active-set polishing.

    Minimises, independently for each column,

    .. math:: \\tfrac12 x^\\top G x - b^\\top x + \\alpha \\lVert x \\rVert_1
              = \\tfrac12 \\lVert y - D x \\rVert^2 + \\alpha \\lVert x \\rVert_1 - \\tfrac12 \\lVert y \\rVert^2 .

    Iteration (Beck & Teboulle 2009), step 1/λ_max(G), per-signal momentum reset when it points uphill
    (O'Donoghue & Candès 2015). Every ``polish_every`` iterations, each unfinished signal takes up to
    ``newton_steps`` semismooth-Newton (primal-dual active set) steps: the exact solution for the support
    and signs of its prox-gradient point, one batched solve, accepted when it meets the KKT conditions;
    such signals are finished, so the others iterate on a shrinking set. Signals loop in column blocks
    of ``block`` (a loop over blocks and iterations, never over signals).

    Parameters
    ----------
    gram : ndarray of shape (K, K)
        G = DᵀD.
    dty : ndarray of shape (K, S)
        B = DᵀY.
    alpha : float >= 0
    max_iter : int
        Iterations at most per block; a signal still moving then keeps its last iterate.
    tol : float
        A signal also stops when its largest coefficient change is <= tol * its largest coefficient.
    block : int
        Signals per block.
    polish_every : int
        Iterations between polishing steps (0: never polish).
    newton_steps : int
        Newton steps per polishing.

    Returns
    -------
    codes : ndarray of shape (K, S), float64.
    """
    gram = np.asarray(gram, dtype=np.float64)
    dty = np.asarray(dty, dtype=np.float64)
    k, count = dty.shape
    codes = np.zeros((k, count), dtype=np.float64)
    if k == 0 or count == 0:
        return codes
    eigenvalues = np.linalg.eigvalsh(gram)
    lip = float(eigenvalues[-1])
    if not lip > 0:
        return codes
    rank = int(np.count_nonzero(eigenvalues > lip * k * np.finfo(np.float64).eps))
    for first in range(0, count, block):
        cols = slice(first, first + block)
        codes[:, cols] = _fista_block(
            gram, lip, np.ascontiguousarray(dty[:, cols]), alpha, max_iter, tol, polish_every, newton_steps, rank
        )
    return codes


def _fista_block(
    gram: np.ndarray,
    lip: float,
    dty: np.ndarray,
    alpha: float,
    max_iter: int,
    tol: float,
    polish_every: int,
    newton_steps: int,
    rank: int,
) -> np.ndarray:
    out = np.zeros_like(dty)
    live = np.arange(dty.shape[1])
    b = dty
    x = np.zeros_like(b)
    z = np.zeros_like(b)
    t = np.ones(b.shape[1])
    step, thr = 1.0 / lip, alpha / lip
    tau = 1.0 / float(np.max(np.diag(gram)))
    for it in range(1, max_iter + 1):
        point = gram @ z
        point -= b
        point *= -step
        point += z  # z - step * (G z - b)
        new = soft_threshold(point, thr)
        change = new - x
        uphill = np.einsum("ks,ks->s", z - new, change) > 0
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        momentum = np.where(uphill, 0.0, (t - 1.0) / t_next)
        t = np.where(uphill, 1.0, t_next)
        z = new + change * momentum
        x = new
        biggest = np.abs(x).max(axis=0, initial=0.0)
        done = np.abs(change).max(axis=0, initial=0.0) <= tol * biggest
        if polish_every and it % polish_every == 0:
            cand = np.flatnonzero(~done)
            if cand.size:
                exact, ok = _newton(gram, b[:, cand], x[:, cand], alpha, tau, newton_steps, rank)
                x[:, cand[ok]] = exact[:, ok]
                done[cand[ok]] = True
        if done.any():
            out[:, live[done]] = x[:, done]
            keep = ~done
            live, b, x, z, t = live[keep], b[:, keep], x[:, keep], z[:, keep], t[keep]
            if live.size == 0:
                return out
    out[:, live] = x
    return out


def bisect_alpha(
    ok: Callable[[float], bool],
    alpha_max: float,
    *,
    ok_when_small: bool,
    rel_tol: float = 1e-4,
    max_steps: int = 60,
) -> float:
    """The boundary alpha of a monotone budget, by bisection on [0, alpha_max].

    ``ok(alpha)`` says whether alpha meets the budget. With ``ok_when_small`` (``max_error``: a smaller
    alpha fits better) the result is the largest alpha found ok; otherwise (``nnz``: a larger alpha gives
    fewer nonzeros) the smallest. The ends are tried first; bisection stops when the bracket is within
    ``rel_tol`` of its upper end. The result was found ok by ``ok``, except when no alpha is (then 0 for
    ``ok_when_small``, alpha_max otherwise: the best there is).

    >>> round(bisect_alpha(lambda a: a <= 0.3, 1.0, ok_when_small=True), 3)
    0.3
    """
    if alpha_max <= 0:
        return 0.0
    small, large = 0.0, alpha_max
    if ok_when_small:
        if ok(large):
            return large
        if not ok(small):
            return small
        good, bad = small, large
    else:
        if ok(small):
            return small
        if not ok(large):
            return large
        good, bad = large, small
    for _ in range(max_steps):
        if abs(good - bad) <= rel_tol * max(good, bad):
            break
        middle = 0.5 * (good + bad)
        if ok(middle):
            good = middle
        else:
            bad = middle
    return good
