"""L1 sparse coding (the lasso) for many signals at once: pure numpy math, no sparsify types.

Every function solves, for each column y of Y (shape (L, S)) and a dictionary D (shape (L, K)),

.. math::

    \\min_x \\; \\tfrac12 \\lVert y - D x \\rVert_2^2 + \\alpha \\lVert x \\rVert_1 ,

given only the Gram matrix G = DᵀD (K, K) and the correlations B = DᵀY (K, S). scikit-learn's
``Lasso`` minimises (1 / (2 n_samples)) ||y - X w||² + alpha_sk ||w||₁; with X = D, n_samples = L, the
same problem has ``alpha_sk = alpha / L``. ``sklearn.decomposition.sparse_encode(algorithm="lasso_cd",
alpha=alpha)`` divides by L itself, so its ``alpha`` is this module's.

* :func:`soft_threshold` -- the proximal map of t||x||₁ (the solution when D is orthonormal);
* :func:`homotopy_lasso` -- for a Gram matrix of low rank (short signals: segments, a dictionary
  learned over them) the homotopy / LARS-lasso path from x = 0 to alpha, every signal one event per
  step, all at once; it only proposes supports and signs, which are then solved and checked as below;
* :func:`fista_lasso` -- the solver, vectorised over signals: the homotopy first where G's rank is at
  most :data:`HOMOTOPY_MAX_RANK`, then for the signals left FISTA with adaptive restart in float32
  (sgemm, cheap) only to find each signal's support and signs, then semismooth-Newton (active-set)
  steps in float64: the exact solution for a support and sign pattern is one small linear solve
  (batched over signals), accepted only when it meets the KKT conditions; solved signals leave the
  working set. Warm starts (``init``) serve the alpha searches. A float64 FISTA fallback
  (:func:`_fista_block`) catches the rare signal float32 cannot settle;
* :func:`solve_on_support` -- batched least squares restricted to each signal's support (grouped by
  support size), used by the polishing step and by :func:`debias`;
* :func:`bisect_alpha` -- bisection on alpha for a monotone budget (``nnz`` or ``max_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# Elements of the gathered (n, s, s) Gram blocks per batched solve (memory bound: 32 MB of float64).
_SOLVE_CHUNK = 1 << 22
# Dictionaries whose Gram matrix has at most this rank are solved by the homotopy first
# (:func:`homotopy_lasso`): its cost per step grows with the active set (at most the rank) squared,
# FISTA's with the atoms squared, and it needs no iterations to converge.
HOMOTOPY_MAX_RANK = 64
# ... and at least this many times as many atoms as the rank: on a dictionary that is little
# overcomplete, G is well enough conditioned for FISTA to settle the supports in a few iterations.
HOMOTOPY_MIN_OVERCOMPLETE = 4
# Elements of a homotopy chunk's working arrays (correlations, inverse Gram blocks). Each step of a
# chunk is one matrix product: few large ones, because on a busy machine every multithreaded BLAS call
# can wait for a descheduled thread.
_HOMOTOPY_CHUNK = 1 << 23
# Relative slack on the KKT inequality |g_j| <= alpha off the support (rounding in G x).
_KKT_SLACK = 1e-9


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

    Batched: columns are grouped by their exact support size n, and each group is solved with stacked
    ``np.linalg.solve`` calls on its (count, n, n) Gram blocks (in chunks of bounded memory). A singular
    or non-finite block falls back to the minimum-norm solution (pseudo-inverse) for that chunk.

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
    gram, rhs = np.ascontiguousarray(gram, dtype=np.float64), np.ascontiguousarray(rhs, dtype=np.float64)
    sizes = np.count_nonzero(support, axis=0)
    order = np.argsort(sizes, kind="stable")
    edges = np.searchsorted(sizes[order], np.arange(k + 2))
    for size in range(1, k + 1):
        cols = order[edges[size] : edges[size + 1]]
        step = max(1, _SOLVE_CHUNK // (size * size))
        for first in range(0, cols.size, step):
            c = cols[first : first + step]
            rows = np.nonzero(support[:, c].T)[1].reshape(c.size, size)  # each signal's atoms, ascending
            flat = rows * count + c[:, None]  # positions in the (K, S) arrays
            blocks = np.take(gram, rows[:, :, None] * k + rows[:, None, :])
            x.flat[flat] = _solve_blocks(blocks, np.take(rhs, flat))
    return x


def _solve_blocks(blocks: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Solutions of the stacked systems blocks (n, m, m) @ x (n, m) = right (n, m); pseudo-inverse if singular."""
    try:
        solution = np.linalg.solve(blocks, right[..., None])[..., 0]
        if np.isfinite(solution).all():
            return solution
    except np.linalg.LinAlgError:
        pass
    return (np.linalg.pinv(blocks, hermitian=True) @ right[..., None])[..., 0]


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


def _kkt_ok(
    residual: np.ndarray, x: np.ndarray, support: np.ndarray, signs: np.ndarray, alpha: float, scale: np.ndarray
) -> np.ndarray:
    """Per column, the lasso's KKT conditions for x on ``support`` with ``signs`` (all (K, S)).

    ``residual`` is (B - G x) - alpha signs. x must have the signs ``signs`` on the support; there the
    residual must vanish (it does not when G_SS is singular and the system inconsistent, e.g. more atoms
    than the signal length) and off it |B_j - G_j x| <= alpha, both up to rounding relative to ``scale``
    (S,), the columns' max |B|. Returns a bool array (S,).
    """
    on_bound = _KKT_SLACK * (alpha + scale)
    off_bound = alpha * (1 + _KKT_SLACK) + 1e-13 * scale
    fits = (np.abs(residual) <= np.where(support, on_bound, off_bound)).all(axis=0)
    signed = np.count_nonzero(x * signs > 0, axis=0) == np.count_nonzero(support, axis=0)
    return fits & signed


def _newton(
    gram: np.ndarray, dty: np.ndarray, codes: np.ndarray, alpha: float, steps: int, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """Semismooth Newton (primal-dual active set) steps from ``codes``, in float64.

    One step: the support S and signs s of the prox-gradient point p = x + tau (B - G x), thresholded at
    tau alpha (tau = 1 / max diag G); on (S, s) the optimum solves G_SS x_S = B_S - alpha s, one batched
    solve. The result is the lasso minimiser iff it meets the KKT conditions (:func:`_kkt_ok`), which
    is checked; columns that pass are final and leave the working set.

    Parameters
    ----------
    gram : ndarray (K, K); dty : ndarray (K, S); codes : ndarray (K, S), the starting points
    alpha : float; steps : int, at most this many steps; rank : int, rank of G (a larger support is
        singular and skipped)

    Returns
    -------
    x : ndarray (K, S), the minimiser where ``solved``, else the last Newton iterate
    solved : bool ndarray (S,)
    """
    x = np.array(codes, dtype=np.float64)
    solved = np.zeros(x.shape[1], dtype=bool)
    tau = 1.0 / float(np.max(np.diag(gram)))
    live = np.arange(x.shape[1])
    cur, b = x, dty
    scale = np.maximum(np.abs(dty).max(axis=0, initial=0.0), 1e-300)
    point = gram @ cur
    point -= b
    point *= -tau
    point += cur  # cur + tau (B - G cur)
    for _ in range(steps):
        support = np.abs(point) > tau * alpha
        support[:, np.count_nonzero(support, axis=0) > rank] = False  # singular G_SS: cannot be optimal
        signs = np.copysign(support, point)
        rhs = signs * -alpha
        rhs += b
        cur = solve_on_support(gram, rhs, support)
        residual = rhs - gram @ cur  # (B - G cur) - alpha signs
        ok = _kkt_ok(residual, cur, support, signs, alpha, scale)
        x[:, live[ok]] = cur[:, ok]
        solved[live[ok]] = True
        keep = ~ok
        live, cur, b, scale = live[keep], cur[:, keep], b[:, keep], scale[keep]
        if live.size == 0:
            break
        # The next prox point: cur + tau (residual + alpha signs).
        point = residual[:, keep]
        point += alpha * signs[:, keep]
        point *= tau
        point += cur
    x[:, live] = cur
    return x, solved


def homotopy_lasso(
    gram: np.ndarray, dty: np.ndarray, alpha: float, *, max_active: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The lasso minimiser of every signal: support and signs by the homotopy path, values solved exactly.

    For each column b of B, follows the piecewise-linear path of minimisers x(λ) from λ = max|b|
    (x = 0) down to λ = ``alpha`` (LARS-lasso: Osborne, Presnell & Turlach 2000; Efron et al. 2004).
    On the active set A with signs s, x_A moves along u = G_AA⁻¹ s and the correlations c = b - G x
    along -a, a = G[:, A] u, until an inactive atom's |c_j| reaches λ (it joins, with the sign of c_j)
    or an active coefficient reaches 0 (it leaves). Each step every signal of a chunk takes its own next
    event, all at once (no loop over signals); G_AA⁻¹ is kept per signal, bordered when an atom joins
    and downdated when one leaves, and a = Fᵀ(F_A u) with G = FᵀF (F: the (rank, K) factor from the
    eigendecomposition of G), one matrix product for the chunk.

    The path only proposes: on its final support and signs the minimiser x_S = G_SS⁻¹(b_S - α s) is
    solved afresh in float64 (:func:`_exact_on_support`, one batched LAPACK solve, as the Newton steps
    of :func:`fista_lasso` do) and accepted only where it meets the KKT conditions, checked against
    every atom; the others are returned unsolved (:func:`fista_lasso` finishes them its other way).

    Parameters
    ----------
    gram : ndarray of shape (K, K)
        G = DᵀD.
    dty : ndarray of shape (K, S)
        B = DᵀY.
    alpha : float > 0
    max_active : int, optional
        A signal whose active set would grow past this many atoms gives up [default: the rank of G].

    Returns
    -------
    codes : ndarray of shape (K, S)
        The minimiser where ``solved``, 0 elsewhere.
    solved : bool ndarray of shape (S,)
    """
    gram = np.ascontiguousarray(gram, dtype=np.float64)
    dty = np.asarray(dty, dtype=np.float64)
    k, count = dty.shape
    codes = np.zeros((k, count), dtype=np.float64)
    if k == 0 or count == 0:
        return codes, np.ones(count, dtype=bool)
    eigenvalues, vectors = np.linalg.eigh(gram)
    lip = float(eigenvalues[-1])
    if not lip > 0:
        return codes, ~np.abs(dty).any(axis=0)
    kept = eigenvalues > lip * k * np.finfo(np.float64).eps
    factor = np.ascontiguousarray((vectors[:, kept] * np.sqrt(eigenvalues[kept])).T)  # (rank, K), G = FᵀF
    width = max(1, min(int(np.count_nonzero(kept)), k, k if max_active is None else int(max_active)))
    chunk = max(1, _HOMOTOPY_CHUNK // (4 * k + width * (width + factor.shape[0] + 6)))
    solved = np.zeros(count, dtype=bool)
    for first in range(0, count, chunk):
        cols = np.arange(first, min(first + chunk, count))
        b = np.ascontiguousarray(dty[:, cols].T)
        atoms, signs, reached = _homotopy_chunk(gram, factor, b, alpha, width)
        values, ok = _exact_on_support(gram, factor, b, atoms, signs, alpha)
        ok &= reached
        used = (atoms >= 0) & ok[:, None]
        codes[atoms[used], np.broadcast_to(cols[:, None], atoms.shape)[used]] = values[used]
        solved[cols] = ok
    return codes, solved


def _exact_on_support(
    gram: np.ndarray, factor: np.ndarray, b: np.ndarray, atoms: np.ndarray, signs: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """The lasso minimiser on a support and sign pattern, and whether it is the minimiser.

    Per signal (row of ``b``, shape (n, K)): x_S = G_SS⁻¹(b_S - α s) on the atoms ``atoms`` (n, w),
    -1 in unused slots, with ``signs`` (n, w); one batched float64 solve (unused slots padded with
    the identity). Returns the values (n, w) and the KKT test (n,) of :func:`_kkt_ok`: on the support
    G_S x = b_S - α s and sign(x) = s, off it |b_j - G_j x| <= α, up to rounding.
    """
    n, width = atoms.shape
    used = atoms >= 0
    safe = np.maximum(atoms, 0)
    blocks = gram[safe[:, :, None], safe[:, None, :]] * (used[:, :, None] & used[:, None, :])
    blocks[:, np.arange(width), np.arange(width)] += ~used
    rhs = np.where(used, np.take_along_axis(b, safe, axis=1) - alpha * signs, 0.0)
    values = _solve_blocks(blocks, rhs) * used
    scale = np.maximum(np.abs(b).max(axis=1, initial=0.0), 1e-300)
    on = np.abs(rhs - np.einsum("sij,sj->si", blocks, values)) <= _KKT_SLACK * (alpha + scale)[:, None]
    signed = (values * signs > 0) | ~used
    fitted = np.einsum("si,rsi->sr", values, factor[:, safe]) @ factor  # G x, (n, K)
    off = np.abs(b - fitted) <= (alpha * (1 + _KKT_SLACK) + 1e-13 * scale)[:, None]
    off[np.broadcast_to(np.arange(n)[:, None], atoms.shape)[used], atoms[used]] = True
    return values, (on | ~used).all(axis=1) & signed.all(axis=1) & off.all(axis=1)


def _homotopy_chunk(
    gram: np.ndarray, factor: np.ndarray, b: np.ndarray, alpha: float, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The homotopy path of :func:`homotopy_lasso` for one chunk of signals (``b``: (n, K), signal-major).

    Active atoms live in ``width`` slots per signal (a free slot holds atom -1, coefficient and sign 0,
    and a zero row and column of the slot-indexed G_AA⁻¹). Returns the slots' atoms (n, width), their
    signs (n, width) and whether each signal reached ``alpha`` (n,): False where its active set
    would outgrow the slots, a joining atom depends on the active ones, or the steps ran out. The
    working arrays hold only the signals still on their way (compacted when some arrive).
    """
    n, k = b.shape
    diag = np.diagonal(gram)
    out_atoms = np.full((n, width), -1, dtype=np.int64)
    out_signs = np.zeros((n, width))
    reached = np.abs(b).max(axis=1) <= alpha  # x = 0 is the minimiser
    index = np.flatnonzero(~reached)  # the signals on their way
    c = b[index]  # correlations b - G x
    lam = np.abs(c).max(axis=1)
    m = index.size
    state = _Path(
        atoms=np.full((m, width), -1, dtype=np.int64),
        x=np.zeros((m, width)),
        sgn=np.zeros((m, width)),
        inv=np.zeros((m, width, width)),  # G_AA^-1 on the slots
        fa=np.zeros((m, width, factor.shape[0])),  # F[:, atom] per slot
        active=np.zeros((m, k), dtype=bool),
    )
    rows = np.arange(m)
    first = np.abs(c).argmax(axis=1)
    ok = _join(gram, factor, diag, state, rows, first, np.sign(c[rows, first]))
    dropped = np.full(m, -1, dtype=np.int64)  # the atom that just left: its |c| = λ, it must not rejoin at once
    going = ok  # signals still on their way; the others idle (no step) until the arrays are compacted
    for _ in range(4 * width + 16):
        if np.count_nonzero(going) < 0.75 * going.size:  # compact: copying costs about one step
            keep = np.flatnonzero(going)
            index, c, lam, dropped, state = index[keep], c[keep], lam[keep], dropped[keep], state.take(keep)
            going = going[keep]
        m = index.size
        if m == 0 or not going.any():
            break
        rows = np.arange(m)
        u = np.einsum("sij,sj->si", state.inv, state.sgn)
        a = np.einsum("si,sir->sr", u, state.fa) @ factor  # G[:, A] u
        with np.errstate(divide="ignore", invalid="ignore"):
            # |c_j - γ a_j| reaches λ - γ at γ = (λ ∓ c_j) / (1 ∓ a_j); the first positive one is the
            # largest positive 1/γ, and the reciprocal leaves the impossible ends (1 ∓ a_j <= 0) negative.
            speed = np.subtract(1.0, a)
            speed /= np.subtract(lam[:, None], c)
            other = np.add(1.0, a)
            other /= np.add(lam[:, None], c)
            np.fmax(speed, other, out=speed)  # fmax: a 0/0 (an atom exactly on the path) is no event
            speed[state.active] = -np.inf
            stale = np.flatnonzero(dropped >= 0)
            speed[stale, dropped[stale]] = -np.inf
            joiner = speed.argmax(axis=1)
            fastest = speed[rows, joiner]
            gamma_join = np.where(fastest > 0, 1.0 / fastest, np.inf)
            leave = np.where(state.x * u < 0, -state.x / u, np.inf)
        leaver = leave.argmin(axis=1)
        gamma_drop = leave[rows, leaver]
        gamma_end = lam - alpha
        gamma = np.where(going, np.minimum(np.minimum(gamma_join, gamma_drop), gamma_end), 0.0)
        state.x[:] += gamma[:, None] * u
        c -= gamma[:, None] * a
        lam -= gamma
        finish = going & (gamma_end <= np.minimum(gamma_join, gamma_drop))
        drop = going & ~finish & (gamma_drop < gamma_join)
        join = going & ~finish & ~drop
        going = going & ~finish
        arrived = np.flatnonzero(finish)
        out_atoms[index[arrived]] = state.atoms[arrived]
        out_signs[index[arrived]] = state.sgn[arrived]
        reached[index[arrived]] = True
        dropped[:] = -1
        if drop.any():
            who = np.flatnonzero(drop)
            dropped[who] = state.atoms[who, leaver[who]]
            _leave(state, who, leaver[who])
        if join.any():
            who = np.flatnonzero(join)
            going[who] = _join(gram, factor, diag, state, who, joiner[who], np.sign(c[who, joiner[who]]))
    return out_atoms, out_signs, reached


class _Path(NamedTuple):
    """The homotopy's per-signal state (signal-major): active atoms per slot (-1: free), their
    coefficients and signs, the slot-indexed G_AA⁻¹, F's columns of the active atoms, and the active
    atoms as a (signals, K) mask."""

    atoms: np.ndarray
    x: np.ndarray
    sgn: np.ndarray
    inv: np.ndarray
    fa: np.ndarray
    active: np.ndarray

    def take(self, rows: np.ndarray) -> _Path:
        return _Path(*(v[rows] for v in self))


def _join(
    gram: np.ndarray,
    factor: np.ndarray,
    diag: np.ndarray,
    state: _Path,
    who: np.ndarray,
    atom: np.ndarray,
    sign: np.ndarray,
) -> np.ndarray:
    """Atom ``atom[i]`` joins signal ``who[i]``'s active set in its first free slot, with ``sign[i]``,
    G_AA⁻¹ bordered, in place. Returns, per ``who``, False where the signal had no free slot or the
    new atom depends on its active ones (nothing changed then)."""
    free = state.atoms[who] < 0
    slot = free.argmax(axis=1)
    cross = gram[np.maximum(state.atoms[who], 0), atom[:, None]] * ~free  # G[A, j] on the slots
    w = np.einsum("sij,sj->si", state.inv[who], cross)
    delta = diag[atom] - np.einsum("si,si->s", w, cross)
    ok = free.any(axis=1) & (sign != 0) & (delta > 1e-10 * diag[atom])
    who, atom, slot, w, delta, sign = who[ok], atom[ok], slot[ok], w[ok], delta[ok], sign[ok]
    if 2 * who.size > state.inv.shape[0]:  # most signals join: one pass over all beats a gather and a scatter
        full = np.zeros(state.inv.shape[:2])
        full[who] = w
        scale = np.zeros(full.shape[0])
        scale[who] = 1.0 / delta
        state.inv[:] += (full * scale[:, None])[:, :, None] * full[:, None, :]
    else:
        state.inv[who] += (w / delta[:, None])[:, :, None] * w[:, None, :]
    border = -w / delta[:, None]
    state.inv[who, slot, :] = border
    state.inv[who, :, slot] = border
    state.inv[who, slot, slot] = 1.0 / delta
    state.atoms[who, slot] = atom
    state.sgn[who, slot] = sign
    state.x[who, slot] = 0.0
    state.fa[who, slot] = factor[:, atom].T
    state.active[who, atom] = True
    return ok


def _leave(state: _Path, who: np.ndarray, slot: np.ndarray) -> None:
    """The atom in slot ``slot[i]`` leaves signal ``who[i]``'s active set; G_AA⁻¹ is downdated, in place."""
    column = state.inv[who, :, slot]
    pivot = state.inv[who, slot, slot]
    state.inv[who] -= np.einsum("si,sj->sij", column, column) / pivot[:, None, None]
    state.inv[who, slot, :] = 0.0
    state.inv[who, :, slot] = 0.0
    state.active[who, state.atoms[who, slot]] = False
    state.atoms[who, slot] = -1
    state.sgn[who, slot] = 0.0
    state.x[who, slot] = 0.0
    state.fa[who, slot] = 0.0


def _fista32_steps(
    descent: np.ndarray, shift: np.ndarray, state: tuple[np.ndarray, ...], threshold: float, iters: int, watch: int
) -> tuple[np.ndarray, ...]:
    """``iters`` FISTA iterations in float32 (sgemm is twice dgemm's speed): only to find supports and signs.

    The gradient step is z - (G z - B) / lip = A z + C with ``descent`` A = I - G / lip (K, K) and
    ``shift`` C = B / lip (K, S), both float32; ``threshold`` is alpha / lip. ``state`` is (x, z, t):
    iterate and extrapolated point (K, S) and momentum (S,), returned updated, followed by ``settled``
    (S,): whether each signal's support stayed the same over the last ``watch`` iterations. Per-signal
    momentum reset when it points uphill (O'Donoghue & Candès 2015).
    """
    x, z, t = state[:3]
    thr = np.float32(threshold)
    clipped = np.empty_like(x)
    settled = np.ones(x.shape[1], dtype=bool)
    for it in range(iters):
        new = descent @ z
        new += shift
        new -= np.clip(new, -thr, thr, out=clipped)  # soft threshold
        if it >= iters - watch:
            settled &= ((new == 0) == (x == 0)).all(axis=0)
        change = np.subtract(new, x, out=x)  # x is not needed any more: reuse its memory
        z -= new
        uphill = np.einsum("ks,ks->s", z, change) > 0
        t_next = np.float32(0.5) * (1 + np.sqrt(1 + 4 * t * t))
        momentum = np.where(uphill, np.float32(0), (t - 1) / t_next)
        t = np.where(uphill, np.float32(1), t_next)
        change *= momentum
        change += new
        x, z = new, change
    return x, z, t, settled


def fista_lasso(
    gram: np.ndarray,
    dty: np.ndarray,
    alpha: float,
    *,
    init: np.ndarray | None = None,
    max_iter: int = 30000,
    tol: float = 1e-12,
    block: int = 8192,
    first_iters: int = 12,
    warm_iters: int = 4,
    ready: int = 3,
    max_warm_iters: int = 300,
    polish_every: int = 5,
    newton_steps: int = 2,
    homotopy: bool = True,
) -> np.ndarray:
    """Solve the lasso exactly for every signal at once: homotopy or float32 FISTA for supports, float64 to finish.

    Minimises, independently for each column,

    .. math:: \\tfrac12 x^\\top G x - b^\\top x + \\alpha \\lVert x \\rVert_1
              = \\tfrac12 \\lVert y - D x \\rVert^2 + \\alpha \\lVert x \\rVert_1 - \\tfrac12 \\lVert y \\rVert^2 .

    Rounds of: a few FISTA iterations in float32 (cheap, approximate: ``first_iters``, then
    ``warm_iters`` per round), then, for the signals whose float32 support has settled, up to
    ``newton_steps`` semismooth-Newton steps in float64 from that iterate (:func:`_newton`: the exact
    solution for a support and sign pattern, one batched solve, accepted only when it meets the KKT
    conditions in float64). Signals that pass are final and leave the working set, so later rounds
    cost less. With ``init`` (a warm start) FISTA starts there, and the first round is ``warm_iters`` long.
    The few still unsolved after ``max_warm_iters`` float32 iterations fall back to float64 FISTA with
    periodic Newton polishing (:func:`_fista_block`). Signals go in column blocks of ``block`` (a loop
    over blocks, rounds and iterations, never over signals).

    Parameters
    ----------
    gram : ndarray of shape (K, K)
        G = DᵀD.
    dty : ndarray of shape (K, S)
        B = DᵀY.
    alpha : float >= 0
    init : ndarray of shape (K, S), optional
        A warm start (e.g. the solution at a nearby alpha) for the float32 iterations.
    max_iter : int
        float64 FISTA iterations at most in the fallback; a signal still moving then keeps its last iterate.
    tol : float
        Fallback stop: a signal's largest coefficient change <= tol * its largest coefficient.
    block : int
        Signals per block.
    first_iters, warm_iters, max_warm_iters : int
        float32 FISTA iterations before the first round, per later round, and in all.
    ready : int
        A signal tries Newton only when its float32 support was unchanged over the last ``ready``
        iterations of the round (a failed try costs a solve; this keeps tries mostly successful).
    polish_every : int
        Fallback iterations between Newton polishing steps (0: never polish).
    newton_steps : int
        Newton steps per round.
    homotopy : bool
        When G has rank <= :data:`HOMOTOPY_MAX_RANK` (short signals: segments, a learned dictionary
        over them) and K >= :data:`HOMOTOPY_MIN_OVERCOMPLETE` x rank, first solve every signal by
        :func:`homotopy_lasso`; only the signals it leaves unsolved go through the rounds above
        (``init`` is for those).

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
    todo = np.arange(count)
    if homotopy and rank <= HOMOTOPY_MAX_RANK and k >= HOMOTOPY_MIN_OVERCOMPLETE * rank and alpha > 0:
        codes, solved = homotopy_lasso(gram, dty, alpha)
        todo = np.flatnonzero(~solved)
        if todo.size == 0:
            return codes
        if init is not None:
            init = init[:, todo]
        dty = dty[:, todo]
    codes[:, todo] = _rounds(
        gram,
        dty,
        alpha,
        init,
        lip,
        rank,
        block,
        max_iter,
        tol,
        polish_every,
        newton_steps,
        first_iters,
        warm_iters,
        ready,
        max_warm_iters,
    )
    return codes


def _rounds(
    gram: np.ndarray,
    dty: np.ndarray,
    alpha: float,
    init: np.ndarray | None,
    lip: float,
    rank: int,
    block: int,
    max_iter: int,
    tol: float,
    polish_every: int,
    newton_steps: int,
    first_iters: int,
    warm_iters: int,
    ready: int,
    max_warm_iters: int,
) -> np.ndarray:
    """The float32 FISTA + Newton rounds of :func:`fista_lasso` (and its float64 fallback), block by block."""
    k, count = dty.shape
    codes = np.zeros((k, count), dtype=np.float64)
    solver = _BlockSolver(gram, lip, rank, alpha, warm_iters, max_warm_iters, newton_steps, first_iters, ready)
    for first in range(0, count, block):
        cols = slice(first, first + block)
        start = None if init is None else init[:, cols]
        codes[:, cols], unsolved = solver.solve(np.ascontiguousarray(dty[:, cols]), start)
        if unsolved[1].size:
            x0, which = unsolved
            fallback = _fista_block(
                gram, lip, dty[:, cols][:, which], alpha, max_iter, tol, polish_every, newton_steps, rank, x0
            )
            codes[:, first + which] = fallback
    return codes


class _BlockSolver:
    """Rounds of float32 FISTA and float64 Newton for one block of signals (see :func:`fista_lasso`)."""

    def __init__(
        self,
        gram: np.ndarray,
        lip: float,
        rank: int,
        alpha: float,
        warm_iters: int,
        max_warm: int,
        newton_steps: int,
        first_iters: int,
        ready: int,
    ) -> None:
        self.gram = gram
        self.descent = (np.eye(gram.shape[0]) - gram / lip).astype(np.float32)
        self.lip, self.rank, self.alpha = lip, rank, alpha
        self.warm_iters, self.max_warm, self.newton_steps = warm_iters, max_warm, newton_steps
        self.first_iters, self.ready = first_iters, ready

    def solve(self, dty: np.ndarray, init: np.ndarray | None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Codes (K, S) for B = ``dty`` (K, S), and (last iterate (K, U), column indices (U,)) of the unsolved.

        A signal tries Newton once its float32 support has been stable for ``ready`` iterations (all
        do once ``max_warm`` iterations are spent); after a failure it waits for another stable stretch.
        """
        out = np.zeros_like(dty)
        live = np.arange(dty.shape[1])
        b, b32 = dty, (dty / self.lip).astype(np.float32)
        x = np.zeros_like(b32) if init is None else np.array(init, dtype=np.float32)
        count = b.shape[1]
        state = (x, x.copy(), np.ones(count, dtype=np.float32), np.ones(count, dtype=bool))
        # From a warm start a few iterations settle the support; a Newton try on the stale one would
        # often solve a much larger system, and fail.
        spent = self.first_iters if init is None else self.warm_iters
        state = _fista32_steps(self.descent, b32, state, self.alpha / self.lip, spent, self.ready)
        while True:
            last = spent >= self.max_warm
            cand = np.flatnonzero(state[3]) if not last else np.arange(live.size)
            if cand.size:
                exact, ok = _newton(self.gram, b[:, cand], state[0][:, cand], self.alpha, self.newton_steps, self.rank)
                out[:, live[cand[ok]]] = exact[:, ok]
                keep = np.ones(live.size, dtype=bool)
                keep[cand[ok]] = False
                live, b, b32 = live[keep], b[:, keep], b32[:, keep]
                state = tuple(v[..., keep] for v in state)
            if live.size == 0 or last:
                return out, (state[0].astype(np.float64), live)
            state = _fista32_steps(self.descent, b32, state, self.alpha / self.lip, self.warm_iters, self.ready)
            spent += self.warm_iters


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
    x0: np.ndarray,
) -> np.ndarray:
    """float64 FISTA with restart from ``x0`` (K, S), polished every ``polish_every`` iterations by Newton."""
    out = np.zeros_like(dty)
    live = np.arange(dty.shape[1])
    b = dty
    x = np.array(x0, dtype=np.float64)
    z = x.copy()
    t = np.ones(b.shape[1])
    step, thr = 1.0 / lip, alpha / lip
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
                exact, ok = _newton(gram, b[:, cand], x[:, cand], alpha, newton_steps, rank)
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
