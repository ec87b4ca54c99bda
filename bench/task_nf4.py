"""A bitsandbytes-style NF4 reference quantiser in numpy, for ``bench/task.py`` (not part of sparsify).

As ``bitsandbytes.functional.quantize_4bit(quant_type="nf4", blocksize=64)`` without double
quantisation: a tensor is flattened (row-major) and cut into blocks of ``BLOCK`` consecutive values
(the last one may be shorter); each block stores its absmax as float32 and every value as the 4-bit
index of the nearest of the 16 NF4 code values (``NF4``, bitsandbytes' table) to value / absmax;
dequantised, value = NF4[index] × absmax. Storage: 4 bits per value + 32 bits per block, 4.5 bits per
weight for whole blocks of 64.

>>> x = np.array([[0.5, -1.0, 0.0, 0.25]], np.float32)
>>> quantise(x)[0].tolist()
[[0.44070982933044434, -1.0, 0.0, 0.24611230194568634]]
"""

from __future__ import annotations

import numpy as np

BLOCK = 64
# bitsandbytes' NF4 code values (QLoRA, Dettmers et al. 2023), in index order
NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
_MIDPOINTS = (NF4[1:] + NF4[:-1]) / 2


def quantise(array: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, int]:
    """(dequantised array of ``array``'s shape and dtype, stored bits) for one float tensor."""
    flat = array.astype(np.float32).reshape(-1)
    blocks = -(-flat.size // block)
    padded = np.zeros(blocks * block, dtype=np.float32)
    padded[: flat.size] = flat
    grouped = padded.reshape(blocks, block)
    absmax = np.max(np.abs(grouped), axis=1, keepdims=True)  # stored as float32
    safe = np.where(absmax > 0, absmax, np.float32(1))
    index = np.searchsorted(_MIDPOINTS, grouped / safe)  # the nearest code value (ties: the lower one)
    restored = (NF4[index] * absmax).reshape(-1)[: flat.size]
    return restored.reshape(array.shape).astype(array.dtype), 4 * flat.size + 32 * blocks
