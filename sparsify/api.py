"""The Python API: compress, inspect, decompress and verify weight files.

>>> import sparsify
>>> report = sparsify.compress("model.safetensors", pipeline="threshold:max_error=0.05")  # doctest: +SKIP
>>> report["totals"]["ratio"]  # doctest: +SKIP

The CLI is a thin shell over these functions. Each streams tensors one at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify import __version__, ratecontrol
from sparsify.archive import Archive, ArchiveWriter
from sparsify.archive.version import FORMAT_NAME, FORMAT_VERSION
from sparsify.archive.writer import archive_size
from sparsify.atomic import atomic_output
from sparsify.codec import encode_tensor, measure, sha256
from sparsify.errors import CorruptArchiveError, InputError, UsageError
from sparsify.io import EXTENSIONS, FORMATS, open_weights, writer_class
from sparsify.pipeline import Pipeline, parse_pipeline
from sparsify.report.model import SCHEMA_VERSION, build_report, record_overhead
from sparsify.rules import DEFAULT_MIN_SIZE, DEFAULT_PIPELINE, Choice, Rule, choose, load_rules_file, parse_rule

Progress = Callable[[str, int, int], None]
"""progress(tensor_name, index, count), called before each tensor."""


AUTO = "auto"
# What ``-p auto`` hands to the rules for the tensors it does not plan (their lossless coders), and
# what marks the tensors it plans (any lossy pipeline would do).
_AUTO_PLACEHOLDER = "quant:bits=8+zstd"


@dataclass(frozen=True)
class Options:
    """Validated compress options (see :func:`compress`)."""

    pipeline: Pipeline
    rules: tuple[Rule, ...]
    min_size: int
    max_error: float | None
    seed: int
    auto: bool = False
    target_ratio: float | None = None
    target_size: int | None = None
    target_error: float | None = None

    @property
    def target(self) -> dict[str, float] | None:
        """The whole-model target, if any: ``{"ratio": R}``, ``{"size": B}`` or ``{"error": E}``."""
        for key, value in (("ratio", self.target_ratio), ("size", self.target_size), ("error", self.target_error)):
            if value is not None:
                return {key: value}
        return None

    def as_manifest(self) -> dict[str, Any]:
        return {
            "pipeline": AUTO if self.auto else str(self.pipeline),
            "rules": [{"match": r.pattern, "pipeline": str(r.pipeline), "origin": r.origin} for r in self.rules],
            "min_size": self.min_size,
            "max_error": self.max_error,
            "seed": self.seed,
            "target": self.target,
        }


def resolve_options(
    pipeline: str | None = None,
    rules: Iterable[str] = (),
    rules_file: str | Path | None = None,
    min_size: int | None = None,
    max_error: float | None = None,
    seed: int = 0,
    target_ratio: float | None = None,
    target_size: int | None = None,
    target_error: float | None = None,
) -> Options:
    """Parse and validate compress options; UsageError before any file is touched."""
    parsed_rules = tuple(parse_rule(r) for r in rules)
    file = load_rules_file(Path(rules_file)) if rules_file is not None else None
    if file is not None:
        parsed_rules += file.rules
    text = pipeline or (str(file.pipeline) if file and file.pipeline else DEFAULT_PIPELINE)
    if min_size is None:
        min_size = file.min_size if file and file.min_size is not None else DEFAULT_MIN_SIZE
    if min_size < 0:
        raise UsageError(f"min_size must be >= 0, not {min_size}")
    if max_error is not None and not max_error >= 0:
        raise UsageError(f"max_error must be >= 0, not {max_error}")
    targets = [
        n
        for n, v in (("target_ratio", target_ratio), ("target_size", target_size), ("target_error", target_error))
        if v is not None
    ]
    if len(targets) > 1:
        raise UsageError(f"give one target, not {' and '.join(targets)}")
    if target_ratio is not None and not (math.isfinite(target_ratio) and target_ratio > 0):
        raise UsageError(f"target_ratio must be a number > 0, not {target_ratio}")
    if target_size is not None and not target_size > 0:
        raise UsageError(f"target_size must be > 0 bytes, not {target_size}")
    if target_error is not None and not (math.isfinite(target_error) and target_error >= 0):
        raise UsageError(f"target_error must be >= 0, not {target_error}")
    auto = text.strip() == AUTO
    if targets and not auto and pipeline is not None:
        raise UsageError(f"a target chooses each tensor's pipeline itself: use -p auto (or no -p), not {pipeline!r}")
    auto = auto or bool(targets)
    if auto and not targets and max_error is None:
        raise UsageError(
            "-p auto needs a bound or a target: --max-error E, --target-ratio R, --target-size B or --target-error E"
        )
    return Options(
        parse_pipeline(_AUTO_PLACEHOLDER if auto else text),
        parsed_rules,
        int(min_size),
        max_error,
        int(seed),
        auto,
        target_ratio,
        None if target_size is None else int(target_size),
        target_error,
    )


def default_archive_path(source: Path) -> Path:
    """``model.safetensors`` -> ``model.sparsify`` (beside the input)."""
    return Path(source).with_suffix(".sparsify")


def compress(
    source: str | Path,
    output: str | Path | None = None,
    *,
    pipeline: str | None = None,
    rules: Iterable[str] = (),
    rules_file: str | Path | None = None,
    min_size: int | None = None,
    max_error: float | None = None,
    seed: int = 0,
    force: bool = False,
    progress: Progress | None = None,
    target_ratio: float | None = None,
    target_size: int | None = None,
    target_error: float | None = None,
) -> dict[str, Any]:
    """Compress a weight file into an archive; returns the report (see :mod:`sparsify.report.model`).

    pipeline:   default pipeline, e.g. ``"threshold:max_error=0.05"`` (default ``keep+zstd``), or
                ``"auto"``: per tensor, the candidate with the fewest bytes within ``max_error``
                (:mod:`sparsify.ratecontrol`).
    rules:      ``"GLOB=PIPELINE"`` strings, first match wins; then the rules of ``rules_file`` (TOML).
    min_size:   tensors with fewer elements are stored losslessly unless a rule names them (1024).
    max_error:  gate: the report's ``gate.passed`` is False when any tensor's rel. error exceeds it
                (the archive is written all the same and records the failure); with ``auto`` or a
                target, also the bound every chosen candidate meets.
    target_ratio, target_size, target_error: one whole-model target (source bytes / archive bytes,
                archive bytes, or weighted rel. error); the tensors' pipelines are chosen for least
                total error within the size (or fewest bytes within the error). The report's
                ``plan`` says what was chosen, the slope, and whether the target was met.
    """
    options = resolve_options(
        pipeline, rules, rules_file, min_size, max_error, seed, target_ratio, target_size, target_error
    )
    source = Path(source)
    output = Path(output) if output is not None else default_archive_path(source)
    with open_weights(source) as reader:
        meta = reader.source_meta()
        infos = reader.tensors()
        source_record = {
            "name": source.name,
            "format": reader.format,
            "size": source.stat().st_size,
            "sha256": _file_sha256(source),
            "summary": meta.summary,
            "rebuild": meta.rebuild,
        }
        reader.check_unchanged()  # the checksum above is of the file the reader opened
        with atomic_output(output, force, (source,)) as temp:
            _write_archive(reader, infos, meta, source_record, temp, options, progress)
    with Archive(output) as archive:
        return build_report(archive, command="compress")


def _write_archive(reader, infos, meta, source_record, temp: Path, options: Options, progress) -> None:
    """Plan, encode and write every tensor of ``reader`` into the archive at ``temp``."""
    writer = ArchiveWriter(temp)
    try:
        blobs = {name: writer.add_blob(name, data) for name, data in meta.blobs.items()}
        head = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tool": {"name": "sparsify", "version": __version__},
            "source": {**source_record, "blobs": blobs},
            "options": options.as_manifest(),
        }
        plan = _plan(reader, infos, options, head, progress) if options.auto else None
        records = []
        for index, info in enumerate(infos):
            if progress:
                progress(info.name, index, len(infos))
            array = reader.read(info.name)
            choice = choose(info, options.rules, options.pipeline, options.min_size)
            if plan is not None and info.name in plan.choices:
                choice = plan.choices[info.name]
            encoded = encode_tensor(array, info, choice, options.seed)
            writer.add_tensor(encoded)
            records.append(encoded.record)
        reader.check_unchanged()  # never an archive of a file that changed while it was read
        writer.finish(_manifest(head, plan.summary if plan else None, records, options.max_error))
    finally:
        writer.close()


def _manifest(
    head: dict[str, Any], plan: dict[str, Any] | None, records: list[dict[str, Any]], max_error: float | None
) -> dict[str, Any]:
    """The archive's manifest: the file-level ``head``, the plan, the tensors' records and the gate."""
    gate = _gate(((r["name"], r["metrics"]["rel_error"]) for r in records), max_error)
    return {**head, "plan": plan, "tensors": records, "gate": gate}


# Rounds of re-allocation that correct the byte budget by the exactly predicted archive size in both
# directions; after them a fit ends the search and a miss tightens the budget (at most _MAX rounds).
_PLAN_ROUNDS = 4
_PLAN_ROUNDS_MAX = 64


def _plan(reader, infos, options: Options, head: dict[str, Any], progress: Progress | None) -> ratecontrol.Plan:
    """Pass 1 of ``auto`` and targets: measure every planned tensor's candidates, then choose.

    The archive's size for a choice is computed exactly (:func:`sparsify.archive.writer.archive_size`)
    from the candidates' records and the very manifest that will be written (plan figures included),
    and the allocation is corrected by its difference from the allocator's running estimate. Of the
    allocations tried, the one with the least error whose exact size fits is kept, so a byte budget
    that can be met is met by construction, not by the luck of a manifest's last digits.
    """
    mode = "auto" if options.target is None else next(iter(options.target))
    records, planned, fixed_bytes = _measure(reader, infos, options, mode, progress)
    summary: dict[str, Any] = {"mode": mode, "max_error": options.max_error, "target": options.target}
    summary["candidates"] = sum(t.measured for t in planned)
    if mode == "auto":
        for t in planned:
            best = ratecontrol.fewest_bytes(t.points, options.max_error)
            t.chosen = best if best is not None else min(range(len(t.points)), key=lambda i: t.points[i].sq_error)
        summary["slope"] = None
    else:
        summary = _allocate_to_target(records, planned, fixed_bytes, summary, head, options)
    choices = {}
    for t in planned:
        point = t.points[t.chosen]
        choices[t.name] = Choice(parse_pipeline(point.pipeline), ratecontrol.plan_reason(summary))
    return ratecontrol.Plan(choices, summary)


def _allocate_to_target(records, planned, fixed_bytes: int, summary, head, options: Options) -> dict[str, Any]:
    """Allocate ``planned`` to the options' target (sets each plan's ``chosen``); returns the plan's
    summary exactly as the manifest records it."""
    target = options.target
    budget = head["source"]["size"] / target["ratio"] if "ratio" in target else target.get("size")
    # The error target is over the planned tensors: lossless ones would hide the others' error.
    planned_sq_norm = sum(t.sq_norm for t in planned)
    overhead = fixed_bytes + len(json.dumps(head))
    best = None  # (sq error, chosen indices, summary) of the best allocation whose exact size fits
    for round_ in range(_PLAN_ROUNDS_MAX):
        outcome = ratecontrol.allocate(planned, overhead, 0.0, planned_sq_norm, budget, target.get("error"))
        estimate = outcome.pop("predicted_bytes")
        # The manifest records whether the plan fits, not the size itself (which the archive has): a
        # size inside the compressed manifest would change the size.
        plan = {**summary, **outcome, "budget_bytes": budget}
        if budget is None:
            return plan
        reason = ratecontrol.plan_reason(plan)
        chosen = [r if isinstance(r, dict) else {**r.points[r.chosen].record, "reason": reason} for r in records]
        exact = _predicted_size(head, plan, chosen, options.max_error)
        if not outcome["met"]:
            break  # not even the allocator's estimate fits: the cheapest allocation is the answer
        if exact <= budget:
            sq_error = sum(t.points[t.chosen].sq_error for t in planned)
            if best is None or sq_error < best[0]:
                best = (sq_error, [t.chosen for t in planned], plan)
            if exact == estimate or round_ + 1 >= _PLAN_ROUNDS:
                break
        # exact > budget >= estimate here, or a fit in an early round: the correction then loosens
        # the budget, to land closer to the target; past the early rounds only misses get here, and
        # the budget shrinks until the archive fits.
        overhead += exact - estimate
    if best is None:
        return {**plan, "met": False}
    for t, chosen_index in zip(planned, best[1], strict=True):
        t.chosen = chosen_index
    return best[2]


def _measure(reader, infos, options: Options, mode: str, progress: Progress | None):
    """Encode every tensor the rules leave to the default with each of its candidates.

    Returns ``(records, planned, fixed_bytes)``: per tensor in file order either the record of its
    fixed pipeline (rules, lossless defaults) or its :class:`ratecontrol.TensorPlan`; the plans; and
    the fixed tensors' bytes with their manifest share.
    """
    planned: list[ratecontrol.TensorPlan] = []
    records: list[dict[str, Any] | ratecontrol.TensorPlan] = []
    fixed_bytes = 0
    for index, info in enumerate(infos):
        if progress:
            progress(f"{info.name} (planning)", index, len(infos))
        array = reader.read(info.name)
        base = choose(info, options.rules, options.pipeline, options.min_size)
        if base.reason != "default":
            encoded = encode_tensor(array, info, base, options.seed)
            fixed_bytes += encoded.record["stored_bytes"] + record_overhead(encoded.record)
            records.append(encoded.record)
            continue
        candidates = ratecontrol.candidates_for(mode, array, options.max_error)
        planned.append(ratecontrol.plan_tensor(array, info, candidates, options.seed, options.max_error))
        records.append(planned[-1])
    return records, planned, fixed_bytes


def rate_distortion(
    source: str | Path,
    *,
    rules: Iterable[str] = (),
    rules_file: str | Path | None = None,
    min_size: int | None = None,
    max_error: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Rate-distortion curves of a model (for ``sparsify plot``), from the rate controller's
    candidates: the best pipeline per tensor at a sweep of budgets (the Lagrangian allocation), one
    uniform step for all tensors, and the usual RTN settings. Points are ``{"bits_per_weight",
    "rel_error"}`` (whole archive bits per weight as predicted; weighted rel. error over all
    tensors, as in the report). Nothing is written.
    """
    options = resolve_options("auto", rules, rules_file, min_size, max_error, seed, target_ratio=1.0)
    with open_weights(Path(source)) as reader:
        infos = reader.tensors()
        records, planned, fixed_bytes = _measure(reader, infos, options, "ratio", progress)
        fixed = [r for r in records if isinstance(r, dict)]
        numel = sum(i.numel for i in infos)
        fixed_sq = sum(r["metrics"]["sq_error"] or 0.0 for r in fixed)
        total_sq_norm = sum(r["metrics"]["sq_norm"] or 0.0 for r in fixed) + sum(t.sq_norm for t in planned)
        overhead = fixed_bytes + len(json.dumps(reader.source_meta().summary))
    return ratecontrol.model_curves(planned, overhead, fixed_sq, total_sq_norm, numel)


def _predicted_size(head, summary, records: list[dict[str, Any]], max_error: float | None) -> int:
    """The exact archive size for these tensor records (the plan's own figures in the manifest are
    taken from the allocation, so they have the final ones' length to within a few bytes)."""
    parts = list(head["source"]["blobs"].values()) + [p for r in records for p in r["parts"]]
    return archive_size(_manifest(head, summary, records, max_error), parts)


def _gate(errors: Iterable[tuple[str, float | None]], max_error: float | None) -> dict[str, Any] | None:
    """The ``--max-error`` gate over ``(tensor name, rel. error)`` pairs; None errors (not measured) pass."""
    if max_error is None:
        return None
    failures = [name for name, error in errors if error is not None and not error <= max_error]
    return {"max_error": max_error, "passed": not failures, "failures": failures}


def _file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes; InputError if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest()


def inspect(archive: str | Path) -> dict[str, Any]:
    """The report of an archive, from its manifest alone (no part is read or decoded)."""
    with Archive(Path(archive)) as opened:
        return build_report(opened, command="inspect")


def decompress(
    archive: str | Path,
    output: str | Path | None = None,
    *,
    format: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Decode an archive back to a dense weight file; returns the path written.

    format: ``safetensors``, ``hdf5`` or ``npz``; default the source's own format, rebuilt exactly
    (same header/metadata, groups and attributes, key order).
    """
    archive = Path(archive)
    with Archive(archive) as opened:
        source = opened.manifest["source"]
        fmt = format or source["format"]
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        if output is None:
            name = Path(source["name"])
            output = archive.parent / (name.name if fmt == source["format"] else name.stem + EXTENSIONS[fmt])
        output = Path(output)
        infos = opened.tensor_infos()
        same_format = fmt == source["format"]
        meta = opened.source_meta()
        with atomic_output(output, force, (archive,)) as temp:
            try:
                writer = writer_class(fmt)(temp, infos, meta, same_format)
            except CorruptArchiveError as exc:
                raise CorruptArchiveError(f"{archive}: {exc}") from None
            with writer:
                for index, (info, record) in enumerate(zip(infos, opened.tensors, strict=True)):
                    if progress:
                        progress(info.name, index, len(infos))
                    writer.write(info.name, opened.decode(record))
            if writer.rebuilds_bytes and all(t["metrics"]["exact"] for t in opened.tensors):
                _check_rebuilt(temp, source, archive)
    return output


def _check_rebuilt(rebuilt: Path, source: dict[str, Any], archive: Path) -> None:
    """A lossless archive rebuilds its source file exactly: CorruptArchiveError (and no output) if
    the rebuilt bytes differ from the source checksum the manifest records."""
    if rebuilt.stat().st_size != source["size"] or _file_sha256(rebuilt) != source["sha256"]:
        raise CorruptArchiveError(
            f"{archive}: the rebuilt {source['name']} differs from the file that was compressed "
            "(its size or checksum; damaged manifest?); nothing written"
        )


@dataclass
class Verification:
    """The outcome of :func:`verify`: ``ok`` unless a check or the gate failed."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and (self.gate is None or self.gate["passed"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "verify",
            "ok": self.ok,
            "checked": self.checked,
            "problems": self.problems,
            "tensors": self.tensors,
            "gate": self.gate,
        }


def verify(
    archive: str | Path,
    *,
    against: str | Path | None = None,
    max_error: float | None = None,
    progress: Progress | None = None,
) -> Verification:
    """Decode every tensor (every part's checksum checked); lossless tensors must match their
    recorded checksum. With ``against``, measure each tensor's error against that original file
    (its tensors must match by name, shape and dtype); ``max_error`` gates the rel. errors."""
    result = Verification()
    with Archive(Path(archive)) as opened:
        original = open_weights(Path(against)) if against is not None else None
        try:
            by_name = {i.name: i for i in original.tensors()} if original else {}
            for index, record in enumerate(opened.tensors):
                if progress:
                    progress(record["name"], index, len(opened.tensors))
                decoded = opened.decode(record)
                # decode checked the bytes against the record's checksum: exact where it promises so
                entry = {"name": record["name"], "exact": bool(record["metrics"]["exact"])}
                if original is not None:
                    entry.update(_compare(record, decoded, original, by_name, result.problems))
                else:
                    entry["rel_error"] = record["metrics"]["rel_error"]
                result.tensors.append(entry)
                result.checked += 1
            if original is not None:
                missing = sorted(set(by_name) - {r["name"] for r in opened.tensors})
                result.problems += [f"{name}: in {against} but not in the archive" for name in missing]
        finally:
            if original is not None:
                original.close()
    result.gate = _gate(((t["name"], t.get("rel_error")) for t in result.tensors), max_error)
    return result


def _compare(record, decoded, original, by_name, problems: list[str]) -> dict[str, Any]:
    info = by_name.get(record["name"])
    if info is None:
        problems.append(f"{record['name']}: not in the original file")
        return {"rel_error": None}
    if info.dtype != record["dtype"] or list(info.shape) != record["shape"]:
        problems.append(
            f"{record['name']}: original is {info.dtype}{list(info.shape)}, archive {record['dtype']}{record['shape']}"
        )
        return {"rel_error": None}
    array = original.read(info.name)
    if sha256(array) != record["sha256"]:
        problems.append(f"{record['name']}: the original file's tensor differs from the one compressed")
    metrics = measure(array, decoded, info.dtype)
    return {"rel_error": metrics["rel_error"], "max_abs_error": metrics["max_abs_error"]}
