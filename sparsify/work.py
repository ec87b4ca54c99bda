"""The per-tensor work of ``compress``, as pure functions of small picklable jobs.

Each job names its weight file by path (and the size and modification time the file had when the
model was listed), so a worker process -- local or on a Dask cluster -- reopens it itself; no open
file crosses a process. A worker keeps the last few files it opened (:data:`_OPEN_LIMIT`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsify import checksum
from sparsify.codec import EncodedTensor, SpooledPart, encode_tensor, weighted_step_shifts
from sparsify.errors import InputError
from sparsify.importance import ImportanceFile, tensor_importance
from sparsify.io import reader_class
from sparsify.io.base import TensorInfo, WeightReader
from sparsify.rules import Choice


@dataclass(frozen=True)
class Source:
    """A weight file as the jobs see it: path, format, and ``(size, mtime_ns)`` when listed."""

    path: str
    format: str
    stamp: tuple[int, int]


@dataclass(frozen=True)
class EncodeJob:
    """Encode one tensor with its chosen pipeline; with ``spool`` (a folder on this machine), write
    the coded parts to this process's spool file there and return where they are, not the bytes."""

    source: Source
    info: TensorInfo
    choice: Choice
    seed: int
    spool: str | None = None
    importance: ImportanceFile | None = None  # the steps of weighted quantisers (sparsify.importance)


@dataclass(frozen=True)
class MeasureJob:
    """Measure one tensor for the planner: its fixed pipeline (``choice``), or, with ``mode`` set
    (``auto`` or a target), every candidate of that mode -- or only ``candidates`` (pipeline texts).
    ``estimate``: estimate the candidates on a sample (:mod:`sparsify.estimate`) where the tensor
    is big enough, instead of measuring them exactly."""

    source: Source
    info: TensorInfo
    choice: Choice
    seed: int
    mode: str | None = None
    max_error: float | None = None
    share: tuple[int, int] = (0, 1)  # (i, n): measure the i-th of n consecutive slices of the candidates
    candidates: tuple[str, ...] | None = None
    estimate: bool = False
    importance: ImportanceFile | None = None  # weigh the candidates' errors by it (sparsify.importance)


def encode(job: EncodeJob) -> EncodedTensor:
    """The tensor's coded parts and record (:func:`sparsify.codec.encode_tensor`); with a spool,
    the parts as :class:`~sparsify.codec.SpooledPart` (the bytes cross no pipe)."""
    weights = _importance(job.importance, job.info)
    shifts = weighted_step_shifts(job.choice.pipeline, job.info, weights)
    if weights is not None and not job.choice.pipeline.feedback:
        weights = None  # only feedback takes more from it than the shifts
    encoded = encode_tensor(read(job.source, job.info.name), job.info, job.choice, job.seed, None, weights, shifts)
    _keep_factor(job.importance, job.info, weights)
    if job.spool is None:
        return encoded
    spool = _spool_file(job.spool)
    parts = []
    for part in encoded.parts:
        parts.append(SpooledPart(part.record, spool.name, spool.tell()))
        spool.write(memoryview(part.stored))
    spool.flush()  # in the page cache, where the writing process reads it
    return EncodedTensor(encoded.record, parts)


_spools: dict[str, Any] = {}


def _spool_file(folder: str):
    """This process's spool file in ``folder`` (created on first use, appended to)."""
    spool = _spools.get(folder)
    if spool is None or spool.closed:
        spool = _spools[folder] = open(Path(folder) / f"spool-{os.getpid()}", "ab")
    return spool


def measure(job: MeasureJob) -> Any:
    """A fixed tensor's manifest record (parts dropped), or a planned one's
    :class:`sparsify.ratecontrol.TensorPlan` with its (share of the) candidates measured or estimated."""
    from sparsify import estimate, ratecontrol

    array = read(job.source, job.info.name)
    if job.mode is None:
        return encode_tensor(array, job.info, job.choice, job.seed).record
    weights = _importance(job.importance, job.info)
    if job.candidates is not None:
        candidates = list(job.candidates)
    else:
        weighted = weights is not None and any(
            s is not None for s in weights.step_shifts(job.info.shape, job.info.layout)
        )
        feedback = weights is not None and weights.takes_feedback(job.info)
        candidates = ratecontrol.candidates_for(job.mode, array, job.max_error, weighted, feedback)
    i, n = job.share
    mine = candidates[i * len(candidates) // n : (i + 1) * len(candidates) // n]
    # a share keeps every point: the bound is applied once the shares are joined
    bound = job.max_error if n == 1 else None
    if job.estimate:
        plan = estimate.estimate_tensor(array, job.info, mine, job.seed, bound, weights)
    else:
        plan = ratecontrol.plan_tensor(array, job.info, mine, job.seed, bound, weights)
    _keep_factor(job.importance, job.info, weights)
    return plan


def _importance(source: ImportanceFile | None, info: TensorInfo):
    """The tensor's importance from the checked file (None: no file, or not named in it), read like
    a weight file: through this process's reader, its stamp checked."""
    if source is None:
        return None
    key = (source.checksum, info.name)
    if key in _recent_importance:
        return _recent_importance[key]
    file = Source(source.path, "safetensors", source.stamp)
    weights = tensor_importance(source, info, lambda key: read(file, key))
    if weights is not None and weights.inputs is not None:
        # its feedback factor takes seconds to make: the planning rounds and the write job reuse it
        _recent_importance.clear()
        _recent_importance[key] = weights
        _load_factor(source, info, weights)
    return weights


_recent_importance: dict[tuple[str, str], Any] = {}  # the last tensor importance with input moments

FACTOR_FOLDER_BYTES = 4 << 30
"""At most this many bytes of feedback factors are kept in a run's factor folder (n² float64 each);
past it, the jobs make the others again in each phase."""


def _factor_path(source: ImportanceFile, info: TensorInfo) -> Path:
    digest = hashlib.sha256(f"{source.checksum}\0{info.name}".encode()).hexdigest()[:32]
    return Path(source.factor_folder) / f"{digest}.npy"


def _load_factor(source: ImportanceFile, info: TensorInfo, weights) -> None:
    """Give ``weights`` the feedback factor an earlier job of this run kept in the factor folder (the
    same float64 values it would make; a file that is missing or not an (n, n) float64 array is
    ignored and the factor made again)."""
    if source.factor_folder is None or weights.made_factor() is not None:
        return
    with contextlib.suppress(OSError, ValueError):
        weights.adopt_factor(np.load(_factor_path(source, info), allow_pickle=False))


def _keep_factor(source: ImportanceFile | None, info: TensorInfo, weights) -> None:
    """Keep the feedback factor a job made in the run's factor folder (written whole, then renamed:
    a reader never sees part of one), while the folder holds less than :data:`FACTOR_FOLDER_BYTES`;
    a folder this process cannot write (a remote worker's) keeps nothing."""
    factor = None if weights is None else weights.made_factor()
    if source is None or source.factor_folder is None or factor is None:
        return
    path = _factor_path(source, info)
    with contextlib.suppress(OSError):
        if path.exists():
            return
        held = sum(entry.stat().st_size for entry in os.scandir(source.factor_folder) if entry.is_file())
        if held + factor.nbytes > FACTOR_FOLDER_BYTES:
            return
        temp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as out:
                np.save(out, factor, allow_pickle=False)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


def file_checksum(path: str) -> str:
    """The checksum of a file's bytes (:func:`sparsify.checksum.file_checksum`: picklable by name for
    the executors); InputError if it cannot be read."""
    return checksum.file_checksum(path)


_OPEN_LIMIT = 4
_open: OrderedDict[Source, WeightReader] = OrderedDict()


def read(source: Source, name: str):
    """One tensor of ``source``, through this process's reader of that file; InputError if the file
    is no longer the one listed (size or modification time)."""
    reader = _open.get(source)
    if reader is None:
        reader = reader_class(source.format)(Path(source.path))
        stamp = reader.stamp  # what was opened, as the reader saw it before opening
        if stamp is None or tuple(stamp[:2]) != tuple(source.stamp):
            reader.close()
            raise InputError(f"{source.path}: changed while it was being read")
        _open[source] = reader
        while len(_open) > _OPEN_LIMIT:
            _open.popitem(last=False)[1].close()
    else:
        _open.move_to_end(source)
    return reader.read(name)


def forget_inherited() -> None:
    """Drop (without closing) the files a forked parent process had open for jobs."""
    _open.clear()
    _spools.clear()


def close_all() -> None:
    """Close every file this process keeps open for jobs (inputs and spools)."""
    while _open:
        _open.popitem()[1].close()
    while _spools:
        _spools.popitem()[1].close()
