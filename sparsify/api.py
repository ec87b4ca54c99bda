"""The Python API: compress, inspect, decompress and verify weight files.

>>> import sparsify
>>> report = sparsify.compress("model.safetensors", pipeline="threshold:max_error=0.05")  # doctest: +SKIP
>>> report["totals"]["ratio"]  # doctest: +SKIP

The CLI is a thin shell over these functions. Each streams tensors one at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsify import __version__
from sparsify.archive import Archive, ArchiveWriter
from sparsify.archive.version import FORMAT_NAME, FORMAT_VERSION
from sparsify.atomic import atomic_output
from sparsify.codec import encode_tensor, measure, sha256
from sparsify.errors import UsageError
from sparsify.io import EXTENSIONS, FORMATS, open_weights, writer_class
from sparsify.pipeline import Pipeline, parse_pipeline
from sparsify.report.model import SCHEMA_VERSION, build_report
from sparsify.rules import DEFAULT_MIN_SIZE, DEFAULT_PIPELINE, Rule, choose, load_rules_file, parse_rule

Progress = Callable[[str, int, int], None]
"""progress(tensor_name, index, count), called before each tensor."""


@dataclass(frozen=True)
class Options:
    """Validated compress options (see :func:`compress`)."""

    pipeline: Pipeline
    rules: tuple[Rule, ...]
    min_size: int
    max_error: float | None
    seed: int

    def as_manifest(self) -> dict[str, Any]:
        return {
            "pipeline": str(self.pipeline),
            "rules": [{"match": r.pattern, "pipeline": str(r.pipeline), "origin": r.origin} for r in self.rules],
            "min_size": self.min_size,
            "max_error": self.max_error,
            "seed": self.seed,
        }


def resolve_options(
    pipeline: str | None = None,
    rules: Iterable[str] = (),
    rules_file: str | Path | None = None,
    min_size: int | None = None,
    max_error: float | None = None,
    seed: int = 0,
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
    return Options(parse_pipeline(text), parsed_rules, int(min_size), max_error, int(seed))


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
) -> dict[str, Any]:
    """Compress a weight file into an archive; returns the report (see :mod:`sparsify.report.model`).

    pipeline:   default pipeline, e.g. ``"threshold:max_error=0.05"`` (default ``keep+zstd``).
    rules:      ``"GLOB=PIPELINE"`` strings, first match wins; then the rules of ``rules_file`` (TOML).
    min_size:   tensors with fewer elements are stored losslessly unless a rule names them (1024).
    max_error:  gate: the report's ``gate.passed`` is False when any tensor's rel. error exceeds it
                (the archive is written all the same and records the failure).
    """
    options = resolve_options(pipeline, rules, rules_file, min_size, max_error, seed)
    source = Path(source)
    output = Path(output) if output is not None else default_archive_path(source)
    with open_weights(source) as reader, atomic_output(output, force, (source,)) as temp:
        writer = ArchiveWriter(temp)
        try:
            meta = reader.source_meta()
            blobs = {name: writer.add_blob(name, data) for name, data in meta.blobs.items()}
            records = []
            infos = reader.tensors()
            for index, info in enumerate(infos):
                if progress:
                    progress(info.name, index, len(infos))
                array = reader.read(info.name)
                choice = choose(info, options.rules, options.pipeline, options.min_size)
                encoded = encode_tensor(array, info, choice, options.seed)
                writer.add_tensor(encoded)
                records.append(encoded.record)
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "tool": {"name": "sparsify", "version": __version__},
                "source": {
                    "name": source.name,
                    "format": reader.format,
                    "size": source.stat().st_size,
                    "sha256": _file_sha256(source),
                    "summary": meta.summary,
                    "rebuild": meta.rebuild,
                    "blobs": blobs,
                },
                "options": options.as_manifest(),
                "tensors": records,
                "gate": _gate(((r["name"], r["metrics"]["rel_error"]) for r in records), options.max_error),
            }
            writer.finish(manifest)
        finally:
            writer.close()
    with Archive(output) as archive:
        return build_report(archive, command="compress")


def _gate(errors: Iterable[tuple[str, float | None]], max_error: float | None) -> dict[str, Any] | None:
    """The ``--max-error`` gate over ``(tensor name, rel. error)`` pairs; None errors (not measured) pass."""
    if max_error is None:
        return None
    failures = [name for name, error in errors if error is not None and not error <= max_error]
    return {"max_error": max_error, "passed": not failures, "failures": failures}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
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
            with writer_class(fmt)(temp, infos, meta, same_format) as writer:
                for index, (info, record) in enumerate(zip(infos, opened.tensors, strict=True)):
                    if progress:
                        progress(info.name, index, len(infos))
                    writer.write(info.name, opened.decode(record))
    return output


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
                entry = {"name": record["name"], "exact": sha256(decoded) == record["sha256"]}
                if record["metrics"]["exact"] and not entry["exact"]:
                    result.problems.append(f"{record['name']}: decoded bytes differ from the original's checksum")
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
