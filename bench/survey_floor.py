"""Codes below the scalar floor, as points of ``bench/methods_survey.py``: the reference quantiser's own
codes under context models, and trellis-coded quantisation (the coding itself: ``bench/survey_entropy.py``).

* :func:`code_points`: at every step the reference (``quant:max_error=E+zstd``) chose, the codes
  q = round(w / step) -- the very codes sparsify stores -- under each context model of
  :func:`survey_entropy.context_bits`, as ideal code lengths plus 64 bits for the step;
* :func:`tcq_points`: trellis-coded quantisation at Δ = step / 2 for the steps of ``TCQ_ERRORS`` (its
  union codebook has the step Δ, each of its two quantisers 2Δ, so its errors fall near the
  reference's), with λ = ``TCQ_LAMBDA`` (chosen once from λ in {0, 0.5, 1} on two of the matrices,
  then fixed): its codes stored as sparsify stores uniform codes (:func:`zstd_bits`: real bytes), and
  as ideal code lengths (order 0, and state x neighbour contexts).

The first point of each step also records the reference's codes re-counted by :func:`zstd_bits`, to
compare with the bytes sparsify stored for them (a check of the counting).

On matrices of at most ``CHECK_WEIGHTS`` weights the neighbour models are also run through the real
arithmetic coder (:func:`survey_entropy.coded_neighbours`): its bytes and whether decoding gave the
codes back are recorded beside the ideal length.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import survey_entropy as entropy
import survey_numpy as impl

from sparsify.codec import coded_bytes
from sparsify.methods.quant import encode_uniform

TCQ_ERRORS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.45)  # the reference steps at which TCQ runs (its Δ = step / 2)
TCQ_LAMBDA = 0.5
CHECK_WEIGHTS = 150_000  # matrices up to this size also run the real arithmetic coder (pure Python)


def code_points(matrix: np.ndarray, steps: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """The reference's own codes q = round(w / step) under the context models (ideal code lengths)."""
    w = matrix.astype(np.float64)
    points = []
    for target, step in steps:
        start = time.perf_counter()
        codes = np.rint(w / step).astype(np.int64)
        error = impl.rel_error(matrix, codes * step)
        lengths = entropy.context_bits(codes)
        seconds = time.perf_counter() - start
        for model, bits in lengths.items():
            points.append(
                {
                    "family": f"uniform codes, {model} (ideal)",
                    "technique": "context coding",
                    "impl": "numpy (code length)",
                    "setting": f"step of max_error={target}",
                    "bits": (bits + 64) / w.size,
                    "rel_error": error,
                    "seconds": seconds,
                    "step": step,
                }
            )
        points[-len(lengths)]["zstd_recount_bits"] = zstd_bits(codes) / w.size
        points[-len(lengths)]["reference_setting"] = target
        if w.size <= CHECK_WEIGHTS:
            _check(points[-1], codes, trellis=False)
    return points


def zstd_bits(codes: np.ndarray) -> int:
    """Bits of integer codes stored as sparsify's uniform quantiser stores its codes (the narrowest
    integers, or 2- or 4-bit fields where smaller: ``encode_uniform`` on the codes with step 1), after
    its zstd coder, plus 64 for the step."""
    parts, _ = encode_uniform(codes.astype(np.float64), 1.0, lambda a: coded_bytes(a, impl.CODERS)[0].size)
    return impl.stored_bits(impl.Coded(codes, {"q": parts["q"]})) + 64


def _check(point: dict[str, Any], codes: np.ndarray, trellis: bool) -> None:
    """Code ``codes`` with the real arithmetic coder under the point's model; record bytes and round trip."""
    start = time.perf_counter()
    nbytes, exact = entropy.coded_neighbours(codes, trellis)
    point["arithmetic_coder"] = {
        "bits": (8 * nbytes + 64) / codes.size,
        "decoded_exact": exact,
        "seconds": time.perf_counter() - start,
    }


def tcq_points(matrix: np.ndarray, steps: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Trellis-coded quantisation at Δ = step / 2 of the reference's steps: zstd bytes and code lengths."""
    w = matrix.astype(np.float64)
    points = []
    for target, step in steps:
        if target not in TCQ_ERRORS:
            continue
        start = time.perf_counter()
        codes = entropy.tcq(w, step / 2, TCQ_LAMBDA)
        error = impl.rel_error(matrix, entropy.tcq_decode(codes, step / 2))
        seconds = time.perf_counter() - start
        stored = zstd_bits(codes)
        common = {
            "technique": "tcq",
            "setting": f"Δ = step of max_error={target} / 2",
            "rel_error": error,
            "seconds": seconds,
            "step": step / 2,
            "lambda": TCQ_LAMBDA,
        }
        points.append(
            {**common, "family": f"TCQ (4 states, λ={TCQ_LAMBDA}) + zstd", "impl": "numpy", "bits": stored / w.size}
        )
        lengths = entropy.tcq_context_bits(codes)
        for model in ("static order 0", "adaptive, state x neighbours"):
            points.append(
                {
                    **common,
                    "family": f"TCQ (4 states, λ={TCQ_LAMBDA}), {model} (ideal)",
                    "impl": "numpy (code length)",
                    "bits": (lengths[model] + 64) / w.size,
                }
            )
        if w.size <= CHECK_WEIGHTS:
            _check(points[-1], codes, trellis=True)
    return points
