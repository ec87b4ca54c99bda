"""threshold: magnitude pruning. Keep the entries with |w| > tau, store them sparse.

Budgets (exactly one):

* ``sparsity=s``  -- drop exactly round(s * N) of the N entries, the smallest in magnitude (ties broken
  by position, lower index dropped first);
* ``threshold=t`` -- keep |w| > t;
* ``max_error=e`` -- the largest tau whose relative error ||W - W_hat||_F / ||W||_F is <= e, found
  exactly from the sorted squared magnitudes: dropping the k smallest entries costs the sum of their
  squares, and tau may only sit between distinct magnitudes.

Non-finite entries (inf, nan) are always kept under ``threshold`` and ``max_error`` (they cannot be
approximated); under ``sparsity`` they are dropped last, after every finite entry. Kept values are
stored in the tensor's own type, so they are bit-exact copies; the parts are those of
:mod:`sparsify.sparse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sparsify import sparse
from sparsify.methods.base import VIEW, EncodeContext, Method, StageOutput
from sparsify.params import Param

# The search compares a running sum with the target; the report re-measures the error with a pairwise
# sum. This relative margin keeps the two on the same side of the bound.
_SUM_MARGIN = 1e-9


def mask_for_sparsity(magnitude: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask dropping exactly ``round(sparsity * N)`` smallest entries of ``magnitude`` (any shape).

    Ties at the cut are dropped lowest index first; non-finite magnitudes count as largest, so they
    go only when every finite entry has. O(N): a partition finds the cut value, not a full sort.
    """
    flat = np.where(np.isfinite(magnitude), magnitude, np.inf).reshape(-1)
    drop = int(round(sparsity * flat.size))
    if drop == 0:
        return np.ones(magnitude.shape, dtype=bool)
    cut = np.partition(flat, drop - 1)[drop - 1]
    keep = flat > cut
    ties = np.flatnonzero(flat == cut)
    below = flat.size - int(np.count_nonzero(keep)) - ties.size
    keep[ties[drop - below :]] = True
    return keep.reshape(magnitude.shape)


def squared_threshold_for_error(squares: np.ndarray, budget_sq: float) -> float:
    """The largest tau^2 such that dropping every finite entry with square <= tau^2 costs <= budget_sq.

    ``squares``: element squares (any shape, float64). Returns 0.0 when only exact zeros can go.
    """
    finite = np.sort(squares[np.isfinite(squares)], axis=None)
    if finite.size == 0:
        return 0.0
    cost = np.cumsum(finite)
    k = int(np.searchsorted(cost, budget_sq * (1 - _SUM_MARGIN), side="right"))
    if k == 0:
        return 0.0
    if k < finite.size and finite[k] == finite[k - 1]:
        # tau cannot split a group of equal magnitudes: stop below the whole group.
        k = int(np.searchsorted(finite, finite[k - 1], side="left"))
        if k == 0:
            return 0.0
    return float(finite[k - 1])


class Threshold(Method):
    name = "threshold"
    summary = "magnitude pruning: keep |w| > tau, stored as CSR or a bitmask"
    params = (
        Param("sparsity", float, "fraction of entries set to zero", low=0.0, high=1.0, budget=True),
        Param("threshold", float, "keep entries with |w| > threshold", low=0.0, budget=True),
        Param("max_error", float, "largest tau with relative Frobenius error <= max_error", low=0.0, budget=True),
        VIEW,
    )
    example = "threshold:max_error=0.05"

    def encode(self, target: np.ndarray, ctx: EncodeContext) -> StageOutput:
        squares = np.square(target)
        if "sparsity" in self.config:
            keep = mask_for_sparsity(squares, self.config["sparsity"])
            dropped = squares[~keep]
            tau = float(np.sqrt(dropped.max())) if dropped.size else 0.0
        elif "threshold" in self.config:
            tau = float(self.config["threshold"])
            keep = ~(squares <= tau * tau)  # nan compares False, so nan is kept
        else:
            tau_sq = squared_threshold_for_error(squares, ctx.error_budget_sq(self.config["max_error"]))
            keep = ~(squares <= tau_sq)
            tau = float(np.sqrt(tau_sq))
        values = target[keep].astype(ctx.value_dtype)
        parts = sparse.pack(keep, values, ctx.coded_size)
        approximation = np.zeros(target.shape, dtype=np.float64)
        approximation[keep] = values.astype(np.float64)
        resolved: dict[str, Any] = {
            "threshold": tau,
            "nnz": int(values.size),
            "density": float(values.size / target.size) if target.size else 0.0,
            "layout": sparse.layout_of(parts),
        }
        return StageOutput(parts, resolved, approximation)

    def decode(
        self, parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, int]
    ) -> np.ndarray:
        return sparse.unpack(parts, shape)
