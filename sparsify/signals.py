"""Signals for sparse coding: the columns of a matrix, or fixed-length segments of it.

Lasso and K-SVD code *signals* y (vectors of length L) as D x. A matrix W of shape (m, n) gives:

* ``segment=None``: its n columns, each of length m  -> Y of shape (m, n);
* ``segment=N``:    its values in row-major order cut into consecutive pieces of N (the last one
  zero-padded) -> Y of shape (N, ceil(m * n / N)).

Both functions are pure reshapes (no copies beyond the padding).
"""

from __future__ import annotations

import numpy as np


def to_signals(matrix: np.ndarray, segment: int | None) -> np.ndarray:
    """Signals as the columns of an (L, S) array (see the module docstring)."""
    if segment is None:
        return matrix
    flat = matrix.reshape(-1)
    count = -(-flat.size // segment)
    padded = np.zeros(count * segment, dtype=matrix.dtype)
    padded[: flat.size] = flat
    return padded.reshape(count, segment).T


def from_signals(signals: np.ndarray, shape: tuple[int, int], segment: int | None) -> np.ndarray:
    """The (m, n) matrix back from its (L, S) signals (padding dropped)."""
    if segment is None:
        return signals.reshape(shape)
    m, n = shape
    return np.ascontiguousarray(signals.T).reshape(-1)[: m * n].reshape(shape)
