"""quant: round-to-nearest quantisation of the whole matrix (RTN), or k-means weight sharing.

Budgets (exactly one):

* ``bits=b`` (2..8) -- b-bit integers with a float16 scale per group of ``group`` values along each
  row (default: one scale per row for 8 bits, i.e. per output channel; groups of 128 below 8 bits),
  symmetric by default, asymmetric (integer zero point per group) with ``symmetric=false``;
* ``codebook=k`` (2..256) -- k shared values found by 1-D k-means (Deep Compression's weight sharing)
  and a ceil(log2 k)-bit index per weight;
* ``max_error=e`` or ``step=d`` -- a uniform quantiser with one step d for the whole tensor (the
  largest step whose relative error is <= e), codes q = round(w / d) stored as the narrowest signed
  integers and left to the byte coder (``+zstd``) to entropy-code: entropy-coded scalar
  quantisation, which at a given error needs fewer bits than fixed-width codes (one step for all
  weights is also what minimises the squared error for a given entropy). With ``weighted=true``
  (format 3.2) the step of row i, column j is d x 2**((r_i + c_j) / 4), the integer shifts r and c
  set by the tensor's importance (``--importance``, :func:`sparsify.quantize.step_shifts`: steps
  proportional to a^(-1/2), what minimises the importance-weighted error Σ a ΔW² for a given entropy)
  and stored beside the codes. With ``feedback=true`` (format 3.3; ``step`` only) the codes are
  chosen column after column, each column's rounding error fed to the columns after it by the input
  moments of the tensor's importance (``NAME:inputs``; :mod:`sparsify.feedback`, GPTQ): the layer's
  output error, not the weights', is what is kept small (with ``weighted=true`` too, the columns'
  steps then follow V_jj² of the feedback factor, :meth:`sparsify.importance.TensorImportance.
  step_shifts`). The parts and their decoding are those of the uniform (or weighted) quantiser:
  only the encoder differs.

Parts: ``q``, ``scale`` (and ``zero``) as in :func:`sparsify.methods.values.encode_int`; or
``codebook`` and ``index``; or ``q`` (2- or 4-bit fields packed into bytes, or I8/I16/I32) and ``step``
(one float64), and with ``weighted=true`` ``row_shift`` (m,) and ``column_shift`` (n,), I8, each
only where not all 0, the codes then in the order of :func:`sparsify.quantize.arrange_codes` and,
unless packed, zigzag-coded as U8/U16/U32. Scales and zero points are stored and counted. Non-finite entries cannot be
quantised: they are coded as 0 would be (the nearest level to 0; the report's error shows it); use
``threshold`` or ``keep`` for such tensors.

This is the baseline that practitioners use (int8 per channel, int4 in groups of 128); combine it
with the others additively, e.g. ``svd:rank=8+quant:bits=4`` quantises the residual of a low-rank part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sparsify.errors import CorruptArchiveError, UsageError
from sparsify.feedback import quantise_with_feedback
from sparsify.methods.base import VIEW, EncodeContext, Method, StageOutput
from sparsify.methods.values import decode_codebook, decode_int, encode_codebook, encode_int
from sparsify.params import Param
from sparsify.quantize import arrange_codes, pack_bits, restore_codes, step_matrix, unpack_bits, unzigzag, zigzag


class Quant(Method):
    name = "quant"
    summary = "round-to-nearest integers per channel or group (RTN), or a k-means codebook, for every weight"
    params = (
        Param("bits", int, "bits per weight (integer codes)", default=8, low=2, high=8, budget=True),
        Param("codebook", int, "k shared values (k-means), ceil(log2 k) bits per weight", low=2, high=256, budget=True),
        Param("max_error", float, "uniform step, the largest with relative error <= max_error", low=0.0, budget=True),
        Param("step", float, "uniform step (weights are multiples of it)", low=0.0, low_open=True, budget=True),
        Param("group", int, "values per scale along each row, 0: one per row [default: 0 for 8 bits, else 128]", low=0),
        Param("symmetric", bool, "symmetric codes (false: asymmetric with a zero point)", default=True),
        Param("weighted", bool, "step/max_error: steps per row and column by the importance (--importance)"),
        Param("feedback", bool, "step: each column's rounding error fed to the next ones by the input moments (GPTQ)"),
        VIEW,
    )
    example = "quant:bits=4,group=128"
    value_coded = False

    def encode(self, target: np.ndarray, ctx: EncodeContext) -> StageOutput:
        finite = np.where(np.isfinite(target), target, 0.0)
        if "codebook" in self.config:
            parts, resolved = encode_codebook(finite, self.config["codebook"], ctx.seed, ctx.coded_size)
        elif "step" in self.config or "max_error" in self.config:
            shifts = self._shifts(ctx)
            multipliers = step_multiplier_matrix(finite.shape, shifts)
            if self.config.get("feedback"):
                return self._encode_with_feedback(finite, ctx, shifts, multipliers, target.shape)
            step = self.config.get("step") or step_for_error(
                finite, ctx.error_budget_sq(self.config["max_error"]), multipliers
            )
            parts, resolved = encode_uniform(finite, step, ctx.coded_size, shifts)
        else:
            bits = self.config["bits"]
            group = self.config.get("group", 0 if bits == 8 else 128)
            parts, resolved = encode_int(finite, bits, group, self.config["symmetric"], ctx.coded_size)
        approximation = self.decode(parts, resolved, target.shape)
        return StageOutput(parts, resolved, approximation)

    def _encode_with_feedback(self, finite, ctx: EncodeContext, shifts, multipliers, shape) -> StageOutput:
        if "step" not in self.config:
            raise UsageError("quant: feedback=true takes a step (step=D), not a max_error")
        if ctx.feedback is None or ctx.feedback.shape != (shape[1], shape[1]):
            raise UsageError("quant: feedback=true takes the input moments of an importance file (NAME:inputs)")
        step = self.config["step"]
        steps = step if multipliers is None else step * multipliers
        made = None if ctx.prepared_feedback is None else ctx.prepared_feedback.lookup(finite, steps)
        codes, losses = made if made is not None else quantise_with_feedback(finite, steps, ctx.feedback)
        parts, resolved = encode_uniform(finite, step, ctx.coded_size, shifts, codes)
        return StageOutput(parts, resolved, self.decode(parts, resolved, shape), losses)

    def _shifts(self, ctx: EncodeContext) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not self.config.get("weighted"):
            return None, None
        if ctx.step_shifts is None:
            raise UsageError("quant: weighted=true takes its steps from an importance file (--importance FILE)")
        return ctx.step_shifts

    def decode(
        self, parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, int]
    ) -> np.ndarray:
        if "codebook" in parts:
            return decode_codebook(parts, resolved, shape)
        if "step" in parts:
            return decode_uniform(parts, resolved, shape)
        return decode_int(parts, resolved, shape)


def step_multiplier_matrix(
    shape: tuple[int, int], shifts: tuple[np.ndarray | None, np.ndarray | None]
) -> np.ndarray | None:
    """The (m, n) step multipliers 2**((row + column shift) / 4) of a weighted quantiser with these
    shifts (None: no shifts, every step the same)."""
    return None if shifts[0] is None and shifts[1] is None else step_matrix(1.0, shape, *shifts)


# Bisection steps of the step search (each one O(N)); the step is found to 2**-_STEP_SEARCH relative.
_STEP_SEARCH = 24


def _uniform_sq_error(values: np.ndarray, step: float, multipliers: np.ndarray | None = None) -> float:
    steps = step if multipliers is None else step * multipliers
    return float(np.sum(np.square(values - steps * np.rint(values / steps))))


def step_for_error(values: np.ndarray, budget_sq: float, multipliers: np.ndarray | None = None) -> float:
    """The largest step d (to ~1e-7 relative) with ||values - s * round(values / s)||^2 <= budget_sq,
    where s = d, or d x ``multipliers`` (broadcastable to ``values``: a weighted quantiser's steps).

    Starts from the high-resolution estimate d = sqrt(12 * budget / N) and bisects on log d between a
    step that meets the budget and one that breaks it. A step above 2 * max|values| rounds every
    value to zero, which bounds the search from above; from below it stops at 2**-60 * max|values|
    (both over the smallest and the largest multiplier).
    """
    peak = float(np.max(np.abs(values), initial=0.0))
    if peak == 0.0:
        return 1.0
    least, most = (1.0, 1.0) if multipliers is None else (float(np.min(multipliers)), float(np.max(multipliers)))
    total = float(np.sum(np.square(values)))
    if budget_sq >= total:
        return 4.0 * peak / least  # everything rounds to zero
    guess = float(np.sqrt(12.0 * max(budget_sq, 0.0) / values.size)) or peak * 2.0**-40
    low, high = guess, guess
    while _uniform_sq_error(values, low, multipliers) > budget_sq and low > peak * 2.0**-60 / most:
        low /= 2.0
    while _uniform_sq_error(values, high, multipliers) <= budget_sq and high < 4.0 * peak / least:
        high *= 2.0
    for _ in range(_STEP_SEARCH):
        middle = float(np.sqrt(low * high))
        if _uniform_sq_error(values, middle, multipliers) <= budget_sq:
            low = middle
        else:
            high = middle
    return low


def encode_uniform(
    values: np.ndarray,
    step: float,
    coded_size: Callable[[np.ndarray], int] | None = None,
    shifts: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    chosen: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parts ``q`` and ``step`` (float64 scalar) of the codes round(values / step); with ``shifts``
    (int8 per row (m,) and per column (n,), either None), round(values / steps) for the steps of
    :func:`sparsify.quantize.step_matrix`, and the shifts as parts ``row_shift`` and ``column_shift``.
    ``chosen``: the integer codes (float64, the shape of ``values``) chosen otherwise, e.g. with error
    feedback (:mod:`sparsify.feedback`), instead of round(values / steps).

    Codes are stored as the narrowest signed integers, or -- codes within +-1 -- as 2-bit fields
    (code + 1, four per byte), or -- within +-7 -- as 4-bit fields (code + 8, two per byte), whichever
    is smaller after the byte coders (``coded_size``; without it, the packed fields): packing several
    codes per byte lets a byte-wise entropy coder spend less than one bit on a code, which matters
    at coarse steps, where most codes are 0.
    """
    rows, cols = shifts
    weighted = rows is not None or cols is not None
    if chosen is None:
        q = np.rint(values / (step_matrix(step, values.shape, rows, cols) if weighted else step))
    else:
        q = chosen
    if weighted:
        q = arrange_codes(q, rows, cols)
    levels = int(np.max(np.abs(q), initial=0.0))
    resolved: dict[str, Any] = {"step": step, "levels": levels}
    dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64) if levels <= np.iinfo(t).max)
    extra = {name: v.astype(np.int8) for name, v in (("row_shift", rows), ("column_shift", cols)) if v is not None}
    # weighted: zigzag codes (0, -1, 1, -2, ... as 0, 1, 2, 3, ...), unsigned, so that where a few
    # fine columns need wide codes the high bytes of all the others are 0, not their sign
    codes = zigzag(q).astype(np.dtype(dtype).str.replace("i", "u")) if weighted else q.astype(dtype)
    plain = {"q": codes, "step": np.array([step], dtype=np.float64), **extra}
    for bits in _PACKED_BITS:
        if levels < 1 << (bits - 1):
            codes = pack_bits((q.reshape(-1) + (1 << (bits - 1))).astype(np.uint8), bits)
            if coded_size is None or coded_size(codes) <= coded_size(plain["q"]):
                return {**plain, "q": codes}, {**resolved, "bits": bits}
            break
    return plain, resolved


_PACKED_BITS = (2, 4)


def decode_uniform(parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """float64 (m, n) values of :func:`encode_uniform`'s parts (validated)."""
    q, step = parts.get("q"), parts["step"].reshape(-1)
    count = shape[0] * shape[1]
    if q is None or step.size != 1 or not np.isfinite(step[0]):
        raise CorruptArchiveError(f"uniform quantisation parts do not fit a {shape[0]}x{shape[1]} matrix")
    bits = resolved.get("bits")
    if bits is not None:
        if bits not in _PACKED_BITS:
            raise CorruptArchiveError(f"uniform quantisation: {bits}-bit codes are not a packed width")
        codes = unpack_bits(q, int(bits), count).astype(np.float64) - (1 << (int(bits) - 1))
    elif q.size == count and q.dtype.kind == "u" and ("row_shift" in parts or "column_shift" in parts):
        codes = unzigzag(q).astype(np.float64)
    elif q.size == count and q.dtype.kind == "i":
        codes = q.astype(np.float64)
    else:
        raise CorruptArchiveError(f"uniform quantisation parts do not fit a {shape[0]}x{shape[1]} matrix")
    if "row_shift" not in parts and "column_shift" not in parts:
        return codes.reshape(shape) * float(step[0])
    rows = _shift_part(parts, "row_shift", shape[0])
    cols = _shift_part(parts, "column_shift", shape[1])
    return restore_codes(codes, shape, rows, cols) * step_matrix(float(step[0]), shape, rows, cols)


def _shift_part(parts: Mapping[str, np.ndarray], name: str, count: int) -> np.ndarray | None:
    shift = parts.get(name)
    if shift is None:
        return None
    if shift.dtype != np.int8 or shift.size != count:
        raise CorruptArchiveError(f"uniform quantisation: {name} is not {count} int8 shifts")
    return shift.reshape(-1)
