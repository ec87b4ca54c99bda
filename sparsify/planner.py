"""Plan the model: the pipeline of every tensor of every weight file, chosen once for the whole model.

Rules and the lossless defaults fix most tensors' pipelines (:func:`sparsify.rules.choose`). With
``-p auto`` or a whole-model target the rest are planned: every candidate of every such tensor is
measured (:func:`sparsify.work.measure`, mapped over the executor: the measurements are the costly
part), then :mod:`sparsify.ratecontrol` allocates across all tensors of all files at once. A target
is met over the sum of the archives (one per weight file): each archive's size is computed exactly
from the very manifest it will hold (:func:`sparsify.archive.manifest.predicted_size`), and of the
allocations tried, the least-error one that fits is kept -- a byte budget that can be met is met by
construction.
"""

from __future__ import annotations

import json
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
    measured = measure_model(items, fixed, options, mode, executor, window, progress, workers)
    planned = [m for m in measured if isinstance(m, ratecontrol.TensorPlan)]
    summary: dict[str, Any] = {"mode": mode, "max_error": options.max_error, "target": options.target}
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
) -> list[Any]:
    """Per item: the manifest record of its fixed pipeline (rules, lossless defaults), or its
    :class:`ratecontrol.TensorPlan` with every candidate of ``mode`` measured (a big tensor's
    candidates in ``workers`` shares, joined in candidate order: the same plan as in one)."""
    sizes = [nbytes_of(item.info.dtype, item.info.shape) for item in items]
    jobs, owner = [], []
    for index, (item, choice) in enumerate(zip(items, fixed, strict=True)):
        planned = mode if choice.reason == "default" else None  # the rules fixed the others
        shares = workers if planned and workers > 1 and sizes[index] >= SHARE_BYTES else 1
        for share in range(shares):
            job = work.MeasureJob(
                item.source, item.info, choice, options.seed, planned, options.max_error, (share, shares)
            )
            jobs.append(job)
            owner.append(index)
    total, done, count = sum(sizes), [0, 0], len(jobs)

    def advance(index: int, _result) -> None:
        done[0] += 1
        done[1] += sizes[owner[index]] // jobs[index].share[1]
        if progress:
            progress(f"planning {items[owner[index]].info.name}", done[0], count, done[1], total)

    if progress:
        progress("planning", 0, count, 0, total)
    results = run_all(executor, work.measure, jobs, window, advance)
    measured: list[Any] = [None] * len(items)
    split = set()
    for index, result in zip(owner, results, strict=True):
        if measured[index] is None:
            measured[index] = result
        else:  # the next share of a big tensor's candidates
            measured[index].points += result.points
            measured[index].measured += result.measured
            split.add(index)
    for index in sorted(split):
        if options.max_error is not None:  # the bound of ratecontrol.plan_tensor, on the joined shares
            plan = measured[index]
            plan.points = [p for p in plan.points if p.rel_error <= options.max_error] or plan.points
    return measured


def _allocate_to_target(
    items: list[Item], measured: list[Any], heads: list[dict[str, Any]], summary: dict[str, Any], options: Options
) -> dict[str, Any]:
    """Allocate the planned tensors to the options' target (sets each plan's ``chosen``); returns the
    plan's summary exactly as every manifest records it."""
    target = options.target
    source_bytes = sum(h["source"]["size"] for h in heads)
    budget = source_bytes / target["ratio"] if "ratio" in target else target.get("size")
    planned = [m for m in measured if isinstance(m, ratecontrol.TensorPlan)]
    # The error target is over the planned tensors: lossless ones would hide the others' error.
    planned_sq_norm = sum(t.sq_norm for t in planned)
    fixed_bytes = sum(m["stored_bytes"] + record_overhead(m) for m in measured if isinstance(m, dict))
    overhead = fixed_bytes + sum(len(json.dumps(h)) for h in heads)
    best = None  # (sq error, chosen indices, summary) of the best allocation whose exact size fits
    for round_ in range(_PLAN_ROUNDS_MAX):
        outcome = ratecontrol.allocate(planned, overhead, 0.0, planned_sq_norm, budget, target.get("error"))
        estimate = outcome.pop("predicted_bytes")
        # The manifest records whether the plan fits, not the size itself (which the archive has): a
        # size inside the compressed manifest would change the size.
        plan = {**summary, **outcome, "budget_bytes": budget}
        if budget is None:
            return plan
        exact = _exact_size(items, measured, heads, plan, options.max_error)
        if not outcome["met"] and exact >= estimate:
            break  # not even the allocator's estimate fits: the cheapest allocation is the answer
        if outcome["met"] and exact <= budget:
            sq_error = sum(t.points[t.chosen].sq_error for t in planned)
            if best is None or sq_error < best[0]:
                best = (sq_error, [t.chosen for t in planned], plan)
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
