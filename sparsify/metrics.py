"""Error metrics of DESIGN 5, in float64, between a tensor and what the archive decodes it to.

For a tensor W and its decoded Ŵ (both cast to float64, same shape), with D = Ŵ - W:

* ``rel_error``     = ||D||_F / ||W||_F  (0 when both are 0, inf when only W is)
* ``max_abs_error`` = max |D|
* ``snr_db``        = 10 log10(||W||² / ||D||²)  (None when D = 0: infinite)
* ``cosine``        = <W, Ŵ> / (||W|| ||Ŵ||)      (1 when both are 0)
* ``sq_error``, ``sq_norm`` = ||D||², ||W||²  (the totals' weighted error needs them)

Entries where W and Ŵ are equal (or both NaN) count as no error, so preserved inf/nan do not poison the
sums; norms run over finite entries. Every sum is taken by :mod:`sparsify.reproducible`, so the figures
(which the manifest records) are the same on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from sparsify.reproducible import LOG10_2, inner, log2, sum_of_squares


def as_float64(array: np.ndarray) -> np.ndarray:
    """Any real array (ml_dtypes floats, ints, bools included) as float64."""
    with np.errstate(all="ignore"):
        return np.asarray(array).astype(np.float64, copy=False)


def finite_sq_norm(w: np.ndarray) -> float:
    """||w||_F^2 over the finite entries of a real array (inf if it overflows float64)."""
    return sum_of_squares(w, finite_only=True)


class Reference:
    """An original tensor's float64 values and norm, computed once for many comparisons (the rate
    controller measures dozens of candidates against one tensor)."""

    @np.errstate(all="ignore")
    def __init__(self, original: np.ndarray) -> None:
        self.original = np.asarray(original)
        self.w = as_float64(original).reshape(-1)
        finite = np.isfinite(self.w)
        self.all_finite = bool(finite.all())
        self.finite_w = self.w if self.all_finite else np.where(finite, self.w, 0.0)
        self.sq_norm = sum_of_squares(self.finite_w)


@np.errstate(all="ignore")
def tensor_metrics(original: np.ndarray, decoded: np.ndarray, reference: Reference | None = None) -> dict[str, Any]:
    """The metrics of the module docstring for a real tensor and its decoded form (``reference``:
    the original's :class:`Reference`, when the caller has one)."""
    ref = reference if reference is not None else Reference(original)
    w, sq_norm, finite_w = ref.w, ref.sq_norm, ref.finite_w
    w_hat = as_float64(decoded).reshape(-1)
    if ref.all_finite and np.isfinite(w_hat).all():  # the common case, in fewer passes
        diff = w_hat - w
        finite_hat = w_hat
    else:
        same = (w == w_hat) | (np.isnan(w) & np.isnan(w_hat))
        diff = np.where(same, 0.0, w_hat - w)
        finite_hat = np.where(np.isfinite(w_hat), w_hat, 0.0)
    sq_error = sum_of_squares(diff)
    sq_norm_hat = sum_of_squares(finite_hat)
    return {
        "rel_error": _ratio_sqrt(sq_error, sq_norm),
        "max_abs_error": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "snr_db": _decibels(sq_norm / sq_error) if sq_error > 0 and sq_norm > 0 else None,
        "cosine": _cosine(inner(finite_w, finite_hat), sq_norm, sq_norm_hat),
        "sq_error": sq_error,
        "sq_norm": sq_norm,
        "exact": same_bytes(np.asarray(original), np.asarray(decoded)),
    }


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (NaN payloads and signed zeros included), without copies where the
    arrays are contiguous."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    x, y = np.ascontiguousarray(a).reshape(-1).view(np.uint8), np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    step = 1 << 22  # compared in blocks: no temporary the size of the tensor
    return all(np.array_equal(x[i : i + step], y[i : i + step]) for i in range(0, x.size, step))


def exact_metrics(original: np.ndarray | None) -> dict[str, Any]:
    """Metrics of a bit-exact round trip (``original`` None for types without a norm)."""
    sq_norm = finite_sq_norm(original) if original is not None else 0.0
    return {
        "rel_error": 0.0,
        "max_abs_error": 0.0,
        "snr_db": None,
        "cosine": 1.0,
        "sq_error": 0.0,
        "sq_norm": sq_norm,
        "exact": True,
    }


def weighted_rel_error(metrics: Iterable[Mapping[str, Any]]) -> float:
    """sqrt(Σ ||ΔW||² / Σ ||W||²) over tensors (a None from JSON stands for an overflowed inf)."""
    items = list(metrics)

    def total(key: str) -> float:
        return sum(math.inf if m[key] is None else m[key] for m in items)

    return _ratio_sqrt(total("sq_error"), total("sq_norm"))


def _decibels(ratio: float) -> float:
    """10 log10(ratio), by :func:`sparsify.reproducible.log2` (the manifest records it); inf stays inf."""
    if math.isinf(ratio):
        return ratio
    return float(10.0 * log2(ratio) * LOG10_2)


def _ratio_sqrt(num: float, den: float) -> float:
    if num == 0.0:
        return 0.0
    if den <= 0 or math.isinf(num):
        return math.inf
    return math.sqrt(num / den)


def _cosine(dot: float, sq_a: float, sq_b: float) -> float:
    if sq_a == 0.0 and sq_b == 0.0:
        return 1.0
    if sq_a == 0.0 or sq_b == 0.0:
        return 0.0
    return dot / math.sqrt(sq_a * sq_b)
