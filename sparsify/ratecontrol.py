"""Choosing each tensor's pipeline: ``-p auto`` and whole-model targets (ratio, size, error).

Every tensor that the rules leave to the default pipeline gets a set of *candidates* -- pipelines,
each encoded and measured exactly as it would be stored (bytes including the tensor's share of the
manifest, squared error from the decoded parts), or, for a target, first estimated on a sample of the
tensor (:mod:`sparsify.estimate`; :class:`Point` ``exact=False``) and measured exactly only near the
allocation's choice (:func:`near_choice`, :func:`substitute`; the planner runs the rounds). Then:

* ``-p auto`` with ``--max-error E`` only: each tensor takes the candidate with the fewest bytes whose
  rel. error is <= E (:data:`AUTO_CANDIDATES`, each aimed at E; ``keep`` always qualifies).
* a target (``--target-ratio R``, ``--target-size BYTES``, ``--target-error E``): candidates are the
  rate-distortion ladder :func:`ladder_candidates` (an entropy-coded uniform quantiser at steps a
  quarter octave apart, k-means codebooks, the usual RTN settings, and lossless); the points of each
  tensor are reduced to their lower convex hull and the allocation takes hull segments in order of
  decreasing slope -ΔD/ΔR (squared error saved per byte spent) -- the Lagrangian solution of "least
  total squared error for the bytes" (or "fewest bytes for the error") -- while the budget lasts,
  then a local search uses what is left (:func:`allocate`). The slope of the last segment taken is
  the Lagrange multiplier, reported as ``slope``. With ``--max-error E`` too, candidates above E are
  dropped first.

Total squared error is what the report's weighted rel. error sqrt(Σ||ΔW||² / Σ||W||²) measures, so
minimising it for the size is minimising that figure. Memory: per candidate, its figures and its
manifest record (a few hundred bytes), never its parts; the chosen pipelines are encoded again when
the archive is written (deterministic, the same bytes), and the archive's size is computed exactly
from the records while planning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsify.codec import Original, encode_tensor
from sparsify.errors import UsageError
from sparsify.importance import TensorImportance
from sparsify.io.base import TensorInfo
from sparsify.metrics import finite_sq_norm
from sparsify.pipeline import parse_pipeline
from sparsify.report.model import record_overhead
from sparsify.rules import Choice

AUTO_CANDIDATES = (
    "quant:max_error={e}+zstd",
    "threshold:max_error={e}+zstd",
    "svd:max_error={e}+zstd",
    "svd:energy=0.5+quant:max_error={e}+zstd",
    "quant:bits=8+zstd",
    "quant:bits=4,group=128+zstd",
    "quant:codebook=4+zstd",
    "quant:codebook=16+zstd",
    "quant:codebook=64+zstd",
    "keep+zstd",
)
"""``-p auto`` with a per-tensor bound E: these pipelines (``{e}`` replaced by E) are tried on every
tensor and the one with the fewest stored bytes that meets E is kept."""

# Steps of the uniform quantiser, as log2 of (step / the tensor's RMS): half octaves at high
# precision, quarter octaves where models are usually compressed (about 0.3 % to 80 % rel. error).
_LADDER_LOG2_STEPS = tuple(np.concatenate((np.arange(-14.0, -6.0, 0.5), np.arange(-6.0, 2.01, 0.25))).tolist())
_LADDER_FIXED = ("quant:bits=8+zstd", "quant:bits=4,group=128+zstd", "quant:bits=2,group=64+zstd", "keep+zstd")
# k-means codebooks (weight sharing): for weights close to uniform or multi-modal they beat the
# uniform step at a given error; entropy-coded by the byte coder like the uniform codes.
_LADDER_CODEBOOKS = tuple(f"quant:codebook={k}+zstd" for k in (2, 3, 4, 6, 8, 12, 16, 24, 32, 64))


def ladder_candidates(array: np.ndarray, weighted: bool = False, feedback: bool = False) -> list[str]:
    """The rate-distortion ladder for one tensor: ``quant:step=...+zstd`` at steps relative to the
    tensor's RMS (:data:`_LADDER_LOG2_STEPS`), k-means codebooks (:data:`_LADDER_CODEBOOKS`), plus
    :data:`_LADDER_FIXED`. ``weighted``: the steps also as ``quant:step=...,weighted=true`` (the
    tensor's importance sets a step per row and column; the uniform step stays a candidate, as its
    codes pack into fewer bits at coarse steps). ``feedback``: the tensor has input moments, and every
    step is tried with error feedback (``feedback=true``, :mod:`sparsify.feedback`) instead of plain
    rounding: measured on AntiBERTy at 4 bits per weight, feedback lowered the layers' output error
    5.6-fold for 0.1 % more bytes."""
    finite = np.asarray(array, dtype=np.float64)
    rms = math.sqrt(finite_sq_norm(finite) / finite.size) if finite.size else 0.0
    if rms == 0.0 or not math.isfinite(rms):
        return list(_LADDER_FIXED)
    fed = ",feedback=true" if feedback else ""
    steps = [f"quant:step={rms * _exp2(k):.4g}{fed}+zstd" for k in _LADDER_LOG2_STEPS]
    if weighted:
        steps += [f"quant:step={rms * _exp2(k):.4g},weighted=true{fed}+zstd" for k in _LADDER_LOG2_STEPS]
    return steps + list(_LADDER_CODEBOOKS) + list(_LADDER_FIXED)


# 2**f for the quarter octaves f of the ladder, as exact constants (libm's pow may differ between CPUs).
_QUARTER_OCTAVES = {0.0: 1.0, 0.25: 1.189207115002721, 0.5: 1.4142135623730951, 0.75: 1.6817928305074290}


def _exp2(k: float) -> float:
    """2**k for k a multiple of 1/4, the same on every machine."""
    whole = math.floor(k)
    return math.ldexp(_QUARTER_OCTAVES[k - whole], whole)


@dataclass(frozen=True)
class Point:
    """One candidate as measured: stored bytes (parts plus manifest share) and squared error --
    exactly, with the manifest ``record`` it would write, or (``exact=False``) estimated on a sample
    (:mod:`sparsify.estimate`), without one. ``distortion``: the importance-weighted squared error
    Σ a ΔW² (:mod:`sparsify.importance`) where the tensor has an importance, else None."""

    pipeline: str
    nbytes: int
    sq_error: float
    rel_error: float
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    exact: bool = field(default=True, compare=False)
    distortion: float | None = field(default=None, compare=False)

    @property
    def cost(self) -> float:
        """What the allocation minimises for this point: its distortion, or its squared error."""
        return self.sq_error if self.distortion is None else self.distortion


@dataclass
class TensorPlan:
    """A tensor under rate control: its candidates and, after allocation, the chosen one."""

    name: str
    sq_norm: float
    points: list[Point]
    chosen: int = 0
    measured: int = 0  # candidates measured, before any bound dropped some
    estimates: dict[str, Point] = field(default_factory=dict, repr=False)  # as estimated, by pipeline


@dataclass
class Plan:
    """The outcome of planning: the chosen pipeline per planned tensor, and how it was chosen."""

    choices: dict[str, Choice]
    summary: dict[str, Any] = field(default_factory=dict)


def measure_candidates(
    array: np.ndarray,
    info: TensorInfo,
    candidates: Iterable[str],
    seed: int,
    original: Original | None = None,
    importance: TensorImportance | None = None,
    step_shifts: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    prepared_feedback: Any = None,
) -> list[Point]:
    """Encode ``array`` with every candidate pipeline and measure it (bytes incl. manifest share).
    A candidate that does not apply to this tensor (a usage error, e.g. a shape it cannot take) is
    left out. ``original``: ``array`` as :class:`Original`, whose checksum, float64 views and norm
    the candidates share; ``importance``: the tensor's, for each point's ``distortion`` (and the
    steps of weighted quantisers, unless ``step_shifts`` gives them: :func:`encode_tensor`);
    ``prepared_feedback``: the feedback candidates' results made together (:class:`sparsify.feedback.Prepared`)."""
    points = []
    original = original if original is not None else Original(array)
    shifts_by_layout: dict[tuple[str, bool], Any] = {}  # shared shifts: once per view (and feedback or not)
    for text in candidates:
        try:
            pipeline = parse_pipeline(text)
            choice = Choice(pipeline, "candidate")
            shifts = step_shifts
            if shifts is None and importance is not None and pipeline.weighted:
                key = (pipeline.view or info.layout, pipeline.feedback)
                if key not in shifts_by_layout:
                    shifts_by_layout[key] = importance.step_shifts(info.shape, *key)
                shifts = shifts_by_layout[key]
            encoded = encode_tensor(array, info, choice, seed, original, importance, shifts, prepared_feedback)
        except UsageError:
            continue
        metrics = encoded.record["metrics"]
        sq_error = metrics["sq_error"] if math.isfinite(metrics["rel_error"]) else math.inf
        nbytes = encoded.record["stored_bytes"] + record_overhead(encoded.record)
        distortion = None
        if importance is not None:
            distortion = encoded.weighted_sq_error if math.isfinite(sq_error) else math.inf
        points.append(Point(str(pipeline), nbytes, sq_error, metrics["rel_error"], encoded.record, True, distortion))
    return points


def plan_tensor(
    array: np.ndarray,
    info: TensorInfo,
    candidates: Iterable[str],
    seed: int,
    max_error: float | None,
    importance: TensorImportance | None = None,
) -> TensorPlan:
    """A tensor's :class:`TensorPlan`: its candidates measured (with ``importance``, their
    distortion too), those above ``max_error`` dropped (unless none is left)."""
    original = Original(array)
    points = measure_candidates(array, info, candidates, seed, original, importance)
    measured = len(points)
    if max_error is not None:
        points = [p for p in points if p.rel_error <= max_error] or points
    return TensorPlan(info.name, original.reference.sq_norm, points, 0, measured)


def near_choice(plan: TensorPlan, neighbours: bool = True) -> list[int]:
    """Indices of the estimated points among the chosen one and (``neighbours``) the next cheaper
    and the next dearer point of the lower hull: what an exact measurement should settle -- the
    choice, and a step either way should the exact figures differ from the estimates."""
    chosen = plan.points[plan.chosen]
    near = {plan.chosen}
    if neighbours:
        hull = lower_hull(plan.points)
        cheaper = [i for i in hull if plan.points[i].nbytes < chosen.nbytes]
        dearer = [i for i in hull if plan.points[i].nbytes > chosen.nbytes]
        near.update(cheaper[-1:] + dearer[:1])
    return sorted(i for i in near if not plan.points[i].exact)


def substitute(
    plan: TensorPlan,
    requested: Iterable[str],
    exact: list[Point],
    shared: dict[str, tuple[float, float, float]] | None = None,
) -> None:
    """Put the exactly measured points ``exact`` (of the ``requested`` pipelines; a candidate that
    did not apply is missing and its estimate is dropped) in place of their estimates, then
    recalibrate the remaining estimates of the tensor: each is scaled, in bytes and in squared error,
    by exact / estimated of the nearest (in estimated bytes) exact point of its family
    (:func:`family`) -- the sample's deviation from the tensor is mostly common to a family -- or,
    where the tensor has no exact point of that family, by the model's ``shared`` correction of the
    family (:func:`family_corrections`: a sample misjudges a method alike on every tensor)."""
    for p in plan.points:
        if not p.exact:
            plan.estimates.setdefault(p.pipeline, p)
    found = {p.pipeline: p for p in exact}
    dropped = set(requested) - set(found)
    points = [found.get(p.pipeline, p) for p in plan.points if p.pipeline not in dropped]
    anchors: dict[str, list[tuple[Point, Point]]] = {}
    for p in points:
        if p.exact and p.pipeline in plan.estimates:
            anchors.setdefault(family(p.pipeline), []).append((plan.estimates[p.pipeline], p))
    for i, p in enumerate(points):
        if p.exact:
            continue
        raw, near = plan.estimates[p.pipeline], anchors.get(family(p.pipeline))
        if near:
            bytes_ratio, error_ratio, cost_ratio = _corrections(
                *min(near, key=lambda pair: (abs(pair[0].nbytes - raw.nbytes), pair[0].nbytes))
            )
        elif shared and family(p.pipeline) in shared:
            bytes_ratio, error_ratio, cost_ratio = shared[family(p.pipeline)]
        else:
            continue
        sq_error = raw.sq_error * error_ratio
        rel_error = raw.rel_error * math.sqrt(error_ratio)
        distortion = None if raw.distortion is None else raw.distortion * cost_ratio
        points[i] = Point(
            p.pipeline, round(raw.nbytes * bytes_ratio), sq_error, rel_error, exact=False, distortion=distortion
        )
    plan.points = points
    plan.chosen = 0


def _corrections(guess: Point, truth: Point) -> tuple[float, float, float]:
    """exact / estimated of a point's bytes, squared error and cost (1 where either is not positive)."""
    bytes_ratio = truth.nbytes / guess.nbytes if guess.nbytes > 0 else 1.0
    return bytes_ratio, _ratio(truth.sq_error, guess.sq_error), _ratio(truth.cost, guess.cost)


def family_corrections(plans: Iterable[TensorPlan]) -> dict[str, tuple[float, float, float]]:
    """Per candidate family (:func:`family`), the model's correction of its estimates: the median,
    over every tensor's exactly measured points of the family, of exact / estimated bytes, squared
    error and cost (each the lower middle value: no arithmetic on them)."""
    found: dict[str, list[tuple[float, float, float]]] = {}
    for plan in plans:
        for p in plan.points:
            if p.exact and p.pipeline in plan.estimates:
                found.setdefault(family(p.pipeline), []).append(_corrections(plan.estimates[p.pipeline], p))
    return {
        name: tuple(sorted(values)[(len(values) - 1) // 2] for values in zip(*ratios, strict=True))
        for name, ratios in sorted(found.items())
    }


def _ratio(truth: float, guess: float) -> float:
    """truth / guess where both are positive, else 1 (no correction)."""
    return truth / guess if guess > 0 and truth > 0 else 1.0


def family(pipeline: str) -> str:
    """The pipeline with its step or codebook size left out: candidates that a sample misjudges alike."""
    return re.sub(r"\b(step|codebook)=[^,+]*", r"\1", pipeline)


def lower_hull(points: list[Point]) -> list[int]:
    """Indices of the points on the lower convex hull of (bytes, cost), by increasing bytes (cost:
    the distortion, or the squared error, :attr:`Point.cost`): the only points a Lagrangian
    allocation can choose. Dominated and non-finite points are dropped."""
    order = sorted(
        (i for i, p in enumerate(points) if math.isfinite(p.cost) and math.isfinite(p.sq_error)),
        key=lambda i: (points[i].nbytes, points[i].cost),
    )
    hull: list[int] = []
    for i in order:
        p = points[i]
        if hull and p.cost >= points[hull[-1]].cost:
            continue  # more bytes, no less error
        while len(hull) >= 2:
            a, b = points[hull[-2]], points[hull[-1]]
            # b lies on or above the segment a-p: not on the lower hull
            if (b.cost - a.cost) * (p.nbytes - a.nbytes) >= (p.cost - a.cost) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


OBJECTIVES = ("sse", "relative")
"""What a size target minimises (``--objective``): ``sse`` the model's total squared error Σ‖ΔW‖²
(what the report's whole-model weighted rel. error measures), ``relative`` the sum of the tensors'
squared *relative* errors Σ‖ΔW‖²/‖W‖², which spends bytes where a tensor's error is large for its
size rather than where its weights are large (README, "Rate control"). The third, ``importance``,
is not chosen but set by an importance file (``--importance``): Σ a ΔW² (:mod:`sparsify.importance`),
carried by each point's ``distortion``."""
IMPORTANCE_OBJECTIVE = "importance"


def objective_weights(objective: str, tensors: list[TensorPlan]) -> list[float] | None:
    """The weight of each tensor's squared error in the allocation's distortion (None: all 1).

    ``relative``: ``mean ‖W‖² / ‖W_t‖²`` (a tensor of zero norm weighs as the mean one), so that the
    distortion is in the same units as ``sse`` and the reported slope stays comparable."""
    if objective in ("sse", IMPORTANCE_OBJECTIVE):  # the importance is in the points' distortion
        return None
    if objective != "relative":
        raise UsageError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    norms = [t.sq_norm for t in tensors if t.sq_norm > 0 and math.isfinite(t.sq_norm)]
    mean = sum(norms) / len(norms) if norms else 1.0
    return [mean / t.sq_norm if t.sq_norm > 0 and math.isfinite(t.sq_norm) else 1.0 for t in tensors]


def allocate(
    tensors: list[TensorPlan],
    fixed_bytes: int,
    fixed_sq_error: float,
    total_sq_norm: float,
    budget_bytes: float | None = None,
    max_rel_error: float | None = None,
    weights: list[float] | None = None,
) -> dict[str, Any]:
    """Choose one point per tensor (sets ``TensorPlan.chosen``); returns what was decided.

    With ``budget_bytes``: least total distortion whose bytes (plus ``fixed_bytes``) fit; the
    distortion is the squared error, each tensor's times its ``weights`` entry where given
    (:func:`objective_weights`). With ``max_rel_error`` (no weights): fewest bytes whose weighted rel.
    error (with the fixed tensors' ``fixed_sq_error`` and the model's ``total_sq_norm``) is <= it.
    Greedy over the tensors' hull segments by decreasing slope -ΔD/ΔR, which is optimal at hull
    vertices. The figures returned (the predicted weighted rel. error) are the unweighted ones.
    """
    if weights is not None and max_rel_error is not None:
        raise ValueError("an error bound is on the squared error itself: no objective weights with it")
    scale = weights if weights is not None else [1.0] * len(tensors)
    hulls = [lower_hull(t.points) for t in tensors]  # a tensor's hull is the same at any positive weight
    position = [0] * len(tensors)
    for t, hull in zip(tensors, hulls, strict=True):
        t.chosen = hull[0]
    segments = []  # (slope, tensor index, step along the hull)
    for ti, (t, hull) in enumerate(zip(tensors, hulls, strict=True)):
        for k in range(1, len(hull)):
            a, b = t.points[hull[k - 1]], t.points[hull[k]]
            segments.append((scale[ti] * (a.cost - b.cost) / max(b.nbytes - a.nbytes, 1), ti, k))
    segments.sort(key=lambda s: (-s[0], s[1], s[2]))
    total_bytes = fixed_bytes + sum(t.points[t.chosen].nbytes for t in tensors)
    total_sq = fixed_sq_error + sum(t.points[t.chosen].sq_error for t in tensors)
    error_budget = None if max_rel_error is None else max_rel_error * max_rel_error * total_sq_norm
    slope = None
    for rate, ti, k in segments:
        if error_budget is not None and total_sq <= error_budget:
            break
        if position[ti] != k - 1:
            continue  # an earlier segment of this tensor did not fit
        t, hull = tensors[ti], hulls[ti]
        a, b = t.points[hull[k - 1]], t.points[hull[k]]
        if budget_bytes is not None and total_bytes + b.nbytes - a.nbytes > budget_bytes:
            continue
        total_bytes += b.nbytes - a.nbytes
        total_sq += b.sq_error - a.sq_error
        position[ti], t.chosen, slope = k, hull[k], rate
    total_bytes, total_sq = _refine(tensors, fixed_bytes, fixed_sq_error, budget_bytes, error_budget, weights)
    met = (budget_bytes is None or total_bytes <= budget_bytes) and (error_budget is None or total_sq <= error_budget)
    return {
        "predicted_bytes": int(total_bytes),
        "predicted_weighted_rel_error": math.sqrt(total_sq / total_sq_norm) if total_sq_norm > 0 else 0.0,
        "slope": slope,
        "met": bool(met),
    }


# Rounds of the local search after the greedy allocation (each makes one move or stops).
_REFINE_ROUNDS = 200


def _refine(
    tensors: list[TensorPlan],
    fixed_bytes: float,
    fixed_sq: float,
    budget_bytes: float | None,
    error_budget: float | None,
    weights: list[float] | None = None,
) -> tuple[float, float]:
    """Local search after the greedy pass, which can stop short where a tensor's next hull point is
    a big step: with a byte budget, the move that lowers the distortion (the squared error, times
    ``weights``) most within the bytes left -- one tensor to any of its points, or one tensor to any
    cheaper point to pay for another's move (:func:`_best_pair`); with an error budget, the move that
    saves most bytes within the error left. Returns the totals: bytes, and the (unweighted) squared error.
    """
    rates = np.full((len(tensors), max((len(t.points) for t in tensors), default=0)), np.inf)
    raw_errors = np.full(rates.shape, np.inf)
    costs = np.full(rates.shape, np.inf)
    for i, t in enumerate(tensors):
        rates[i, : len(t.points)] = [p.nbytes for p in t.points]
        raw_errors[i, : len(t.points)] = [p.sq_error for p in t.points]
        costs[i, : len(t.points)] = [p.cost for p in t.points]
    if error_budget is not None:
        costs = raw_errors  # an error budget is on the squared error itself
    errors = costs if weights is None else costs * np.asarray(weights, dtype=np.float64)[:, None]
    rows = np.arange(len(tensors))
    for _ in range(_REFINE_ROUNDS if tensors else 0):
        chosen = np.array([t.chosen for t in tensors])
        current_rate, current_error = rates[rows, chosen], errors[rows, chosen]
        total_bytes = fixed_bytes + float(current_rate.sum())
        total_sq = fixed_sq + float(current_error.sum())
        d_rate = rates - current_rate[:, None]
        d_error = errors - current_error[:, None]
        with np.errstate(invalid="ignore"):
            if budget_bytes is not None:
                gain = np.where(np.isfinite(d_error) & (d_rate <= budget_bytes - total_bytes), -d_error, 0.0)
                pair = _best_pair(d_rate, d_error, budget_bytes - total_bytes)
            else:
                gain = np.where(np.isfinite(d_error) & (d_error <= error_budget - total_sq), -d_rate, 0.0)
                pair = None
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        single = float(gain[i, j])
        if pair is not None and pair[0] > max(single, 0.0) * (1 + 1e-12):
            _, (a, b), (c, d) = pair
            tensors[a].chosen, tensors[c].chosen = int(b), int(d)
        elif single > 0:
            tensors[i].chosen = int(j)
        else:
            break
    chosen = np.array([t.chosen for t in tensors], dtype=np.int64)
    return fixed_bytes + float(rates[rows, chosen].sum()), fixed_sq + float(raw_errors[rows, chosen].sum())


def _best_pair(d_rate: np.ndarray, d_error: np.ndarray, left: float):
    """The best (error saved, (tensor, point) down, (tensor, point) up) pair of moves: one tensor to
    any cheaper point, whose bytes (with ``left``) pay for another tensor's move; None if none helps.

    ``d_rate``, ``d_error``: (tensors, points) changes from the current choice (inf: no point). Every
    move that saves error is sorted by its bytes; with the running best of that order, each cheaper
    point finds the best move its bytes pay for by one binary search. Where that move is the same
    tensor's, the best of the other tensors' is found directly (the two moves must be of two tensors).
    """
    finite = np.isfinite(d_rate) & np.isfinite(d_error)
    up_tensor, up_point = np.nonzero(finite & (d_error < 0))
    down_tensor, down_point = np.nonzero(finite & (d_rate < 0))
    if up_tensor.size == 0 or down_tensor.size == 0:
        return None
    up_rate, up_gain = d_rate[up_tensor, up_point], -d_error[up_tensor, up_point]
    order = np.lexsort((up_point, up_tensor, up_rate))  # by bytes; ties in (tensor, point) order
    sorted_rate, sorted_gain = up_rate[order], up_gain[order]
    running = np.maximum.accumulate(sorted_gain)
    # the first position of each running maximum: the move that attains it (ties: the earlier)
    where = np.maximum.accumulate(
        np.where(sorted_gain > np.concatenate(([-np.inf], running[:-1])), np.arange(order.size), 0)
    )
    allowance = left - d_rate[down_tensor, down_point]
    reach = np.searchsorted(sorted_rate, allowance, side="right") - 1
    valid = reach >= 0
    gain = np.where(valid, running[np.maximum(reach, 0)], 0.0)
    best_move = order[where[np.maximum(reach, 0)]]
    partner = np.stack((up_tensor[best_move], up_point[best_move]), axis=1)
    same = valid & (partner[:, 0] == down_tensor)
    for k in np.flatnonzero(same):  # rare: the best affordable move is the moving tensor's own
        a = down_tensor[k]
        options = np.where(finite & (d_error < 0) & (d_rate <= allowance[k]), -d_error, 0.0)
        options[a] = 0.0
        c, d = np.unravel_index(int(np.argmax(options)), options.shape)
        gain[k], partner[k] = options[c, d], (c, d)
    total = gain - d_error[down_tensor, down_point]
    total[gain <= 0] = -np.inf
    k = int(np.argmax(total))
    if not total[k] > 0:
        return None
    return float(total[k]), (int(down_tensor[k]), int(down_point[k])), (int(partner[k, 0]), int(partner[k, 1]))


def fewest_bytes(points: list[Point], max_rel_error: float) -> int | None:
    """Index of the point with the fewest bytes whose rel. error is <= ``max_rel_error`` (None: none)."""
    meeting = [i for i, p in enumerate(points) if p.rel_error <= max_rel_error]
    return min(meeting, key=lambda i: (points[i].nbytes, points[i].sq_error)) if meeting else None


def plan_reason(summary: dict[str, Any]) -> str:
    """The report's reason for a planned tensor (the plan's figures are in the report's summary)."""
    if summary["mode"] == "auto":
        return f"auto: fewest bytes with rel. error <= {summary['max_error']}"
    return f"rate control: target {summary['mode']}"


def candidates_for(
    mode: str, array: np.ndarray, max_error: float | None, weighted: bool = False, feedback: bool = False
) -> list[str]:
    """The candidate pipelines of one tensor for a planning mode (``auto`` or a target);
    ``weighted``: the tensor has an importance that shifts its steps, ``feedback``: input moments
    (:func:`ladder_candidates`)."""
    if mode == "auto":
        return [c.format(e=repr(float(max_error))) for c in AUTO_CANDIDATES]
    return ladder_candidates(array, weighted, feedback)


def model_curves(
    tensors: list[TensorPlan], fixed_bytes: float, fixed_sq: float, total_sq_norm: float, numel: int
) -> list[dict[str, Any]]:
    """Model-level rate-distortion curves from measured candidates (see :func:`sparsify.api.rate_distortion`):
    the allocation at 40 budgets, one uniform step (the same ladder rung) for every tensor, and RTN."""

    def point(chosen: list[Point]) -> dict[str, float]:
        total_bytes = fixed_bytes + sum(p.nbytes for p in chosen)
        total_sq = fixed_sq + sum(p.sq_error for p in chosen)
        error = math.sqrt(total_sq / total_sq_norm) if total_sq_norm > 0 else 0.0
        return {"bits_per_weight": 8 * total_bytes / numel if numel else 0.0, "rel_error": error}

    if not tensors:
        return []
    lowest = fixed_bytes + sum(min(p.nbytes for p in t.points) for t in tensors)
    highest = fixed_bytes + sum(max(p.nbytes for p in t.points) for t in tensors)
    best = []
    for budget in np.geomspace(lowest, highest, 40):
        if allocate(tensors, fixed_bytes, fixed_sq, total_sq_norm, budget_bytes=float(budget))["met"]:
            best.append(point([t.points[t.chosen] for t in tensors]))
    curves = [{"label": "rate control: best pipeline per tensor", "points": best}]
    rungs = [[p for p in t.points if p.pipeline.startswith("quant:step=")] for t in tensors]
    if all(len(r) == len(rungs[0]) for r in rungs):
        label = "quant:step (one relative step for all tensors)"
        curves.append({"label": label, "points": [point(list(rung)) for rung in zip(*rungs, strict=True)]})
    for fixed in _LADDER_FIXED[:-1]:
        method = fixed.split("+")[0]
        chosen = [next((p for p in t.points if p.pipeline.startswith(method)), None) for t in tensors]
        if all(c is not None for c in chosen):
            curves.append({"label": f"RTN {method}", "points": [point(chosen)]})
    return curves
