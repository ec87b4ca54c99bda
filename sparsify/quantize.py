"""Value quantisation on numpy arrays: bit packing, round-to-nearest integers per group, 1-D k-means.

Pure functions, no I/O. Shapes: a value array is viewed as a matrix (rows, cols) -- a 1-D array is one
row -- and each row is cut into groups of ``group`` consecutive values (the last one may be shorter;
``group=0``: the whole row is one group). Every group has its own scale (and zero point when
asymmetric), stored as float16 where that loses nothing that matters (finite, nonzero where the
float64 scale is nonzero), else float32. Quantising uses the *stored* scale, so decoding reproduces
the encoder's reconstruction exactly.

Integer codes are unsigned: symmetric b-bit codes are ``q + 2**(b-1)`` for q in [-(2**(b-1) - 1),
2**(b-1) - 1] (the most negative code is unused, so zero is exact and the range is symmetric);
asymmetric codes are in [0, 2**b - 1] with an integer zero point per group.

>>> codes = np.array([1, 2, 3, 0, 7], np.uint8)
>>> unpack_bits(pack_bits(codes, 3), 3, 5).tolist()
[1, 2, 3, 0, 7]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsify.errors import CorruptArchiveError
from sparsify.reproducible import log2

_F16_MAX = float(np.finfo(np.float16).max)
_F16_TINY = float(np.finfo(np.float16).smallest_normal)
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).smallest_normal)


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take when packed."""
    return (count * bits + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """``codes`` (1-D unsigned, each < 2**bits, 1 <= bits <= 8) packed into bytes, most significant bit
    first (code k occupies bits [k*bits, (k+1)*bits) of the big-endian bit stream)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return codes.copy()
    if bits == 4:
        padded = np.zeros(codes.size + (codes.size & 1), dtype=np.uint8)
        padded[: codes.size] = codes
        return (padded[0::2] << 4) | padded[1::2]
    planes = np.unpackbits(codes[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(planes.reshape(-1))


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` uint8 codes (CorruptArchiveError when sizes disagree)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != packed_nbytes(count, bits):
        raise CorruptArchiveError(f"{packed.size} packed bytes cannot hold exactly {count} {bits}-bit codes")
    if bits == 8:
        return packed.copy()
    if bits == 4:
        out = np.empty(2 * packed.size, dtype=np.uint8)
        out[0::2] = packed >> 4
        out[1::2] = packed & 0x0F
        return out[:count]
    stream = np.unpackbits(packed, count=count * bits).reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    return (stream * weights).sum(axis=1, dtype=np.uint8)


def as_rows(values: np.ndarray) -> np.ndarray:
    """The (rows, cols) view used for grouping: 2-D arrays as they are, 1-D as one row, N-D as
    ``shape[0] x rest``."""
    if values.ndim == 2:
        return values
    if values.ndim <= 1:
        return values.reshape(1, -1)
    return values.reshape(values.shape[0], -1)


def group_layout(shape: tuple[int, int], group: int) -> tuple[int, int]:
    """(groups per row, group width) for a (rows, cols) matrix; group 0 or >= cols: one group per row."""
    cols = shape[1]
    width = cols if group <= 0 or group >= cols else group
    return (-(-cols // width) if width else 0, width)


def _grouped(matrix: np.ndarray, width: int, fill: float) -> np.ndarray:
    """(rows, groups, width) float64 view of ``matrix``, the last group padded with ``fill``."""
    rows, cols = matrix.shape
    groups = -(-cols // width) if width else 0
    padded = np.full((rows, groups * width), fill, dtype=np.float64)
    padded[:, :cols] = matrix
    return padded.reshape(rows, groups, width)


def storable_scale(scale: np.ndarray, round_up: bool = False) -> np.ndarray:
    """``scale`` (float64, >= 0) as float16 when every value survives the cast usefully, else float32,
    else float64 (scales beyond float32's range). ``round_up``: never below ``scale`` (asymmetric codes
    need a step at least as large as asked, or the top value's code would be clipped)."""
    nonzero = scale[scale > 0]
    if nonzero.size == 0 or (nonzero.max() <= _F16_MAX / 2 and nonzero.min() >= _F16_TINY):
        dtype = np.float16
    elif nonzero.max() <= _F32_MAX / 2 and nonzero.min() >= _F32_TINY:
        dtype = np.float32
    else:
        return scale.astype(np.float64)
    stored = scale.astype(dtype)
    if round_up:
        low = stored.astype(np.float64) < scale
        stored[low] = np.nextafter(stored[low], dtype(np.inf))
    return stored


@dataclass
class Quantized:
    """Integer codes of a value array and what decodes them.

    codes:  uint8 codes, shape (rows, cols) of :func:`as_rows` (not yet bit-packed).
    scale:  (rows, groups) float16/float32 step sizes.
    zero:   (rows, groups) uint8 zero points (asymmetric) or None (symmetric).
    """

    codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None


def quantize(values: np.ndarray, bits: int, group: int, symmetric: bool) -> Quantized:
    """Round-to-nearest quantisation of finite ``values`` (any shape) to ``bits`` (2..8) per group."""
    matrix = as_rows(np.asarray(values, dtype=np.float64))
    _, width = group_layout(matrix.shape, group)
    if symmetric:
        half = (1 << (bits - 1)) - 1
        grouped = _grouped(matrix, width, 0.0)
        scale = storable_scale(np.max(np.abs(grouped), axis=2, initial=0.0) / half)
        step = scale.astype(np.float64)[..., None]
        q = np.rint(np.divide(grouped, step, out=np.zeros_like(grouped), where=step > 0))
        codes = (np.clip(q, -half, half) + (half + 1)).astype(np.uint8)
        zero = None
    else:
        top = (1 << bits) - 1
        low = np.min(_grouped(matrix, width, np.inf), axis=2, initial=np.inf)
        high = np.max(_grouped(matrix, width, -np.inf), axis=2, initial=-np.inf)
        low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)  # zero stays exactly representable
        scale = storable_scale((high - low) / top, round_up=True)
        step64 = scale.astype(np.float64)
        zero = np.clip(np.rint(np.divide(-low, step64, out=np.zeros_like(low), where=step64 > 0)), 0, top)
        zero = zero.astype(np.uint8)
        grouped = _grouped(matrix, width, 0.0)
        step = step64[..., None]
        q = np.rint(np.divide(grouped, step, out=np.zeros_like(grouped), where=step > 0)) + zero[..., None]
        codes = np.clip(q, 0, top).astype(np.uint8)
    rows, cols = matrix.shape
    return Quantized(codes.reshape(rows, codes.shape[1] * codes.shape[2])[:, :cols], scale, zero)


def dequantize(quantized: Quantized, bits: int, group: int) -> np.ndarray:
    """The float64 (rows, cols) values that ``quantized`` stands for."""
    codes = quantized.codes
    rows, cols = codes.shape
    _, width = group_layout((rows, cols), group)
    offset = (
        np.full(quantized.scale.shape, 1 << (bits - 1), dtype=np.float64)
        if quantized.zero is None
        else quantized.zero.astype(np.float64)
    )
    grouped = _grouped(codes.astype(np.float64), width, 0.0) - offset[..., None]
    values = grouped * quantized.scale.astype(np.float64)[..., None]
    return values.reshape(rows, grouped.shape[1] * grouped.shape[2])[:, :cols]


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 1000) -> np.ndarray:
    """Centroids (float64, ascending, at most ``k``) of 1-D k-means on finite ``values``.

    Linear initialisation between min and max (Han et al., Deep Compression, found it best for weight
    sharing), then Lloyd iterations until nothing moves (at most ``iterations``); on sorted values a
    Lloyd step is a ``searchsorted`` of the midpoints and segment sums from one cumulative sum, so each
    iteration is O(k log n) and running to convergence is cheap. Deterministic; empty clusters keep
    their previous centroid.
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if ordered.size == 0:
        return np.zeros(1)
    distinct = np.unique(ordered)
    if distinct.size <= k:
        return distinct
    centroids = np.linspace(ordered[0], ordered[-1], k)
    prefix = np.concatenate(([0.0], np.cumsum(ordered)))
    for _ in range(iterations):
        cuts = np.searchsorted(ordered, (centroids[:-1] + centroids[1:]) / 2, side="right")
        bounds = np.concatenate(([0], cuts, [ordered.size]))
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return np.unique(centroids)


def nearest_centroid(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (uint8) of the nearest of the ascending ``centroids`` for every value (flattened)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if centroids.size == 1:
        return np.zeros(flat.size, dtype=np.uint8)
    # the midpoint of two adjacent floats can round up to the upper one: keep it below, so that the upper
    # centroid's own value maps to it
    bounds = np.minimum((centroids[:-1] + centroids[1:]) / 2, np.nextafter(centroids[1:], -np.inf))
    return np.searchsorted(bounds, flat, side="left").astype(np.uint8)


def bits_for(levels: int) -> int:
    """Bits per code for ``levels`` distinct codes (at least 1)."""
    return max(1, int(levels - 1).bit_length())


STEP_SHIFT_LIMIT = 16
"""The largest step shift, in quarter octaves: a weighted step is within 2**±4 of the tensor's."""
# 2**(k/4) for k = 0..3, as exact constants (libm's pow may differ between CPUs)
_QUARTER_OCTAVES = np.array([1.0, 1.189207115002721, 1.4142135623730951, 1.6817928305074290])


def step_shifts(importance: np.ndarray) -> np.ndarray | None:
    """Quarter-octave step shifts (int8, within +-:data:`STEP_SHIFT_LIMIT`) for values of the given
    importance (1-D, finite, >= 0): k_i = round(-2 log2 a_i) less the median of the k, so that value
    i's step is the tensor's step times :func:`step_multipliers` (k_i), i.e. proportional to
    a_i^(-1/2) -- the steps that minimise Σ a ΔW² at a given entropy of the codes (high-resolution
    theory: each value's weighted error a d²/12 the same). Zero importance: the coarsest step.
    None when every shift is 0 (the uniform quantiser)."""
    a = np.asarray(importance, dtype=np.float64).reshape(-1)
    positive = a > 0
    shifts = np.full(a.shape, STEP_SHIFT_LIMIT, dtype=np.int64)
    if positive.any():
        raw = np.rint(-2.0 * log2(a[positive])).astype(np.int64)  # log2: the same on every machine
        shifts[positive] = raw - np.sort(raw)[raw.size // 2]
    shifts = np.clip(shifts, -STEP_SHIFT_LIMIT, STEP_SHIFT_LIMIT)
    return shifts.astype(np.int8) if shifts.any() else None


def step_multipliers(shifts: np.ndarray) -> np.ndarray:
    """2**(k/4) for integer shifts k (float64, exact: a constant per quarter times a power of two)."""
    k = np.asarray(shifts, dtype=np.int64)
    return np.ldexp(_QUARTER_OCTAVES[k & 3], k >> 2)


def step_matrix(step: float, shape: tuple[int, int], rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
    """The (m, n) steps of a weighted uniform quantiser, float64: step x 2**(rows_i / 4) x 2**(cols_j / 4)
    (broadcastable; a missing shift vector is 0)."""
    row_steps = step * (np.ones(1) if rows is None else step_multipliers(rows))
    col_factors = np.ones(1) if cols is None else step_multipliers(cols)
    return np.broadcast_to(row_steps.reshape(-1, 1) * col_factors.reshape(1, -1), shape)


def _order(shifts: np.ndarray | None, count: int) -> np.ndarray:
    """The positions sorted by shift (stable: ties keep their order), the identity without shifts."""
    if shifts is None:
        return np.arange(count)
    return np.argsort(np.asarray(shifts, dtype=np.int64), kind="stable")


def arrange_codes(codes: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
    """A weighted quantiser's (m, n) codes in storage order: rows sorted by their shift, columns by
    theirs, and column after column where there are column shifts -- so that the codes of one step
    lie together and a byte coder's blocks each see codes of one distribution, not their mixture."""
    m, n = codes.shape
    arranged = codes[_order(rows, m)][:, _order(cols, n)]
    return np.ascontiguousarray(arranged.T if cols is not None else arranged)


def restore_codes(
    stored: np.ndarray, shape: tuple[int, int], rows: np.ndarray | None, cols: np.ndarray | None
) -> np.ndarray:
    """Inverse of :func:`arrange_codes`: the (m, n) codes from their ``m * n`` stored values."""
    m, n = shape
    arranged = stored.reshape(n, m).T if cols is not None else stored.reshape(m, n)
    return arranged[np.argsort(_order(rows, m))][:, np.argsort(_order(cols, n))]


def zigzag(codes: np.ndarray) -> np.ndarray:
    """Signed integer codes (as floats or ints) as non-negative int64: 0, -1, 1, -2, 2 -> 0, 1, 2, 3, 4."""
    q = np.asarray(codes).astype(np.int64)
    return np.where(q < 0, -2 * q - 1, 2 * q)


def unzigzag(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag` (int64)."""
    z = np.asarray(codes).astype(np.int64)
    return (z >> 1) ^ -(z & 1)
