"""keep: the tensor exactly as it is (lossless, bit-exact, any element type)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sparsify.methods.base import LosslessMethod


class Keep(LosslessMethod):
    """Stores the tensor's own bytes, so decoding returns it bit for bit.

    Works on every element type (complex, void, strings, packed F4/F6 ...); add ``+zstd`` to
    entropy-code the bytes.
    """

    name = "keep"
    summary = "the tensor as it is, bit-exact, any element type (lossless)"
    example = "keep+zstd"

    def store(self, array: np.ndarray) -> dict[str, np.ndarray]:
        return {"data": array.reshape(-1)}

    def restore(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        return parts["data"]
