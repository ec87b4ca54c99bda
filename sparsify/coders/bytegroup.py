"""Byte grouping: store the k-th byte of every element together (byte planes), so that the slowly
varying high bytes of floats (sign, exponent) form long, compressible runs. Pure reshapes.

>>> group_bytes(np.array([1, 2, 3, 4, 5, 6], np.uint8), 2).tolist()
[1, 3, 5, 2, 4, 6]
"""

from __future__ import annotations

import numpy as np


def group_bytes(data: np.ndarray, itemsize: int) -> np.ndarray:
    """``data`` (1-D uint8, n * itemsize bytes) with byte k of every element gathered in plane k."""
    return np.ascontiguousarray(data.reshape(-1, itemsize).T).reshape(-1)


def ungroup_bytes(data: np.ndarray, itemsize: int) -> np.ndarray:
    """Inverse of :func:`group_bytes`."""
    return np.ascontiguousarray(data.reshape(itemsize, -1).T).reshape(-1)
