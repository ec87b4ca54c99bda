"""The Python API: compress, inspect, decompress and verify weight files and model folders.

>>> import sparsify
>>> report = sparsify.compress("model.safetensors", pipeline="threshold:max_error=0.05")  # doctest: +SKIP
>>> report["totals"]["ratio"]  # doctest: +SKIP

The CLI is a thin shell over these functions. ``compress`` runs in phases: read (the model's weight
files, their tensor lists and checksums) -> plan (every tensor's pipeline, for the whole model:
:mod:`sparsify.planner`) -> encode (:func:`sparsify.work.encode`, one tensor per call, mapped over
the executor: this process, a process pool or a Dask cluster) -> write (each archive, tensors in
file order) -> report.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sparsify import __version__, dtypes, planner, work
from sparsify.archive import Archive, ArchiveWriter
from sparsify.archive.folder import (
    INDEX_FORMAT,
    INDEX_NAME,
    INDEX_VERSION,
    archive_name,
    check_names,
    index_text,
    is_folder_archive,
    open_member,
    read_index,
)
from sparsify.archive.manifest import build_manifest, gate
from sparsify.archive.version import FORMAT_NAME, FORMAT_VERSION
from sparsify.archive.writer import code_blob, inline_text
from sparsify.atomic import (
    atomic_folder,
    atomic_output,
    check_destination,
    check_folder_destination,
    scratch_folder,
)
from sparsify.checksum import ALGORITHM, Hasher, algorithm_of, file_checksum, matches
from sparsify.codec import measure
from sparsify.dtypes import nbytes_of
from sparsify.errors import CorruptArchiveError, InputError, UsageError
from sparsify.executor import InlineExecutor, Workers, open_executor, ordered_map
from sparsify.inspection import inspect
from sparsify.io import EXTENSIONS, FORMATS, open_weights, reader_class, writer_class
from sparsify.model import Model, open_model
from sparsify.options import Options, resolve_options, with_importance
from sparsify.report.model import SCHEMA_VERSION

Progress = Callable[[str, int, int, int, int], None]
"""progress(label, tensors done, tensor count, bytes done, bytes in all), called as work completes."""

__all__ = ["compress", "decompress", "inspect", "verify", "rate_distortion", "resolve_options", "Verification"]


def default_archive_path(source: Path) -> Path:
    """``model.safetensors`` -> ``model.sparsify`` (beside the input); a folder ``DIR`` (or its
    shard index) -> ``DIR.sparsify``."""
    source = Path(source)
    if source.is_dir():
        return source.with_name(source.name + ".sparsify")
    if source.name.endswith(".safetensors.index.json"):
        root = source.resolve().parent
        return root.with_name(root.name + ".sparsify")
    return source.with_suffix(".sparsify")


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
    objective: str | None = None,
    importance: str | Path | None = None,
    jobs: int | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Compress a weight file or a model folder; returns the report (see :mod:`sparsify.report.model`).

    source:     a weight file (safetensors, HDF5, npz) -> one archive; a folder, or its
                ``*.safetensors.index.json`` -> a folder archive (one archive per weight file, the
                other files carried, ``sparsify.index.json``; docs/FORMAT.md §13).
    pipeline:   default pipeline, e.g. ``"threshold:max_error=0.05"`` (default ``keep+zstd``), or
                ``"auto"``: per tensor, the candidate with the fewest bytes within ``max_error``
                (:mod:`sparsify.ratecontrol`).
    rules:      ``"GLOB=PIPELINE"`` strings, first match wins; then the rules of ``rules_file`` (TOML).
                They match tensor names in every weight file.
    min_size:   tensors with fewer elements are stored losslessly unless a rule names them (1024).
    max_error:  gate: the report's ``gate.passed`` is False when any tensor's rel. error exceeds it
                (the archive is written all the same and records the failure); with ``auto`` or a
                target, also the bound every chosen candidate meets.
    target_ratio, target_size, target_error: one whole-model target (weight bytes / archive bytes,
                archive bytes, or weighted rel. error) over every tensor of every weight file; the
                tensors' pipelines are chosen for least total error within the size (or fewest bytes
                within the error). The report's ``plan`` says what was chosen and whether it was met.
    objective:  what a size target minimises: ``"sse"`` (default) the total squared error,
                ``"relative"`` the sum of the tensors' squared relative errors
                (:data:`sparsify.ratecontrol.OBJECTIVES`).
    importance: a safetensors file of importance vectors named after the model's tensors
                (:mod:`sparsify.importance`; record one with :func:`sparsify.importance.recorder.record_importance`):
                a size target then minimises the importance-weighted squared error Σ a ΔW².
    jobs:       worker processes (default: every core, or 1 -- all in this process -- for models
                under 8 MB). The archive's bytes are the same for every value.
    scheduler:  a dask.distributed scheduler address (or ``SPARSIFY_SCHEDULER``): the tensors are
                encoded on that cluster, whose workers must see the input at the same path.
    """
    options = resolve_options(
        pipeline,
        rules,
        rules_file,
        min_size,
        max_error,
        seed,
        target_ratio,
        target_size,
        target_error,
        objective,
        importance,
    )
    model = open_model(source)
    output = Path(output) if output is not None else default_archive_path(model.source)
    if model.is_folder:
        check_folder_destination(output, force, (model.root,), _replaceable_archive)
        for names in ([archive_name(w.name) for w in model.weights], [w.name for w in model.weights]):
            check_names(names + list(model.carried), InputError, f"{model.root} (as a folder archive)")
    else:
        check_destination(output, force, (model.source,))
    weight_bytes = sum(w.path.stat().st_size for w in model.weights)
    with open_executor(jobs, scheduler, weight_bytes) as workers, contextlib.ExitStack() as stack:
        try:
            read = _read_model(model, options, workers, stack)
            options = read.options  # with the importance file checked against the model
            if options.importance_file is not None and options.importance_file.has_inputs:
                # the feedback factors, made once per tensor and reused by the planning rounds and the write
                factors = str(stack.enter_context(scratch_folder(output, "factors")))
                options = replace(options, importance_file=replace(options.importance_file, factor_folder=factors))
            plan = planner.plan_model(
                read.items, read.heads, options, workers.executor, read.window, progress, workers.count
            )
            # local workers hand their coded parts over in spool files, not through pipes
            spool = stack.enter_context(scratch_folder(output)) if workers.local_processes else None
            if model.is_folder:
                with atomic_folder(output, force, (model.root,), _replaceable_archive) as temp:
                    _write_archives(read, plan, options, workers.executor, progress, temp, spool)
                    files = _carry_files(model, temp)
                    _write_index(model, read, plan, options, files, temp, workers)
            else:
                with atomic_output(output, force, (model.source,)) as temp:
                    _write_archives(read, plan, options, workers.executor, progress, temp, spool)
        finally:
            work.close_all()
    return inspect(output, command="compress")


@dataclass
class _ReadModel:
    """The read phase's outcome: each weight file's archive head and coded source blobs, and every
    tensor of the model (in writing order) with its weight file."""

    model: Model
    heads: list[dict[str, Any]]
    blobs: list[list[Any]]
    items: list[planner.Item]
    readers: list[Any]
    window: int
    counts: list[int]  # tensors per weight file
    options: Options


def _read_model(model: Model, options: Options, workers: Workers, stack) -> _ReadModel:
    """List every weight file's tensors and metadata; checksum the files (mapped over the executor);
    check the options' importance file against the tensors."""
    readers = [stack.enter_context(reader_class(w.format)(w.path)) for w in model.weights]
    infos = [list(reader.tensors()) for reader in readers]
    options = with_importance(options, {info.name: info for listed in infos for info in listed})
    if workers.local_processes:  # before the first job forks them
        dtypes.preload({info.dtype for listed in infos for info in listed})
    paths = [str(w.path.resolve()) for w in model.weights]  # as workers elsewhere see them
    digests = list(ordered_map(workers.executor, work.file_checksum, paths, workers.count + 1))
    heads, blobs, items = [], [], []
    for index, (weight, reader, digest) in enumerate(zip(model.weights, readers, digests, strict=True)):
        reader.check_unchanged()  # the checksum is of the file the reader opened
        meta = reader.source_meta()
        inline = {name: text for name, data in meta.blobs.items() if (text := inline_text(data)) is not None}
        coded = {name: code_blob(name, data) for name, data in meta.blobs.items() if name not in inline}
        source_record = {
            "name": weight.path.name,
            "format": reader.format,
            "size": reader.stamp[0],
            "checksum": digest,
            "summary": meta.summary,
            "rebuild": meta.rebuild,
            "blobs": {name: record for name, (_, record) in coded.items()},
            "inline": inline,
        }
        heads.append(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "tool": {"name": "sparsify", "version": __version__},
                "source": source_record,
                "options": options.as_manifest(),
            }
        )
        blobs.append([part for part, _ in coded.values()])
        source = work.Source(str(weight.path.resolve()), reader.format, (reader.stamp[0], reader.stamp[1]))
        items += [planner.Item(index, source, info) for info in infos[index]]
    counts = [sum(1 for item in items if item.file == index) for index in range(len(heads))]
    window = 1 if workers.count == 1 else workers.count + 1
    return _ReadModel(model, heads, blobs, items, readers, window, counts, options)


def _write_archives(
    read: _ReadModel, plan: planner.Plan, options: Options, executor, progress, destination: Path, spool: Path | None
):
    """Encode every tensor (mapped over the executor, results in order) into its weight file's
    archive: ``destination`` itself for one file, ``destination/NAME.sparsify`` in a folder.
    ``spool``: a folder where local workers leave the coded parts for the archives to copy."""
    where = None if spool is None else str(spool)
    jobs = [
        work.EncodeJob(i.source, i.info, c, options.seed, where, options.importance_file)
        for i, c in zip(read.items, plan.choices, strict=True)
    ]
    sizes = [nbytes_of(i.info.dtype, i.info.shape) for i in read.items]
    total, done, finished = sum(sizes), 0, 0
    if progress:
        progress("encoding", 0, len(jobs), 0, total)
    # Spooled results are records of parts on disk: every job may be queued at once, so that a worker is
    # never idle behind a big tensor still encoding (results are consumed in order). Results that carry
    # their bytes (a cluster's) keep to the window that bounds memory.
    window = max(len(jobs), 1) if spool is not None else read.window
    results = iter(zip(read.items, sizes, ordered_map(executor, work.encode, jobs, window), strict=True))
    for index, head in enumerate(read.heads):
        if read.model.is_folder:
            path = destination / archive_name(read.model.weights[index].name)
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path = destination
        writer = ArchiveWriter(path, head["source"]["size"], read.counts[index])
        try:
            for part in read.blobs[index]:
                writer.add_part(part)
            records = []
            for _ in range(read.counts[index]):
                item, size, encoded = next(results)
                writer.add_tensor(encoded)
                records.append(encoded.record)
                done, finished = done + size, finished + 1
                if progress:
                    progress(item.info.name, finished, len(jobs), done, total)
            read.readers[index].check_unchanged()  # never an archive of a file that changed while read
            writer.finish(build_manifest(head, plan.summary, records, options.recorded_max_error))
        finally:
            writer.close()


def _carry_files(model: Model, destination: Path) -> list[dict[str, Any]]:
    """Copy the model's other files into ``destination`` (same names), checksummed as copied."""
    entries = []
    for name in model.carried:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        size, digest = _copy(model.carried_path(name), target)
        entries.append({"name": name, "size": size, "checksum": digest})
    return entries


def _copy(source: Path, target: Path, algorithm: str = ALGORITHM) -> tuple[int, str]:
    """Copy a file, fsynced; returns its size and checksum (InputError where the source fails)."""
    digest, size = Hasher(algorithm), 0
    try:
        reader = open(source, "rb")
    except OSError as exc:
        raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None
    with reader, open(target, "wb") as out:
        while True:
            try:
                block = reader.read(1 << 22)
            except OSError as exc:
                raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None
            if not block:
                break
            digest.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.value


def _write_index(
    model: Model, read: _ReadModel, plan: planner.Plan, options: Options, files, destination: Path, workers: Workers
):
    """The folder archive's ``sparsify.index.json`` (docs/FORMAT.md §13); the archives' checksums
    are taken by local workers where there are some (a cluster's may not see this folder)."""
    weights, records = [], []
    paths = [str(destination / archive_name(w.name)) for w in model.weights]
    hasher = workers.executor if workers.local_processes else InlineExecutor()
    digests = ordered_map(hasher, work.file_checksum, paths, workers.count + 1)
    for weight, head, digest in zip(model.weights, read.heads, digests, strict=True):
        path = destination / archive_name(weight.name)
        with Archive(path) as archive:
            records += [(weight.name, r) for r in archive.tensors]
            count = len(archive.tensors)
        weights.append(
            {
                "name": weight.name,
                "format": weight.format,
                "size": head["source"]["size"],
                "checksum": head["source"]["checksum"],
                "tensors": count,
                "archive": archive_name(weight.name),
                "archive_bytes": path.stat().st_size,
                "archive_checksum": digest,
            }
        )
    index = {
        "format": INDEX_FORMAT,
        "format_version": INDEX_VERSION,
        "tool": {"name": "sparsify", "version": __version__},
        "source": {"name": model.root.resolve().name, "shard_index": model.index},
        "options": options.as_manifest(),
        "plan": plan.summary,
        "weights": weights,
        "files": files,
        "gate": gate(
            ((f"{file}: {r['name']}", r["metrics"]["rel_error"]) for file, r in records), options.recorded_max_error
        ),
    }
    with open(destination / INDEX_NAME, "wb") as out:
        out.write(index_text(index))
        out.flush()
        os.fsync(out.fileno())


def _replaceable_archive(path: Path) -> bool:
    """--force may replace a folder that is a folder archive (or empty), nothing else."""
    return is_folder_archive(path) or not any(path.iterdir())


def rate_distortion(
    source: str | Path,
    *,
    rules: Iterable[str] = (),
    rules_file: str | Path | None = None,
    min_size: int | None = None,
    max_error: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    jobs: int | None = None,
) -> list[dict[str, Any]]:
    """Rate-distortion curves of a model (for ``sparsify plot``), from the rate controller's
    candidates: the best pipeline per tensor at a sweep of budgets (the Lagrangian allocation), one
    uniform step for all tensors, and the usual RTN settings. Points are ``{"bits_per_weight",
    "rel_error"}`` (whole archive bits per weight as predicted; weighted rel. error over all
    tensors, as in the report). Nothing is written.
    """
    from sparsify import ratecontrol
    from sparsify.report.model import record_overhead
    from sparsify.rules import choose

    options = resolve_options("auto", rules, rules_file, min_size, max_error, seed, target_ratio=1.0)
    model = open_model(source)
    weight_bytes = sum(w.path.stat().st_size for w in model.weights)
    with open_executor(jobs, None, weight_bytes) as workers, contextlib.ExitStack() as stack:
        try:
            read = _read_model(model, options, workers, stack)
            fixed = [choose(i.info, options.rules, options.pipeline, options.min_size) for i in read.items]
            measured = planner.measure_model(
                read.items, fixed, options, "ratio", workers.executor, read.window, progress, workers.count
            )
        finally:
            work.close_all()
    records = [m for m in measured if isinstance(m, dict)]
    planned = [m for m in measured if isinstance(m, ratecontrol.TensorPlan)]
    numel = sum(i.info.numel for i in read.items)
    fixed_sq = sum(r["metrics"]["sq_error"] or 0.0 for r in records)
    total_sq_norm = sum(r["metrics"]["sq_norm"] or 0.0 for r in records) + sum(t.sq_norm for t in planned)
    overhead = sum(r["stored_bytes"] + record_overhead(r) for r in records)
    overhead += sum(len(json.dumps(h["source"]["summary"])) for h in read.heads)
    return ratecontrol.model_curves(planned, overhead, fixed_sq, total_sq_norm, numel)


def decompress(
    archive: str | Path,
    output: str | Path | None = None,
    *,
    format: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Decode an archive back to a dense weight file, or a folder archive back to the model folder;
    returns the path written.

    format: ``safetensors``, ``hdf5`` or ``npz``; default the source's own format, rebuilt exactly
    (same header/metadata, groups and attributes, key order). A folder is always rebuilt in its own
    formats: its shard index, config and the other files come back byte for byte.
    """
    archive = Path(archive)
    if archive.is_dir():
        if format is not None:
            raise UsageError("a folder archive is rebuilt in its own formats; --format is for single archives")
        return _decompress_folder(archive, output, force, progress)
    with Archive(archive) as opened:
        source = opened.manifest["source"]
        fmt = format or source["format"]
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        if output is None:
            name = Path(source["name"])
            output = archive.parent / (name.name if fmt == source["format"] else name.stem + EXTENSIONS[fmt])
        output = Path(output)
        with atomic_output(output, force, (archive,)) as temp:
            _decode_into(opened, archive, temp, fmt, _Counter(progress, len(opened.tensors), opened.tensors))
    return output


class _Counter:
    """Progress over several archives: tensors and bytes done so far of the whole."""

    def __init__(self, progress: Progress | None, count: int, records: Iterable[dict[str, Any]]) -> None:
        self.progress, self.count, self.done, self.done_bytes = progress, count, 0, 0
        self.total = sum(r["original_bytes"] for r in records)
        if progress:
            progress("decoding", 0, count, 0, self.total)

    def advance(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.done_bytes += record["original_bytes"]
        if self.progress:
            self.progress(record["name"], self.done, self.count, self.done_bytes, self.total)


def _decode_into(opened: Archive, archive: Path, temp: Path, fmt: str, counter: _Counter) -> None:
    """Decode every tensor of ``opened`` into the weight file ``temp`` (format ``fmt``); a lossless
    archive rebuilding its source's bytes is checked against the source's checksum."""
    source = opened.manifest["source"]
    meta = opened.source_meta()
    try:
        writer = writer_class(fmt)(temp, opened.tensor_infos(), meta, fmt == source["format"])
    except CorruptArchiveError as exc:
        raise CorruptArchiveError(f"{archive}: {exc}") from None
    with writer:
        for info, record in zip(opened.tensor_infos(), opened.tensors, strict=True):
            writer.write(info.name, opened.decode(record))
            counter.advance(record)
    if writer.rebuilds_bytes and all(t["metrics"]["exact"] for t in opened.tensors):
        _check_rebuilt(temp, source, archive)


def _decompress_folder(folder: Path, output: str | Path | None, force: bool, progress: Progress | None) -> Path:
    index = read_index(folder)
    output = Path(output) if output is not None else folder.parent / index["source"]["name"]
    listed = {w["name"] for w in index["weights"]} | {f["name"] for f in index["files"]}

    def replaceable(path: Path) -> bool:  # --force replaces an earlier rebuild of this model only
        return all(p.relative_to(path).as_posix() in listed for p in path.rglob("*") if not p.is_dir())

    with contextlib.ExitStack() as stack:
        members = [stack.enter_context(open_member(folder, w)) for w in index["weights"]]
        counter = _Counter(progress, sum(len(m.tensors) for m in members), (t for m in members for t in m.tensors))
        with atomic_folder(output, force, (folder,), replaceable) as temp:
            for weight, opened in zip(index["weights"], members, strict=True):
                target = temp / weight["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                _decode_into(opened, folder / weight["archive"], target, weight["format"], counter)
                _fsync_file(target)
            for entry in index["files"]:
                target = temp / entry["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                size, digest = _copy(folder / entry["name"], target, algorithm_of(entry["checksum"]))
                if (size, digest) != (entry["size"], entry["checksum"]):
                    raise CorruptArchiveError(f"{folder / entry['name']}: differs from the file the index lists")
    return output


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _check_rebuilt(rebuilt: Path, source: dict[str, Any], archive: Path) -> None:
    """A lossless archive rebuilds its source file exactly: CorruptArchiveError (and no output) if
    the rebuilt bytes differ from the source checksum the manifest records."""
    expected = source["checksum"]
    if rebuilt.stat().st_size != source["size"] or file_checksum(str(rebuilt), algorithm_of(expected)) != expected:
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
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and (self.gate is None or self.gate["passed"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "verify",
            "ok": self.ok,
            "checked": self.checked,
            "files": self.files,
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
    (its tensors must match by name, shape and dtype); ``max_error`` gates the rel. errors.

    A folder archive: also every archive's and every carried file's checksum against the index;
    ``against`` is then the original folder.
    """
    result = Verification()
    archive = Path(archive)
    if archive.is_dir():
        _verify_folder(archive, None if against is None else Path(against), result, progress)
    else:
        with Archive(archive) as opened:
            counter = _Counter(progress, len(opened.tensors), opened.tensors)
            _verify_archive(opened, None if against is None else Path(against), result, counter)
    result.gate = gate(((t["name"], t.get("rel_error")) for t in result.tensors), max_error)
    return result


def _verify_folder(folder: Path, against: Path | None, result: Verification, progress: Progress | None) -> None:
    index = read_index(folder)
    with contextlib.ExitStack() as stack:
        members = [stack.enter_context(open_member(folder, w)) for w in index["weights"]]
        counter = _Counter(progress, sum(len(m.tensors) for m in members), (t for m in members for t in m.tensors))
        for weight, opened in zip(index["weights"], members, strict=True):
            expected = weight["archive_checksum"]
            if file_checksum(str(folder / weight["archive"]), algorithm_of(expected)) != expected:
                result.problems.append(f"{weight['archive']}: differs from the archive the index lists (checksum)")
            original = None if against is None else against / weight["name"]
            if original is not None and not original.is_file():
                result.problems.append(f"{weight['name']}: not in {against}")
                original = None
            _verify_archive(opened, original, result, counter)
    for entry in index["files"]:
        path = folder / entry["name"]
        try:
            expected = entry["checksum"]
            same = path.stat().st_size == entry["size"] and file_checksum(str(path), algorithm_of(expected)) == expected
        except OSError:
            same = False
        if not same:
            result.problems.append(f"{entry['name']}: missing or differs from the file the index lists")
        result.files += 1


def _verify_archive(opened: Archive, against: Path | None, result: Verification, counter: _Counter) -> None:
    original = open_weights(against) if against is not None else None
    try:
        by_name = {i.name: i for i in original.tensors()} if original else {}
        for record in opened.tensors:
            decoded = opened.decode(record)
            # decode checked the bytes against the record's checksum: exact where it promises so
            entry = {"name": record["name"], "exact": bool(record["metrics"]["exact"])}
            if original is not None:
                entry.update(_compare(record, decoded, original, by_name, result.problems))
            else:
                entry["rel_error"] = record["metrics"]["rel_error"]
            del decoded
            result.tensors.append(entry)
            result.checked += 1
            counter.advance(record)
        if original is not None:
            missing = sorted(set(by_name) - {r["name"] for r in opened.tensors})
            result.problems += [f"{name}: in {against} but not in the archive" for name in missing]
    finally:
        if original is not None:
            original.close()
        result.files += 1


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
    if not matches(array, record["checksum"]):
        problems.append(f"{record['name']}: the original file's tensor differs from the one compressed")
    metrics = measure(array, decoded, info.dtype)
    return {"rel_error": metrics["rel_error"], "max_abs_error": metrics["max_abs_error"]}
