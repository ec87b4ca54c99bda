"""Benchmark sparsify against a plain zstd baseline on the sample models (run by ``make bench``).

For every sample model (``sample_models/``) this measures, in one run:

* for each sparsify pipeline in ``PIPELINES``: the archive size and ratio (source file bytes /
  archive bytes), compress and decompress speed, the report's weighted relative error
  (``report["totals"]["weighted_rel_error"]``) and, for lossless pipelines, a round-trip check:
  the decompressed file is ``byte-identical`` to the source, or (HDF5, whose bytes may differ)
  ``tree-identical`` by ``tests/hdf5_tree.py``; lossy pipelines are marked ``lossy``;
* as the baseline, on the same file in the same run: ``zstd -3`` of the whole file with the
  ``zstandard`` library, single-threaded (ratio, compress and decompress speed), so every figure
  can also be read relative to it (the ``÷ zstd`` columns), which is what stays comparable
  between runs on a noisy shared machine;
* for the digits MLP (fp32 safetensors) and each lossy pipeline: the test accuracy of the
  decompressed weights (``evaluate()`` from ``sample_models/make_samples.py``) beside the original's.

Timing: wall-clock (``time.perf_counter``) of one API call, file to file: ``sparsify.compress`` and
``sparsify.decompress``; for zstd, read the file, compress (or decompress) it, write the result.
Each cell is repeated until it has run at least ``--repeat-seconds`` in total and at least
``MIN_REPEATS`` times, and the best (shortest) time is kept. Speeds are in MB/s of the SOURCE file
size for both directions (MB = 1e6 bytes). Temporary files go to a ``TemporaryDirectory``.

Writes ``<output-dir>/latest.json`` (all figures, the machine and the date) and
``<output-dir>/latest.md`` (the tables), and prints the Markdown to stdout; progress goes to stderr.
Exits 1 if a lossless round trip fails.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import zstandard  # noqa: E402
from common import log, machine, roundtrip  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import sparsify  # noqa: E402

SAMPLES = REPO / "sample_models"
MODELS = [
    "digits_mlp.safetensors",
    "digits_mlp_bf16.safetensors",
    "digits_mlp.npz",
    "digits_mlp.h5",
    "crepe-tiny/weights.h5",
]
PIPELINES = {  # pipeline -> lossless?
    "keep": True,
    "keep+zstd": True,
    "threshold:max_error=0.05": False,
    "threshold:sparsity=0.9+zstd": False,
}
ACCURACY_MODEL = "digits_mlp.safetensors"  # evaluate() takes its PyTorch-named weights
ZSTD_LEVEL = 3
BASELINE = f"zstd -{ZSTD_LEVEL} (whole file)"
MIN_REPEATS = 3
MAX_REPEATS = 10_000
DEFAULT_REPEAT_SECONDS = 0.5


# --- timing -------------------------------------------------------------------------------------


def best_time(call: Callable[[], Any], min_seconds: float) -> dict[str, Any]:
    """Run ``call`` until it has run ``min_seconds`` in all and ``MIN_REPEATS`` times; best time."""
    times: list[float] = []
    total = 0.0
    while len(times) < MIN_REPEATS or (total < min_seconds and len(times) < MAX_REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        total += times[-1]
    return {"best_s": min(times), "repeats": len(times)}


def with_speed(timing: dict[str, Any], source_bytes: int) -> dict[str, Any]:
    return {**timing, "mb_per_s": source_bytes / 1e6 / timing["best_s"]}


# --- the cells ----------------------------------------------------------------------------------


def bench_zstd(source: Path, work: Path, seconds: float) -> dict[str, Any]:
    """zstd of the whole file (single-threaded), file to file, and its round trip."""
    packed, restored = work / (source.name + ".zst"), work / source.name

    def compress() -> None:
        packed.write_bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0).compress(source.read_bytes()))

    def decompress() -> None:
        restored.write_bytes(zstandard.ZstdDecompressor().decompress(packed.read_bytes()))

    size = source.stat().st_size
    result = {"codec": BASELINE, "lossless": True, "compress": with_speed(best_time(compress, seconds), size)}
    result["decompress"] = with_speed(best_time(decompress, seconds), size)
    result["archive_bytes"] = packed.stat().st_size
    result["ratio"] = size / result["archive_bytes"]
    result["weighted_rel_error"] = 0.0
    result["roundtrip"] = roundtrip(source, restored, "MISMATCH")
    return result


def bench_pipeline(source: Path, pipeline: str, work: Path, seconds: float, accuracy: bool) -> dict[str, Any]:
    """sparsify.compress / sparsify.decompress with one pipeline, the round trip and (if asked and
    lossy) the digits MLP's test accuracy after decompression."""
    archive, restored = work / "model.sparsify", work / source.name
    reports: list[dict[str, Any]] = []

    def compress() -> None:
        reports.append(sparsify.compress(source, archive, pipeline=pipeline, force=True))

    def decompress() -> None:
        sparsify.decompress(archive, restored, force=True)

    size = source.stat().st_size
    lossless = PIPELINES[pipeline]
    result = {"codec": pipeline, "lossless": lossless, "compress": with_speed(best_time(compress, seconds), size)}
    result["decompress"] = with_speed(best_time(decompress, seconds), size)
    totals = reports[-1]["totals"]
    result["archive_bytes"] = archive.stat().st_size
    result["ratio"] = size / result["archive_bytes"]
    result["weighted_rel_error"] = totals["weighted_rel_error"]
    result["lossless_tensors"] = f"{totals['lossless_tensors']}/{totals['tensors']}"
    result["roundtrip"] = roundtrip(source, restored, "MISMATCH") if lossless else "lossy"
    if accuracy and not lossless:
        result["accuracy"] = evaluate(load_file(str(restored)))
    return result


def relative_to(result: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """The ratio and speeds divided by the zstd baseline's (> 1: better than zstd)."""
    return {
        "ratio": result["ratio"] / baseline["ratio"],
        "compress_speed": result["compress"]["mb_per_s"] / baseline["compress"]["mb_per_s"],
        "decompress_speed": result["decompress"]["mb_per_s"] / baseline["decompress"]["mb_per_s"],
    }


def bench_model(name: str, seconds: float) -> dict[str, Any]:
    source = SAMPLES / name
    entry: dict[str, Any] = {
        "model": name,
        "path": str(source.relative_to(REPO)),
        "source_bytes": source.stat().st_size,
    }
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-") as tmp:
        log(f"{name}: {BASELINE}")
        baseline = bench_zstd(source, Path(tmp), seconds)
        results = []
        for pipeline in PIPELINES:
            log(f"{name}: {pipeline}")
            result = bench_pipeline(source, pipeline, Path(tmp), seconds, accuracy=name == ACCURACY_MODEL)
            result["vs_zstd"] = relative_to(result, baseline)
            results.append(result)
    entry["baseline"] = baseline
    entry["pipelines"] = results
    if name == ACCURACY_MODEL:
        entry["original_accuracy"] = evaluate(load_file(str(source)))
    return entry


# --- accuracy -----------------------------------------------------------------------------------

_evaluate: Callable[[dict[str, np.ndarray]], float] | None = None


def evaluate(weights: dict[str, np.ndarray]) -> float:
    """Test accuracy of the digits MLP, by ``sample_models/make_samples.py`` (imported once, by path)."""
    global _evaluate
    if _evaluate is None:
        spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _evaluate = module.evaluate
    return _evaluate(weights)


# --- machine and output -------------------------------------------------------------------------


def fmt_float(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_error(x: float | None) -> str:
    return "–" if x is None else "0" if x == 0 else f"{x:.4f}" if x >= 1e-3 else f"{x:.2e}"


def table_row(model: str, size: int, result: dict[str, Any], vs: dict[str, float] | None) -> str:
    vs = vs or {"ratio": 1.0, "compress_speed": 1.0, "decompress_speed": 1.0}
    cells = [
        model,
        f"{size:,}",
        f"`{result['codec']}`",
        f"{result['archive_bytes']:,}",
        fmt_float(result["ratio"], 3),
        fmt_float(vs["ratio"]),
        fmt_float(result["compress"]["mb_per_s"], 1),
        fmt_float(vs["compress_speed"]),
        fmt_float(result["decompress"]["mb_per_s"], 1),
        fmt_float(vs["decompress_speed"]),
        fmt_error(result["weighted_rel_error"]),
        result["roundtrip"],
    ]
    return "| " + " | ".join(cells) + " |"


def render_markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# sparsify benchmark ({data['date']})",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), Python {m['python']}, "
        f"numpy {m['numpy']}, zstandard {m['zstandard']}, sparsify {m['sparsify']}. "
        f"Best of ≥{MIN_REPEATS} repeats and ≥{data['settings']['repeat_seconds']} s per cell; "
        "MB/s of source bytes (1 MB = 1e6 B); ÷ zstd = this row / the baseline row of the same file (> 1 is better).",
        "",
        "| model | source bytes | codec | archive bytes | ratio | ÷ zstd | compress MB/s | ÷ zstd "
        "| decompress MB/s | ÷ zstd | weighted rel. error | roundtrip |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for entry in data["models"]:
        lines.append(table_row(entry["model"], entry["source_bytes"], entry["baseline"], None))
        lines += [table_row(entry["model"], entry["source_bytes"], r, r["vs_zstd"]) for r in entry["pipelines"]]
    lines += accuracy_table(data)
    return "\n".join(lines) + "\n"


def accuracy_table(data: dict[str, Any]) -> list[str]:
    entry = next((e for e in data["models"] if "original_accuracy" in e), None)
    if entry is None:
        return []
    lines = [
        "",
        f"Test accuracy of `{entry['model']}` after decompression (450 test images; "
        f"original {entry['original_accuracy']:.4f}):",
        "",
        "| pipeline | archive ratio | weighted rel. error | test accuracy | original | change |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in (r for r in entry["pipelines"] if "accuracy" in r):
        change = r["accuracy"] - entry["original_accuracy"]
        lines.append(
            f"| `{r['codec']}` | {r['ratio']:.3f} | {fmt_error(r['weighted_rel_error'])} | {r['accuracy']:.4f} "
            f"| {entry['original_accuracy']:.4f} | {change:+.4f} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat-seconds",
        type=float,
        default=DEFAULT_REPEAT_SECONDS,
        help=f"minimum total time per cell; best of the repeats is kept (default {DEFAULT_REPEAT_SECONDS})",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=REPO / "bench" / "results",
        help="where latest.json and latest.md are written (default bench/results)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    data: dict[str, Any] = {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "repeat_seconds": args.repeat_seconds,
            "min_repeats": MIN_REPEATS,
            "zstd_level": ZSTD_LEVEL,
            "timer": "time.perf_counter, best of repeats",
            "mb": 1_000_000,
        },
        "models": [bench_model(name, args.repeat_seconds) for name in MODELS],
    }
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    markdown = render_markdown(data)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.output_dir / "latest.md").write_text(markdown)
    print(markdown, end="")
    log(f"wrote {args.output_dir / 'latest.json'} and latest.md in {data['elapsed_s']} s")
    failed = [
        (e["model"], r["codec"])
        for e in data["models"]
        for r in [e["baseline"], *e["pipelines"]]
        if r["roundtrip"].startswith("MISMATCH")
    ]
    for model, codec in failed:
        log(f"ROUND TRIP FAILED: {model} with {codec}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
