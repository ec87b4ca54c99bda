"""Rate and distortion of rate-control candidates, estimated on a deterministic sample of a tensor.

Measuring a candidate exactly (:func:`sparsify.ratecontrol.measure_candidates`) encodes, decodes and
checks the whole tensor; the rate controller has dozens of candidates per tensor. Here each candidate
runs through its real pipeline -- the same quantiser, value coder and byte coders, so packed codes,
the int8/int16 choice, byte planes and zstd's own inefficiencies are all in the figure -- but on a
sample of about :data:`SAMPLE_ELEMENTS` values of the tensor's matrix view, and its parts' bytes and
squared error are scaled up by the number of values (both are sums over values).

The sample is systematic, so that under that scaling it stands for the tensor without bias: rows
evenly spaced over the matrix view -- as many as the sample's size allows, since rows (output
channels) differ most -- and, in rows longer than ``2 * RUN`` values, runs of :data:`RUN` consecutive
values evenly spaced along each row, starting at multiples of :data:`RUN` (so the scales of RTN groups
of up to 128 values are those of the full row) and shifted from one sampled row to the next so that
the runs of all rows cover the columns evenly. What a candidate computes from more than its values
is added where it needs it, as single values that change the sums by about 1/:data:`RUN`:

* a per-row scale (``quant:bits=8``, one scale per row) is set by the row's value of largest
  magnitude: each sampled row gets it as one more column;
* a whole-tensor quantiser (``quant:step=``, ``quant:codebook=``) takes the code width of the uniform
  quantiser's codes and k-means' initial range from the tensor's largest and smallest value: these
  two are appended to the sample's values.

With an importance (``--importance``), the sample keeps its positions: each candidate's weighted
error Σ a ΔW² is measured on the sample with the importance at the sampled values (and scaled like
the squared error), and a weighted quantiser (``quant:...,weighted=true``) runs with the tensor's own
step shifts there, its shift parts counted once at the tensor's size instead of scaled.

Every choice is integer arithmetic on positions (argmax/argmin, no sums), so the sample -- and every
estimate, measured by the codec's own reproducible sums -- is the same on every machine. Tensors of
at most :data:`EXACT_ELEMENTS` values, and tensors with non-finite values, are not sampled: the
caller measures them exactly. An estimate is within a few per cent of the exact figure for the
uniform quantiser and RTN (tests/test_estimate.py); k-means codebooks fitted on the sample come
out a few per cent worse than on the tensor. The planner measures exactly what the allocation on the
estimates chooses, and chooses in the end among exact figures only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from sparsify.codec import Original
from sparsify.feedback import Prepared
from sparsify.importance import TensorImportance
from sparsify.io.base import TensorInfo
from sparsify.pipeline import parse_pipeline
from sparsify.ratecontrol import Point, TensorPlan, measure_candidates, plan_tensor

SAMPLE_ELEMENTS = 1 << 15
"""About how many values a sample holds (a few more where whole rows are taken)."""
EXACT_ELEMENTS = 1 << 17
"""Tensors with at most this many values are measured exactly (a sample would be most of them)."""
RUN = 512
"""Values per run in a long row: a multiple of every RTN group of the ladder (64, 128)."""


def matrix_view(array: np.ndarray, layout: str) -> np.ndarray:
    """The (rows, cols) matrix view of ``array`` in its own dtype (see :func:`sparsify.codec.to_matrix`):
    output channels on the rows -- the first axis, or the last for ``layout="last"``."""
    if layout == "last" and array.ndim >= 2:
        array = np.moveaxis(array, -1, 0)
    if array.ndim == 0:
        return array.reshape(1, 1)
    if array.ndim == 1:
        return array.reshape(1, -1)
    return array.reshape(array.shape[0], -1)


def _comparable(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` in a numpy float type that orders the same values the same way (2-byte floats,
    ml_dtypes' included, widen exactly to float32; other non-float types to float64)."""
    if matrix.dtype in (np.float32, np.float64):
        return matrix
    if matrix.dtype.itemsize <= 2 and matrix.dtype.kind not in "iub":
        return matrix.astype(np.float32)
    return matrix.astype(np.float64)


def evenly_spaced(count: int, length: int) -> np.ndarray:
    """``count`` distinct indices in [0, length), evenly spaced and centred (int64, ascending)."""
    count = min(count, length)
    return (np.arange(count, dtype=np.int64) * length + length // 2) // max(count, 1)


def sample_positions(n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Where the systematic sample of the module docstring lies in a (rows, cols) matrix: (row
    indices (r,), column indices (r, m)), the sample being ``matrix[rows[:, None], cols]``. None when
    the matrix is small enough to measure exactly (or the sample would be most of it).

    As many rows as runs allow (rows differ more than the columns of a row: per-channel scales), so
    whole rows up to ``2 * RUN`` values, else up to ``SAMPLE_ELEMENTS / RUN`` rows of one or more runs."""
    if n_rows * n_cols <= EXACT_ELEMENTS:
        return None
    if n_cols <= 2 * RUN:  # short rows: whole rows
        rows = evenly_spaced(-(-SAMPLE_ELEMENTS // n_cols), n_rows)
        if 2 * rows.size > n_rows:
            return None
        return rows, np.broadcast_to(np.arange(n_cols, dtype=np.int64), (rows.size, n_cols))
    rows = evenly_spaced(-(-SAMPLE_ELEMENTS // RUN), n_rows)
    slots = n_cols // RUN
    runs = min(slots, -(-SAMPLE_ELEMENTS // (rows.size * RUN)))
    if 2 * rows.size * runs * RUN > n_rows * n_cols:
        return None
    # each row's runs evenly spaced, and shifted from row to row so that together they cover the
    # columns evenly too (the same columns in every row would miss whatever varies along them)
    shift = (np.arange(rows.size, dtype=np.int64) * slots) // (rows.size * runs)
    starts = (evenly_spaced(runs, slots)[None, :] + shift[:, None]) % slots * RUN
    cols = (starts[:, :, None] + np.arange(RUN, dtype=np.int64)).reshape(rows.size, -1)
    return rows, np.sort(cols, axis=1)


@dataclass(frozen=True)
class Sample:
    """What the estimates of one tensor are measured on (all in the tensor's dtype).

    values:    (r, m) the systematic sample of the matrix view.
    peaks:     (r, 1) each sampled row's value of largest magnitude (None: whole rows, which hold it).
    extremes:  (2,) the tensor's largest and smallest value.
    rows, cols, peak_cols, extreme_at: where they are in the matrix view: the sampled rows (r,),
               their columns (r, m), the peaks' columns (r,) or None, the extremes' flat indices (2,).
    """

    values: np.ndarray
    peaks: np.ndarray | None
    extremes: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    peak_cols: np.ndarray | None
    extreme_at: np.ndarray


def take_sample(array: np.ndarray, layout: str) -> Sample | None:
    """The :class:`Sample` of ``array`` seen as a matrix with ``layout``, or None (measure the tensor
    exactly: small, or with non-finite values)."""
    matrix = matrix_view(np.asarray(array), layout)
    positions = sample_positions(*matrix.shape)
    if positions is None:
        return None
    comparable = _comparable(matrix)
    if not np.isfinite(comparable).all():
        return None
    rows, cols = positions
    values = np.ascontiguousarray(matrix[rows[:, None], cols])
    extreme_at = np.array([int(np.argmax(comparable)), int(np.argmin(comparable))], dtype=np.int64)
    extremes = matrix.reshape(-1)[extreme_at]
    peaks = largest = None
    if cols.shape[1] < matrix.shape[1]:
        largest = np.argmax(np.abs(comparable[rows]), axis=1)
        peaks = np.ascontiguousarray(matrix[rows, largest][:, None])
    return Sample(values, peaks, extremes, rows, cols, largest, extreme_at)


def _form(sample: Sample, pipeline: str) -> str:
    """How ``pipeline`` sees the sample (module docstring): ``"peaks"`` (the rows and their peaks,
    for a per-row RTN scale), ``"flat"`` (one row of every value and the extremes, for a whole-tensor
    quantiser) or ``"rows"`` (the sample as it is)."""
    method = parse_pipeline(pipeline).methods[0]
    config = method.config if method.name == "quant" else {}
    if "bits" in config:
        group = config.get("group", 0 if config["bits"] == 8 else 128)
        return "peaks" if group <= 0 and sample.peaks is not None else "rows"
    if "step" in config or "codebook" in config or "max_error" in config:
        return "flat"
    return "rows"


def _assemble(form: str, values: np.ndarray, peaks: np.ndarray | None, extremes: np.ndarray) -> np.ndarray:
    if form == "peaks":
        return np.concatenate((values, peaks.reshape(-1, 1)), axis=1)
    if form == "flat":
        return np.concatenate((values.reshape(-1), extremes))[None, :]
    return values


def sampled_matrix(sample: Sample, pipeline: str) -> np.ndarray:
    """The matrix that ``pipeline`` is measured on: the sample, with what it needs beyond its values
    (module docstring) -- row peaks for a per-row RTN scale, the extremes for a whole-tensor quantiser."""
    return _assemble(_form(sample, pipeline), sample.values, sample.peaks, sample.extremes)


@dataclass(frozen=True)
class SampleWeights:
    """A sample's share of the tensor's importance (the same forms as :func:`sampled_matrix`):
    ``importance`` and ``shifts`` (int64 quarter-octave step shifts, row + column, or None) at the
    sampled values, their peaks and the extremes; ``shift_bytes``: the tensor's stored shift parts."""

    importance: tuple[np.ndarray, np.ndarray | None, np.ndarray]
    shifts: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None
    shift_bytes: int

    def importance_for(self, form: str) -> TensorImportance:
        return TensorImportance(full=_assemble(form, *self.importance))

    def shifts_for(self, form: str) -> tuple[None, np.ndarray] | None:
        """A weighted quantiser's shifts on the sample, as one shift per sampled value (a column each
        of the flat form): the row's and the column's added."""
        return None if self.shifts is None else (None, _assemble(form, *self.shifts).reshape(-1).astype(np.int8))


def sample_weights(sample: Sample, importance: TensorImportance, info: TensorInfo, coders) -> SampleWeights:
    """The importance (and weighted step shifts) at the sample's positions; ``coders``: those of the
    weighted candidates, which store the tensor's shift parts."""
    from sparsify.codec import coded_bytes, matrix_shape

    shape, layout = tuple(info.shape), info.layout
    full, row_factor, col_factor = importance.in_matrix(shape, layout)
    n_cols = matrix_shape(shape, layout)[1]

    def at(rows: np.ndarray, cols: np.ndarray, factors) -> np.ndarray:
        a = np.ones(np.broadcast_shapes(rows.shape, cols.shape))
        full_f, row_f, col_f = factors
        if full_f is not None:
            a = a * full_f[rows, cols]
        if row_f is not None:
            a = a * row_f[rows]
        if col_f is not None:
            a = a * col_f[cols]
        return a

    def gather(factors) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        values = at(sample.rows[:, None], sample.cols, factors)
        peaks = None if sample.peak_cols is None else at(sample.rows, sample.peak_cols, factors)
        extremes = at(sample.extreme_at // n_cols, sample.extreme_at % n_cols, factors)
        return values, peaks, extremes

    weights = gather((full, row_factor, col_factor))
    row_shift, col_shift = importance.step_shifts(shape, layout)
    if row_shift is None and col_shift is None:
        return SampleWeights(weights, None, 0)
    as_int = [None if v is None else v.astype(np.int64) for v in (row_shift, col_shift)]

    def shift_at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        k = np.zeros(np.broadcast_shapes(rows.shape, cols.shape), dtype=np.int64)
        if as_int[0] is not None:
            k = k + as_int[0][rows]
        if as_int[1] is not None:
            k = k + as_int[1][cols]
        return k

    shifts = (
        shift_at(sample.rows[:, None], sample.cols),
        None if sample.peak_cols is None else shift_at(sample.rows, sample.peak_cols),
        shift_at(sample.extreme_at // n_cols, sample.extreme_at % n_cols),
    )
    stored = sum(coded_bytes(v, coders)[0].size for v in (row_shift, col_shift) if v is not None)
    return SampleWeights(weights, shifts, stored)


def estimate_candidates(
    array: np.ndarray, info: TensorInfo, candidates: Iterable[str], seed: int, sq_norm: float
) -> list[Point] | None:
    """Every candidate's estimated :class:`~sparsify.ratecontrol.Point` (``exact=False``, no record),
    in candidate order (those that do not apply left out): measured on :func:`sampled_matrix`, the
    parts' bytes and the squared error scaled by the tensor's values over the sample's, plus the
    sampled record's manifest share. ``sq_norm``: the tensor's squared norm (for the rel. error).
    None when the tensor is to be measured exactly (see :func:`take_sample`)."""
    sample = take_sample(array, info.layout)
    return None if sample is None else _estimate(sample, info, candidates, seed, sq_norm)


def _estimate(
    sample: Sample,
    info: TensorInfo,
    candidates: Iterable[str],
    seed: int,
    sq_norm: float,
    weights: SampleWeights | None = None,
) -> list[Point]:
    """:func:`estimate_candidates` on the tensor's sample; with ``weights`` (the sample's share of
    the tensor's importance), each point's distortion too -- the sample's weighted squared error,
    scaled like the squared error -- and weighted quantisers run with the tensor's own step shifts
    (their shift parts counted as the tensor's, not scaled)."""
    prepared: dict[tuple[int, ...], tuple[np.ndarray, Original]] = {}
    points = []
    for text in candidates:
        form = _form(sample, text)
        matrix = _assemble(form, sample.values, sample.peaks, sample.extremes)
        if matrix.shape not in prepared:  # one Original per sample shape, shared by its candidates
            prepared[matrix.shape] = (matrix, Original(matrix))
        matrix, original = prepared[matrix.shape]
        sampled = TensorInfo(info.name, info.dtype, tuple(matrix.shape), "first")
        scale = info.numel / matrix.size
        importance = shifts = None
        if weights is not None:
            importance, shifts = weights.importance_for(form), weights.shifts_for(form)
        for p in measure_candidates(matrix, sampled, [text], seed, original, importance, shifts):
            stored = p.record["stored_bytes"]
            shift_parts = sum(q["nbytes"] for q in p.record["parts"] if q["name"].endswith("_shift"))
            sq_error = p.sq_error * scale
            rel_error = math.sqrt(sq_error / sq_norm) if sq_norm > 0 and math.isfinite(sq_error) else p.rel_error
            nbytes = round((stored - shift_parts) * scale) + p.nbytes - stored
            distortion = None
            if weights is not None:
                distortion = p.distortion * scale
                nbytes += weights.shift_bytes if shift_parts else 0
            points.append(Point(p.pipeline, nbytes, sq_error, rel_error, exact=False, distortion=distortion))
    return points


def row_sample(n_rows: int, n_cols: int) -> np.ndarray:
    """The rows (int64, evenly spaced) of a sample of whole rows of about :data:`SAMPLE_ELEMENTS` values."""
    return evenly_spaced(max(1, -(-SAMPLE_ELEMENTS // max(n_cols, 1))), n_rows)


def _estimate_rows(
    array: np.ndarray,
    info: TensorInfo,
    candidates: list[str],
    seed: int,
    sq_norm: float,
    importance: TensorImportance,
) -> list[Point]:
    """Estimates of candidates that feed their rounding errors forward along each row
    (``feedback=true``, :mod:`sparsify.feedback`): on whole rows (:func:`row_sample`), where the
    feedback runs as on the tensor -- rows are independent of one another under it -- with the
    tensor's input moments and step shifts; bytes and errors are scaled by rows, the shift parts
    counted as the tensor's."""
    from sparsify.codec import coded_bytes

    matrix = matrix_view(np.asarray(array), info.layout)
    rows = row_sample(*matrix.shape)
    values = np.ascontiguousarray(matrix[rows])
    sampled = TensorInfo(info.name, info.dtype, tuple(values.shape), "first")
    original = Original(values)
    weights = importance.for_rows(rows)
    row_shift, col_shift = importance.step_shifts(tuple(info.shape), info.layout, feedback=True)
    shifts = (None if row_shift is None else row_shift[rows], col_shift)
    scale = matrix.shape[0] / rows.size
    prepared = _prepare_feedback(values, candidates, shifts, importance)
    points = []
    for text in candidates:
        pipeline = parse_pipeline(text)
        given = shifts if pipeline.weighted else None
        shift_bytes = 0
        if pipeline.weighted:
            shift_bytes = sum(coded_bytes(v, pipeline.coders)[0].size for v in (row_shift, col_shift) if v is not None)
        for p in measure_candidates(values, sampled, [text], seed, original, weights, given, prepared):
            stored = p.record["stored_bytes"]
            shift_parts = sum(q["nbytes"] for q in p.record["parts"] if q["name"].endswith("_shift"))
            sq_error = p.sq_error * scale
            rel_error = math.sqrt(sq_error / sq_norm) if sq_norm > 0 and math.isfinite(sq_error) else p.rel_error
            nbytes = round((stored - shift_parts) * scale) + p.nbytes - stored + shift_bytes
            points.append(Point(p.pipeline, nbytes, sq_error, rel_error, exact=False, distortion=p.distortion * scale))
    return points


def _prepare_feedback(
    values: np.ndarray,
    candidates: list[str],
    shifts: tuple[np.ndarray | None, np.ndarray | None],
    importance: TensorImportance,
) -> Prepared | None:
    """The feedback of every ``quant:step=D,feedback=true`` candidate on the sampled rows ``values``,
    made in one pass (:class:`sparsify.feedback.Prepared`): the steps each stage will ask for, by the
    stage's own rule (:func:`sparsify.methods.quant.step_multiplier_matrix`)."""
    from sparsify.methods.quant import step_multiplier_matrix

    finite = np.where(np.isfinite(values), values, 0.0)
    steps: list[np.ndarray | float] = []
    for text in candidates:
        stages = parse_pipeline(text).methods
        config = stages[0].config if len(stages) == 1 and stages[0].name == "quant" else {}
        if config.get("feedback") and "step" in config:
            multipliers = step_multiplier_matrix(finite.shape, shifts) if config.get("weighted") else None
            steps.append(config["step"] if multipliers is None else config["step"] * multipliers)
    factor = importance.feedback_factor()
    if not steps or factor is None or factor.shape != (finite.shape[1],) * 2:
        return None
    return Prepared.make(finite, steps, factor)


def _in_order(candidates: list[str], points: list[Point]) -> list[Point]:
    """``points`` in the order of their candidates (a candidate's text may differ from its point's
    canonical pipeline: matched by parsing)."""
    rank = {str(parse_pipeline(text)): i for i, text in enumerate(candidates)}
    return sorted(points, key=lambda p: rank.get(p.pipeline, len(rank)))


def estimate_tensor(
    array: np.ndarray,
    info: TensorInfo,
    candidates: Iterable[str],
    seed: int,
    max_error: float | None,
    importance: TensorImportance | None = None,
) -> TensorPlan:
    """A tensor's :class:`~sparsify.ratecontrol.TensorPlan` with its candidates estimated
    (:func:`estimate_candidates`; with ``importance``, their distortion too), those estimated above
    ``max_error`` dropped (unless none is left) -- or, for a tensor that is not sampled, measured
    exactly (:func:`sparsify.ratecontrol.plan_tensor`)."""
    sample = take_sample(array, info.layout)
    if sample is None:
        return plan_tensor(array, info, candidates, seed, max_error, importance)
    sq_norm = Original(array).reference.sq_norm
    weights = None
    candidates = list(candidates)
    if importance is not None:  # the ladder's candidates share the byte coders that store the shifts
        coders = parse_pipeline(candidates[0]).coders if candidates else ()
        weights = sample_weights(sample, importance, info, coders)
    fed = [parse_pipeline(text).feedback for text in candidates]
    points = _estimate(sample, info, [t for t, f in zip(candidates, fed, strict=True) if not f], seed, sq_norm, weights)
    if any(fed):
        rows = _estimate_rows(
            array, info, [t for t, f in zip(candidates, fed, strict=True) if f], seed, sq_norm, importance
        )
        points = _in_order(candidates, points + rows)
    measured = len(points)
    if max_error is not None:
        points = [p for p in points if p.rel_error <= max_error] or points
    return TensorPlan(info.name, sq_norm, points, 0, measured)
