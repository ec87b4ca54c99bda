"""lasso: L1 sparse coding of the tensor's signals over a dictionary, stored as sparse codes.

For each signal y (a column of the matrix view, or with ``segment=N`` a piece of N consecutive values,
see :mod:`sparsify.signals`), of length L, the codes x solve

.. math:: \\min_x \\; \\tfrac12 \\lVert y - D x \\rVert_2^2 + \\alpha \\lVert x \\rVert_1 .

scikit-learn's ``Lasso`` minimises (1 / (2 n_samples)) ||y - X w||² + alpha_sk ||w||₁; with X = D and
n_samples = L the problems are the same when ``alpha_sk = alpha / L`` (``sparse_encode(algorithm=
"lasso_cd", alpha=alpha)`` does that division itself, so its alpha is this one).

Dictionaries (``dict``):

* ``identity`` -- x = soft_threshold(y, alpha); stored as a sparse component of the matrix;
* ``dct``      -- D the orthonormal DCT-II (``scipy.fft.dct(norm="ortho")``): x = soft_threshold(Dᵀy,
  alpha); only the codes are stored, the transform is implied by the config;
* ``learned``  -- D (L x ``atoms``) learned on the tensor by K-SVD (:mod:`sparsify.methods.ksvd`) and
  stored dense; the codes come from :func:`sparsify.lasso_solver.fista_lasso`, all signals at once (for
  segments the homotopy path, :func:`sparsify.lasso_solver.homotopy_lasso`; otherwise float32 FISTA,
  during an ``nnz`` / ``max_error`` search warm-started from the solution at the nearest alpha tried).

Budgets (exactly one): ``alpha``; ``nnz`` -- the smallest alpha whose mean nonzero count per signal is
<= nnz (exact from the sorted coefficients for orthonormal D, by bisection otherwise); ``max_error`` --
the largest alpha whose relative Frobenius error ||W - W_hat||_F / ||W||_F, after debiasing and
measured on the stored values, is <= max_error. After the support is chosen its values are refitted by
least squares (``debias``, on by default; for orthonormal D that is simply the unshrunk coefficients).

Codes (and a learned dictionary) are stored in the context's float type; codes as a sparse (signals x
atoms) matrix of :mod:`sparsify.sparse`, one row per signal. Non-finite entries are coded as zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sparsify import sparse
from sparsify.errors import CorruptArchiveError, UsageError
from sparsify.lasso_solver import bisect_alpha, fista_lasso, soft_threshold, solve_on_support
from sparsify.methods.base import VIEW, EncodeContext, Method, StageOutput
from sparsify.methods.threshold import squared_threshold_for_error
from sparsify.params import Param
from sparsify.reproducible import dct_matrix, sparse_matmul, sum_of_squares
from sparsify.signals import from_signals, to_signals

DICTIONARIES = ("identity", "dct", "learned")
# K-SVD rounds for dict=learned, and how often a max_error fit is retried when storing the values in
# the context's float type pushed the error past the bound.
_LEARN_ITERS = 10
_STORE_RETRIES = 6
# Relative margin between the searched error (sums in coefficient space) and the one measured later.
_SUM_MARGIN = 1e-9


def _dct(signals: np.ndarray, inverse: bool = False) -> np.ndarray:
    import scipy.fft

    if signals.size == 0:
        return np.array(signals, dtype=np.float64)
    transform = scipy.fft.idct if inverse else scipy.fft.dct
    return transform(signals, type=2, norm="ortho", axis=0)


def _inverse_dct(coefficients, length: int) -> np.ndarray:
    """The (length, S) signals of sparse (S, length) orthonormal DCT-II coefficients, summed by
    :func:`sparsify.reproducible.sparse_matmul` (the same on every machine). Only the DCT rows that
    some coefficient uses are built (the columns renumbered in the same order, so no sum changes)."""
    used, renumbered = np.unique(coefficients.indices, return_inverse=True)
    rows = dct_matrix(length, used)
    shape = (coefficients.shape[0], used.size)
    compact = type(coefficients)((coefficients.data, renumbered, coefficients.indptr), shape=shape)
    return sparse_matmul(compact, rows).T


def _error_sq(target: np.ndarray, approximation: np.ndarray) -> float:
    """||target - approximation||_F² over the target's finite entries."""
    diff = (target - approximation)[np.isfinite(target)]
    return sum_of_squares(diff)


def _largest_alpha_shrunk(coefficients: np.ndarray, budget_sq: float) -> float:
    """The largest alpha with sum(min(c², alpha²)) <= budget_sq: the error of soft thresholding by alpha
    under an orthonormal dictionary (every kept coefficient moves by alpha, every other is dropped)."""
    a = np.sort(np.abs(coefficients), axis=None)
    n = a.size
    if n == 0:
        return 0.0
    prefix = np.concatenate(([0.0], np.cumsum(a * a)))
    at_points = prefix[:-1] + a * a * (n - np.arange(n))  # error when alpha = a[k]
    budget = budget_sq * (1 - _SUM_MARGIN)
    j = int(np.searchsorted(at_points, budget, side="right"))
    if j == n:
        return float(a[-1])
    return float(np.sqrt(max(budget - prefix[j], 0.0) / (n - j)))


class _Orthonormal:
    """Codes under an orthonormal D (identity or DCT): everything is closed form in C = DᵀY."""

    def __init__(self, coefficients: np.ndarray, debias: bool) -> None:
        self.c = coefficients
        self.debias = debias

    def codes(self, alpha: float) -> np.ndarray:
        return np.where(np.abs(self.c) > alpha, self.c, 0.0) if self.debias else soft_threshold(self.c, alpha)

    def alpha_for_nnz(self, allowed: int) -> float:
        mags = np.abs(self.c).reshape(-1)
        if allowed >= np.count_nonzero(mags):
            return 0.0
        return float(np.partition(mags, mags.size - 1 - allowed)[mags.size - 1 - allowed])

    def alpha_for_error(self, budget_sq: float) -> float:
        if self.debias:
            return float(np.sqrt(squared_threshold_for_error(np.square(self.c), budget_sq)))
        return _largest_alpha_shrunk(self.c, budget_sq)


class _General:
    """Codes under a general dictionary D (L, K): FISTA on G = DᵀD, B = DᵀY, batched debiasing."""

    def __init__(self, dictionary: np.ndarray, signals: np.ndarray, debias: bool) -> None:
        self.d = dictionary
        self.y = signals
        self.gram = dictionary.T @ dictionary
        self.dty = dictionary.T @ signals
        self.debias = debias
        self._cache: dict[float, np.ndarray] = {}
        self._lasso: dict[float, np.ndarray] = {}  # un-debiased solutions: warm starts for the alpha search

    def _nearest_solution(self, alpha: float) -> np.ndarray | None:
        """The lasso solution already computed at the alpha nearest to ``alpha`` (None if there is none)."""
        if not self._lasso:
            return None
        return self._lasso[min(self._lasso, key=lambda a: abs(np.log(a / alpha)))]

    def codes(self, alpha: float) -> np.ndarray:
        if alpha in self._cache:
            return self._cache[alpha]
        if alpha == 0.0:
            # Any least-squares solution minimises the alpha = 0 objective: take the minimum-norm one.
            x = np.linalg.pinv(self.d) @ self.y
        else:
            x = fista_lasso(self.gram, self.dty, alpha, init=self._nearest_solution(alpha))
            self._lasso[alpha] = x
        if self.debias and alpha > 0:
            refit = solve_on_support(self.gram, self.dty, x != 0)
            # Least squares never fits worse; keep the lasso values where rounding says otherwise.
            worse = self._residual_sq(refit) > self._residual_sq(x)
            x = np.where(worse, x, refit)
        self._cache[alpha] = x
        return x

    def _residual_sq(self, codes: np.ndarray) -> np.ndarray:
        return np.square(self.y - self.d @ codes).sum(axis=0)

    def alpha_max(self) -> float:
        return float(np.abs(self.dty).max(initial=0.0))

    def alpha_for_nnz(self, allowed: int) -> float:
        return bisect_alpha(lambda a: np.count_nonzero(self.codes(a)) <= allowed, self.alpha_max(), ok_when_small=False)

    def alpha_for_error(self, budget_sq: float) -> float:
        budget = budget_sq * (1 - _SUM_MARGIN)
        return bisect_alpha(
            lambda a: self._residual_sq(self.codes(a)).sum() <= budget, self.alpha_max(), ok_when_small=True
        )


class Lasso(Method):
    name = "lasso"
    summary = "L1 sparse coding per signal, min ½‖y − Dx‖² + α‖x‖₁, D identity, DCT or learned (K-SVD)"
    params = (
        Param("alpha", float, "L1 weight α (scikit-learn's Lasso alpha = α / signal length)", low=0.0, budget=True),
        Param("nnz", float, "mean nonzero codes per signal: the smallest α whose mean is <= nnz", low=0.0, budget=True),
        Param(
            "max_error",
            float,
            "largest α with relative Frobenius error <= max_error (after debiasing, on stored values)",
            low=0.0,
            budget=True,
        ),
        Param(
            "dict",
            str,
            "dictionary D: identity (soft threshold), dct (orthonormal DCT-II), learned (K-SVD, stored)",
            default="identity",
            choices=DICTIONARIES,
        ),
        Param(
            "atoms",
            int,
            "atoms of a learned dictionary [default: min(2 x signal length, signals / 4)]; at most the signals",
            low=1,
        ),
        Param("segment", int, "code pieces of this many consecutive values instead of columns", low=1, high=1 << 16),
        Param("debias", bool, "refit the chosen codes by least squares on their support", default=True),
        VIEW,
    )
    example = "lasso:max_error=0.05,dict=dct,segment=64"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if "atoms" in config and config.get("dict", "identity") != "learned":
            raise UsageError("lasso: atoms applies only to dict=learned (dict: one of " + ", ".join(DICTIONARIES) + ")")

    @property
    def _kind(self) -> str:
        return self.config.get("dict", "identity")

    def _signal_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(L, S): signal length and number of signals of an (m, n) matrix."""
        m, n = shape
        segment = self.config.get("segment")
        if segment is None:
            return m, n
        return segment, -(-(m * n) // segment)

    def encode(self, target: np.ndarray, ctx: EncodeContext) -> StageOutput:
        signals = to_signals(np.where(np.isfinite(target), target, 0.0), self.config.get("segment"))
        out = self._encode_with(self._kind, target, signals, ctx)
        if (
            self._kind == "learned"
            and "max_error" in self.config
            and _error_sq(target, out.approximation) > ctx.error_budget_sq(self.config["max_error"])
        ):
            # Even alpha = 0 cannot reach the bound with the learned atoms: code the values themselves.
            out = self._encode_with("identity", target, signals, ctx)
            out.resolved["fallback"] = "the learned dictionary cannot reach max_error; coded with dict=identity"
        return out

    def _encode_with(self, kind: str, target: np.ndarray, signals: np.ndarray, ctx: EncodeContext) -> StageOutput:
        """Code ``signals`` (L, S) of ``target`` with dictionary ``kind`` under this stage's budget."""
        shape = target.shape
        length, count = signals.shape
        debias = bool(self.config.get("debias", True))
        dictionary = None
        if kind == "learned":
            dictionary = self._learn(signals, ctx)
            coder: _Orthonormal | _General = _General(dictionary.astype(np.float64), signals, debias)
        else:
            coder = _Orthonormal(signals if kind == "identity" else _dct(signals), debias)

        def store(alpha: float) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray]:
            codes = coder.codes(alpha)
            parts = self._pack(kind, codes, dictionary, ctx, shape)
            total = int(np.count_nonzero(codes))
            resolved: dict[str, Any] = {
                "dict": kind,
                "alpha": float(alpha),
                "nnz": total,
                "mean_nnz": total / count if count else 0.0,
                "signal_length": int(length),
                "signals": int(count),
                "atoms": int(codes.shape[0]),
                "layout": sparse.layout_of(parts),
            }
            return parts, resolved, self.decode(parts, resolved, shape)

        if "alpha" in self.config:
            parts, resolved, approximation = store(float(self.config["alpha"]))
        elif "nnz" in self.config:
            allowed = int(np.floor(self.config["nnz"] * count + 1e-9))
            parts, resolved, approximation = store(coder.alpha_for_nnz(allowed))
        else:
            budget_sq = ctx.error_budget_sq(self.config["max_error"])
            goal = budget_sq
            for _ in range(_STORE_RETRIES):
                parts, resolved, approximation = store(coder.alpha_for_error(goal))
                error = _error_sq(target, approximation)
                if error <= budget_sq or resolved["alpha"] == 0.0:
                    break
                goal *= 0.98 * budget_sq / error  # rounding on storage overshot: aim lower
        return StageOutput(parts, resolved, approximation)

    def _learn(self, signals: np.ndarray, ctx: EncodeContext) -> np.ndarray:
        """A K-SVD dictionary (L, atoms) learned on the signals, in the stored float type."""
        from sparsify.methods.ksvd import learn_dictionary

        length, count = signals.shape
        # A dictionary as large as the signal set would just store the signals: by default keep it to a
        # quarter of them.
        atoms = min(int(self.config.get("atoms") or max(1, min(2 * length, count // 4))), count)
        nnz = self.config.get("nnz")
        learn_nnz = max(1, min(atoms, length, round(nnz) if nnz is not None else max(1, length // 8)))
        dictionary = learn_dictionary(signals, atoms, learn_nnz, _LEARN_ITERS, ctx.seed, sample=None)
        return np.asarray(dictionary, dtype=np.float64).astype(ctx.float_dtype)

    def _pack(
        self, kind: str, codes: np.ndarray, dictionary: np.ndarray | None, ctx: EncodeContext, shape: tuple[int, int]
    ) -> dict[str, np.ndarray]:
        if kind == "identity":
            matrix = from_signals(codes, shape, self.config.get("segment"))
            keep = matrix != 0
            return sparse.pack(keep, matrix[keep].astype(ctx.float_dtype), ctx.coded_size)
        rows = codes.T  # one row per signal
        keep = rows != 0
        parts = sparse.pack(keep, rows[keep].astype(ctx.float_dtype), ctx.coded_size)
        if dictionary is not None:
            parts["dictionary"] = dictionary
        return parts

    def decode(
        self, parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, int]
    ) -> np.ndarray:
        # resolved["dict"] differs from the config's when a learned dictionary fell back to identity.
        kind = resolved.get("dict", self._kind)
        if kind == "identity":
            return sparse.unpack(parts, shape)
        length, count = self._signal_shape(shape)
        coded = {k: v for k, v in parts.items() if k != "dictionary"}
        # products summed by sparsify.reproducible, not BLAS or FFT: the same decode on every machine
        if kind == "dct":
            signals = _inverse_dct(sparse.unpack_csr(coded, (count, length)), length)
        else:
            if "dictionary" not in parts:
                raise CorruptArchiveError("lasso: dict=learned but no dictionary part is stored")
            dictionary = np.asarray(parts["dictionary"]).astype(np.float64)
            if dictionary.ndim != 2 or dictionary.shape[0] != length:
                raise CorruptArchiveError(
                    f"lasso: dictionary of shape {dictionary.shape} does not fit signals of length {length}"
                )
            signals = sparse_matmul(sparse.unpack_csr(coded, (count, dictionary.shape[1])), dictionary.T).T
        return np.ascontiguousarray(from_signals(signals, shape, self.config.get("segment")), dtype=np.float64)
