"""Plan the model: the pipeline of every tensor of every weight file, chosen once for the whole model.

Rules and the lossless defaults fix most tensors' pipelines (:func:`sparsify.rules.choose`). With
``-p auto`` or a whole-model target the rest are planned, then :mod:`sparsify.ratecontrol` allocates
across all tensors of all files at once. Measuring candidates is the costly part; it is mapped over
the executor (:func:`sparsify.work.measure`):

* ``-p auto``: every candidate of every planned tensor is measured exactly (encoded, decoded, checked).
* a target: every candidate is *estimated* on a sample of its tensor (:mod:`sparsify.estimate`; small
  tensors are measured exactly all the same), the allocation is made on the estimates, and only the
  chosen candidate of each tensor and its neighbours on the tensor's hull are then measured exactly
  -- again, while the re-calibrated estimates promise a better allocation (:func:`_settle`). The
  final allocation chooses among exactly measured candidates only. With ``SPARSIFY_RATE_CONTROL=
  exhaustive`` (:data:`RATE_CONTROL_ENV`, for tests and benchmarks) every candidate is measured
  exactly, the reference the estimated plan is compared to.

A target is met over the sum of the archives (one per weight file): each archive's size is computed
exactly from the very manifest it will hold (:func:`sparsify.archive.manifest.predicted_size`), and of
the allocations tried, the least-error one that fits is kept -- a byte budget that can be met is met by
construction. The plan is the same for any number of workers: shares of a tensor's candidates are
joined in candidate order, and samples and estimates depend on the tensor alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from sparsify import ratecontrol, work
from sparsify.archive.manifest import predicted_size
from sparsify.dtypes import nbytes_of
from sparsify.executor import run_all
from sparsify.io.base import TensorInfo
from sparsify.options import Options
from sparsify.pipeline import parse_pipeline
from sparsify.report.model import record_overhead
from sparsify.rules import Choice, choose

Progress = Callable[..., None]
"""progress(label, tensors done, tensor count, bytes done, bytes in all)."""


@dataclass(frozen=True)
class Item:
    """One tensor of the model: which weight file (``file``, an index into the archives' heads),
    where workers read it, and what it is."""

    file: int
    source: work.Source
    info: TensorInfo


@dataclass
class Plan:
    """Every tensor's :class:`Choice` (by item index) and the plan's summary (None without planning)."""

    choices: list[Choice]
    summary: dict[str, Any] | None = None


# Rounds of re-allocation that correct the byte budget by the exactly predicted archive size in both
# directions; after them a fit ends the search and a miss tightens the budget (at most _MAX rounds).
_PLAN_ROUNDS = 4
_PLAN_ROUNDS_MAX = 64


def plan_model(
    items: list[Item],
    heads: list[dict[str, Any]],
    options: Options,
    executor: Executor,
    window: int,
    progress: Progress | None = None,
    workers: int = 1,
) -> Plan:
    """The pipeline of every item; ``heads``: each archive's manifest head (for exact sizes);
    ``workers``: how many calls ``executor`` runs at once."""
    fixed = [choose(item.info, options.rules, options.pipeline, options.min_size) for item in items]
    if not options.auto:
        return Plan(fixed)
    mode = "auto" if options.target is None else next(iter(options.target))
    estimated = mode != "auto" and os.environ.get(RATE_CONTROL_ENV, "") != "exhaustive"
    measured = measure_model(items, fixed, options, mode, executor, window, progress, workers, estimated)
    if estimated:
        _settle(items, fixed, measured, heads, options, executor, window, progress, workers)
    planned = [m for m in measured if isinstance(m, ratecontrol.TensorPlan)]
    summary: dict[str, Any] = {"mode": mode, "max_error": options.recorded_max_error, "target": options.target}
    if options.objective != "sse":  # absent: the default, as in the options
        summary["objective"] = options.objective
    summary["candidates"] = sum(t.measured for t in planned)
    if mode == "auto":
        for t in planned:
            best = ratecontrol.fewest_bytes(t.points, options.max_error)
            t.chosen = best if best is not None else min(range(len(t.points)), key=lambda i: t.points[i].sq_error)
        summary["slope"] = None
    else:
        summary = _allocate_to_target(items, measured, heads, summary, options)
    reason = ratecontrol.plan_reason(summary)
    choices = [
        Choice(parse_pipeline(m.points[m.chosen].pipeline), reason) if isinstance(m, ratecontrol.TensorPlan) else c
        for m, c in zip(measured, fixed, strict=True)
    ]
    return Plan(choices, summary)


RATE_CONTROL_ENV = "SPARSIFY_RATE_CONTROL"
"""Set to ``exhaustive`` (internal, for tests and benchmarks): a target measures every candidate of
every tensor exactly, as before estimates existed -- the reference the estimated plan is compared to."""

# A planned tensor of at least this many bytes has its candidates measured in as many shares as there
# are workers (so that one big tensor does not leave the other workers idle).
SHARE_BYTES = 16 << 20


def measure_model(
    items: list[Item],
    fixed: list[Choice],
    options: Options,
    mode: str,
    executor: Executor,
    window: int,
    progress: Progress | None = None,
    workers: int = 1,
    estimated: bool = False,
) -> list[Any]:
    """Per item: the manifest record of its fixed pipeline (rules, lossless defaults), or its
    :class:`ratecontrol.TensorPlan` with every candidate of ``mode`` measured -- or, ``estimated``,
    estimated on a sample where the tensor is big enough (a big tensor's candidates in ``workers``
    shares, joined in candidate order: the same plan as in one)."""
    requests = [
        (index, mode if choice.reason == "default" else None, None)  # the rules fixed the others
        for index, choice in enumerate(fixed)
    ]
    return _measure(items, fixed, options, requests, executor, window, progress, workers, estimated, "planning")


def _measure(
    items: list[Item],
    fixed: list[Choice],
    options: Options,
    requests: list[tuple[int, str | None, tuple[str, ...] | None]],
    executor: Executor,
    window: int,
    progress: Progress | None,
    workers: int,
    estimated: bool,
    label: str,
) -> list[Any]:
    """The results of ``requests`` -- (item index, mode or None for its fixed pipeline, candidates
    or None for all of the mode's) -- in request order: a record or a :class:`ratecontrol.TensorPlan`.
    Exact measurements of a big tensor are split in ``workers`` shares of its candidates."""
    sizes = [nbytes_of(items[index].info.dtype, items[index].info.shape) for index, _, _ in requests]
    jobs, owner = [], []
    for request, ((index, planned, candidates), size) in enumerate(zip(requests, sizes, strict=True)):
        item = items[index]
        big = planned and workers > 1 and size >= SHARE_BYTES
        shares = min(workers, len(candidates)) if big and candidates is not None else workers if big else 1
        for share in range(shares):
            job = work.MeasureJob(
                item.source,
                item.info,
                fixed[index],
                options.seed,
                planned,
                options.max_error,
                (share, shares),
                candidates,
                estimated,
                options.importance_file,
            )
            jobs.append(job)
            owner.append(request)
    total, done, count = sum(sizes), [0, 0], len(jobs)
    # the biggest jobs first, so that no worker is left with one at the end (results by job)
    order = sorted(range(count), key=lambda j: (-(sizes[owner[j]] // jobs[j].share[1]), j))

    def advance(index: int, _result) -> None:
        job = order[index]
        done[0] += 1
        done[1] += sizes[owner[job]] // jobs[job].share[1]
        if progress:
            progress(f"{label} {items[requests[owner[job]][0]].info.name}", done[0], count, done[1], total)

    if progress:
        progress(label, 0, count, 0, total)
    results: list[Any] = [None] * count
    ordered = run_all(executor, work.measure, [jobs[j] for j in order], window, advance)
    for j, result in zip(order, ordered, strict=True):
        results[j] = result
    measured: list[Any] = [None] * len(requests)
    split = set()
    for request, result in zip(owner, results, strict=True):
        if measured[request] is None:
            measured[request] = result
        else:  # the next share of a big tensor's candidates
            measured[request].points += result.points
            measured[request].measured += result.measured
            split.add(request)
    for request in sorted(split):
        if options.max_error is not None:  # the bound of ratecontrol.plan_tensor, on the joined shares
            plan = measured[request]
            plan.points = [p for p in plan.points if p.rel_error <= options.max_error] or plan.points
    return measured


# Rounds of "allocate on the estimates, measure exactly what was chosen and its hull neighbours".
_SETTLE_ROUNDS = 3


def _settle(
    items: list[Item],
    fixed: list[Choice],
    measured: list[Any],
    heads: list[dict[str, Any]],
    options: Options,
    executor: Executor,
    window: int,
    progress: Progress | None,
    workers: int,
) -> None:
    """Turn the estimated plans of ``measured`` into exact ones, measuring few candidates: allocate
    to the target on the estimates, measure exactly the chosen candidate of every tensor and its
    neighbours on the tensor's lower hull, recalibrate the tensor's other estimates on them, or on the
    model's exact points of their family where the tensor has none (:func:`ratecontrol.substitute`);
    then, while the allocation chooses an estimate and promises a better plan than the exact points
    allow (:func:`_promising`) or chooses a family new to a tensor (:func:`_new_family_chosen`),
    measure the chosen ones (at most :data:`_SETTLE_ROUNDS` rounds in all). Then only the exact
    points are kept: the allocation to the target (:func:`_allocate_to_target`) chooses among them,
    on exact figures."""
    indices = [i for i, m in enumerate(measured) if isinstance(m, ratecontrol.TensorPlan)]
    planned = [measured[i] for i in indices]
    budget, overhead, planned_sq_norm = _budget(measured, heads, options)
    mode = next(iter(options.target))
    error = options.target.get("error")
    weights = ratecontrol.objective_weights(options.objective, planned)
    for round_ in range(_SETTLE_ROUNDS):
        outcome = ratecontrol.allocate(planned, overhead, 0.0, planned_sq_norm, budget, error, weights)
        # later rounds measure only what is chosen: the first measured a step either way
        wanted = [tuple(t.points[j].pipeline for j in ratecontrol.near_choice(t, not round_)) for t in planned]
        requests = [(indices[k], mode, want) for k, want in enumerate(wanted) if want]
        if not requests or (
            round_
            and not _new_family_chosen(planned)
            and not _promising(planned, outcome, overhead, planned_sq_norm, budget, error, weights)
        ):
            break
        results = _measure(items, fixed, options, requests, executor, window, progress, workers, False, "measuring")
        exact = iter(results)
        for t, want in zip(planned, wanted, strict=True):
            if want:
                ratecontrol.substitute(t, want, next(exact).points)
        shared = ratecontrol.family_corrections(planned)  # for the families a tensor has no exact point of
        for t in planned:
            ratecontrol.substitute(t, (), [], shared)
    for t in planned:
        t.points = [p for p in t.points if p.exact]
    # a tensor left without an exact point (every candidate measured did not apply): all of them
    missing = [k for k, t in enumerate(planned) if not t.points]
    requests = [(indices[k], mode, None) for k in missing]
    for k, result in zip(
        missing, _measure(items, fixed, options, requests, executor, window, None, workers, False, ""), strict=True
    ):
        planned[k].points = result.points
    for t in planned:
        if options.max_error is not None:
            t.points = [p for p in t.points if p.rel_error <= options.max_error] or t.points
        t.chosen = 0


def _new_family_chosen(planned: list[ratecontrol.TensorPlan]) -> bool:
    """Whether the allocation chose, for some tensor, an estimate of a family (:func:`ratecontrol.family`)
    that the tensor has no exact point of: an estimate corrected by the model's figures only, worth a
    measurement whatever it promises (the allocation on estimates can do worse than on the exact points)."""
    for t in planned:
        chosen = t.points[t.chosen]
        if not chosen.exact and ratecontrol.family(chosen.pipeline) not in {
            ratecontrol.family(p.pipeline) for p in t.points if p.exact
        }:
            return True
    return False


# A round of exact measurements after the first is run only if the estimates promise an allocation
# better than the exact points' by more than this fraction (of the error, or of the bytes).
_SETTLE_GAIN = 0.002


def _promising(
    planned: list[ratecontrol.TensorPlan],
    outcome: dict[str, Any],
    overhead: float,
    sq_norm: float,
    budget: float | None,
    error: float | None,
    weights: list[float] | None = None,
) -> bool:
    """Whether ``outcome`` (the allocation on exact and estimated points) beats the best allocation
    on the exact points alone by more than :data:`_SETTLE_GAIN` -- or that one does not meet the target.
    (With objective ``weights`` or an importance the allocations are compared by their distortion.)"""
    chosen = [t.points[t.chosen] for t in planned]
    exact = [ratecontrol.TensorPlan(t.name, t.sq_norm, [p for p in t.points if p.exact]) for t in planned]
    if not all(t.points for t in exact):
        return True
    alone = ratecontrol.allocate(exact, overhead, 0.0, sq_norm, budget, error, weights)
    if not alone["met"]:
        return True
    weighted = weights is not None or any(p.distortion is not None for p in chosen)
    if budget is None or not weighted:
        key = "predicted_bytes" if budget is None else "predicted_weighted_rel_error"
        return outcome["met"] and outcome[key] < alone[key] * (1 - _SETTLE_GAIN)
    ours = _distortion(chosen, weights)
    theirs = _distortion([t.points[t.chosen] for t in exact], weights)
    return outcome["met"] and ours < theirs * (1 - _SETTLE_GAIN)


def _distortion(points: list[ratecontrol.Point], weights: list[float] | None) -> float:
    """What the allocation minimises for these chosen points: their costs (distortion or squared
    error, :attr:`ratecontrol.Point.cost`), weighted."""
    if weights is None:
        return sum(p.cost for p in points)
    return sum(w * p.cost for w, p in zip(weights, points, strict=True))


def _budget(measured: list[Any], heads: list[dict[str, Any]], options: Options) -> tuple[float | None, float, float]:
    """(byte budget or None, bytes of everything but the planned tensors' points as the allocator
    counts them, the planned tensors' summed squared norm) for the options' target."""
    target = options.target
    source_bytes = sum(h["source"]["size"] for h in heads)
    budget = source_bytes / target["ratio"] if "ratio" in target else target.get("size")
    planned = [m for m in measured if isinstance(m, ratecontrol.TensorPlan)]
    # The error target is over the planned tensors: lossless ones would hide the others' error.
    planned_sq_norm = sum(t.sq_norm for t in planned)
    fixed_bytes = sum(m["stored_bytes"] + record_overhead(m) for m in measured if isinstance(m, dict))
    overhead = fixed_bytes + sum(len(json.dumps(h)) for h in heads)
    return budget, overhead, planned_sq_norm


def _allocate_to_target(
    items: list[Item], measured: list[Any], heads: list[dict[str, Any]], summary: dict[str, Any], options: Options
) -> dict[str, Any]:
    """Allocate the planned tensors to the options' target (sets each plan's ``chosen``); returns the
    plan's summary exactly as every manifest records it."""
    target = options.target
    planned = [m for m in measured if isinstance(m, ratecontrol.TensorPlan)]
    budget, overhead, planned_sq_norm = _budget(measured, heads, options)
    weights = ratecontrol.objective_weights(options.objective, planned)
    best = None  # (distortion, chosen indices, summary) of the best allocation whose exact size fits
    for round_ in range(_PLAN_ROUNDS_MAX):
        outcome = ratecontrol.allocate(planned, overhead, 0.0, planned_sq_norm, budget, target.get("error"), weights)
        estimate = outcome.pop("predicted_bytes")
        # The manifest records whether the plan fits, not the size itself (which the archive has): a
        # size inside the compressed manifest would change the size.
        plan = {**summary, **outcome, "budget_bytes": budget}
        if budget is None:
            return plan
        exact = _exact_size(items, measured, heads, plan, options.recorded_max_error)
        if not outcome["met"] and exact >= estimate:
            break  # not even the allocator's estimate fits: the cheapest allocation is the answer
        if outcome["met"] and exact <= budget:
            distortion = _distortion([t.points[t.chosen] for t in planned], weights)
            if best is None or distortion < best[0]:
                best = (distortion, [t.chosen for t in planned], plan)
            if exact == estimate or round_ + 1 >= _PLAN_ROUNDS:
                break
        # exact > budget >= estimate here, or a fit in an early round: the correction then loosens
        # the budget, to land closer to the target; past the early rounds only misses get here, and
        # the budget shrinks until the archives fit. An estimate that did not fit but was above the
        # exact size (the manifest compresses better than it assumes) is corrected the same way.
        overhead += exact - estimate
    if best is None:
        return {**plan, "met": False}
    for t, chosen_index in zip(planned, best[1], strict=True):
        t.chosen = chosen_index
    return best[2]


def _exact_size(items, measured, heads, plan: dict[str, Any], max_error: float | None) -> int:
    """The summed exact size of every archive for the current choices, ``plan`` in each manifest."""
    reason = ratecontrol.plan_reason(plan)
    records: list[list[dict[str, Any]]] = [[] for _ in heads]
    for item, m in zip(items, measured, strict=True):
        record = m if isinstance(m, dict) else {**m.points[m.chosen].record, "reason": reason}
        records[item.file].append(record)
    return sum(predicted_size(head, plan, rs, max_error) for head, rs in zip(heads, records, strict=True))
