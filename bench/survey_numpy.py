"""The techniques sparsify has no pipeline for, in numpy / scikit-learn, for ``bench/methods_survey.py``.

Each function takes a float64 matrix (output channels on the rows) and a budget and returns a
:class:`Coded`: the matrix a decoder would rebuild from what is stored (every stored float rounded
to its stored type first) and the stored arrays themselves. :func:`stored_bits` counts them the way
an archive does: each array through sparsify's own byte coder (``zstd`` at its default level 3, with
byte planes where they are smaller, raw where smallest: :func:`sparsify.codec.coded_bytes`), plus
32 bits for each scalar (a seed, a count, a shape); no file header, as for sparsify's per-tensor
payload figure.

* :func:`block_svd`: truncated SVD of every block of a grid of ``block`` x ``block`` blocks (block
  SVD, "BSVD"); factors (U·S and V of every block) stored as float16.
* :func:`sparse_encoder`: the rows projected onto the top-r right singular vectors V_r (stored,
  float16), the coefficients C = W V_r thresholded to the largest ``keep`` fraction (CSR: a 16-bit
  count per row, 8- or 16-bit column indices, float16 values); Ŵ = C V_rᵀ.
* :func:`hashed`: HashedNets (Chen et al. 2015) without retraining: weight i goes to bucket h(i) of K
  by a seeded hash (``bench/rtn.py``), each bucket stores the mean of its weights (float32); nothing
  per weight.
* :func:`learned_dictionary`: generic dictionary learning, scikit-learn's
  ``MiniBatchDictionaryLearning`` (Mairal et al. 2009) fitted on a seeded sample of the matrix's
  segments of ``SEGMENT`` values; every segment coded by OMP with ``nnz`` atoms against the stored
  (float16) dictionary.
* :func:`random_dictionary`: SRPP -- a seeded very sparse random ±1 dictionary (Li, Hastie & Church
  2006: each entry ±1 with probability 1/(2√L) each, else 0; atoms normalised) that costs nothing to
  store (regenerated from the seed), the same OMP codes.

OMP codes are stored as ``nnz`` atom indices (8-bit up to 256 atoms, else 16-bit) and ``nnz`` float16
coefficients per segment (an unused slot stores index 0 and value 0). The OMP is sparsify's batch OMP
(:func:`sparsify.omp.omp_signals`, which follows scikit-learn's ``orthogonal_mp_gram`` selection
rule; it is 10-20x faster here than scikit-learn's per-signal loop).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import rtn

from sparsify.codec import coded_bytes
from sparsify.coders.zstd import Zstd
from sparsify.omp import omp_signals
from sparsify.pipeline import resolve_config

CODERS = [Zstd(**resolve_config(Zstd, {}))]
SCALAR_BITS = 32
SEGMENT = 16  # values per signal of the dictionary methods (as sparsify's ksvd:segment=16)
TRAIN_SEGMENTS = 8192  # dictionary learning: segments in the seeded training sample


@dataclass
class Coded:
    """A technique's result: the decoded matrix and what is stored for it."""

    decoded: np.ndarray
    parts: dict[str, np.ndarray]
    scalars: int = 0
    detail: dict = field(default_factory=dict)


def stored_bits(coded: Coded) -> int:
    """Bits stored: every part after sparsify's zstd coder, and 32 per scalar."""
    coded_bits = sum(8 * coded_bytes(np.ascontiguousarray(a), CODERS)[0].size for a in coded.parts.values())
    return coded_bits + SCALAR_BITS * coded.scalars


def rel_error(matrix: np.ndarray, decoded: np.ndarray) -> float:
    """‖W - Ŵ‖_F / ‖W‖_F in float64, Ŵ cast to float32 first (what a decoded file holds)."""
    w = matrix.astype(np.float64)
    return float(np.linalg.norm(w - decoded.astype(np.float32).astype(np.float64)) / np.linalg.norm(w))


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16)


def _index_dtype(count: int) -> type:
    return np.uint8 if count <= 256 else np.uint16


def block_svd(matrix: np.ndarray, block: int, rank: int) -> Coded:
    """Rank-``rank`` SVD of each ``block`` x ``block`` block (edge blocks smaller)."""
    m, n = matrix.shape
    decoded = np.zeros_like(matrix)
    us, vs = [], []
    for i in range(0, m, block):
        for j in range(0, n, block):
            b = matrix[i : i + block, j : j + block]
            u, s, vt = np.linalg.svd(b, full_matrices=False)
            r = min(rank, s.size)
            left, right = _f16(u[:, :r] * s[:r]), _f16(vt[:r].T)
            us.append(left.reshape(-1))
            vs.append(right.reshape(-1))
            decoded[i : i + block, j : j + block] = left.astype(np.float64) @ right.astype(np.float64).T
    parts = {"us": np.concatenate(us), "v": np.concatenate(vs)}
    return Coded(decoded, parts, scalars=3, detail={"blocks": len(us)})


def sparse_encoder(matrix: np.ndarray, rank: int, keep: float, vt: np.ndarray | None = None) -> Coded:
    """Project onto the top-``rank`` right singular vectors (rows of ``vt``, computed when not given),
    keep the largest ``keep`` fraction of the coefficients."""
    if vt is None:
        vt = np.linalg.svd(matrix, full_matrices=False)[2]
    v = _f16(vt[:rank].T)
    coefs = matrix @ v.astype(np.float64)  # (m, r): the projection on the stored basis
    kept = max(1, round(keep * coefs.size))
    tau = np.partition(np.abs(coefs).reshape(-1), coefs.size - kept)[coefs.size - kept]
    mask = np.abs(coefs) >= tau
    rows, cols = np.nonzero(mask)
    values = _f16(coefs[rows, cols])
    sparse = np.zeros_like(coefs)
    sparse[rows, cols] = values.astype(np.float64)
    parts = {
        "v": v,
        "counts": mask.sum(axis=1).astype(np.uint16),
        "columns": cols.astype(_index_dtype(rank)),
        "values": values,
    }
    decoded = sparse @ v.astype(np.float64).T
    return Coded(decoded, parts, scalars=2, detail={"nnz": int(values.size)})


def hashed(matrix: np.ndarray, bits_per_weight: float, seed: int = 0) -> Coded:
    """HashedNets at about ``bits_per_weight``: K = round(bpw · N / 32) float32 bucket values."""
    flat = matrix.reshape(-1)
    k = max(1, min(flat.size, round(bits_per_weight * flat.size / 32)))
    bucket = rtn.hash_buckets(flat.size, k, seed)
    counts = np.bincount(bucket, minlength=k)
    means = (np.bincount(bucket, weights=flat, minlength=k) / np.maximum(counts, 1)).astype(np.float32)
    decoded = means.astype(np.float64)[bucket].reshape(matrix.shape)
    return Coded(decoded, {"values": means}, scalars=2, detail={"buckets": k})


def segments(matrix: np.ndarray) -> np.ndarray:
    """The matrix as (S, SEGMENT) signals, consecutive values of each row (rows a multiple of SEGMENT)."""
    if matrix.shape[1] % SEGMENT:
        raise ValueError(f"rows of {matrix.shape[1]} values are not a multiple of {SEGMENT}")
    return matrix.reshape(-1, SEGMENT)


def atoms_for(matrix: np.ndarray, atoms: int) -> int:
    """At most ``atoms``, and at most a quarter of the segments (sparsify's K-SVD default rule)."""
    return max(1, min(atoms, matrix.size // SEGMENT // 4))


def omp_coded(matrix: np.ndarray, dictionary: np.ndarray, nnz: int, stored: dict[str, np.ndarray]) -> Coded:
    """OMP codes of every segment against ``dictionary`` (L x K, as decoded), stored compactly."""
    signals = segments(matrix)
    codes = omp_signals(dictionary, signals, nnz)
    support = np.where(codes.support >= 0, codes.support, 0)
    coefs = _f16(codes.coefs)
    decoded = np.einsum("skl,sk->sl", dictionary.T[support], coefs.astype(np.float64))
    atoms = dictionary.shape[1]
    parts = {**stored, "atoms": support.astype(_index_dtype(atoms)), "coefs": coefs}
    return Coded(decoded.reshape(matrix.shape), parts, scalars=3, detail={"atoms": atoms, "nnz": nnz})


def fit_dictionary(matrix: np.ndarray, atoms: int, seed: int = 0) -> np.ndarray:
    """A float16-rounded (L x K) dictionary from scikit-learn's MiniBatchDictionaryLearning."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    signals = segments(matrix)
    rng = np.random.default_rng(seed)
    sample = signals[rng.choice(signals.shape[0], min(TRAIN_SEGMENTS, signals.shape[0]), replace=False)]
    learner = MiniBatchDictionaryLearning(
        n_components=atoms_for(matrix, atoms), batch_size=256, max_iter=5, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lars / cd inner solvers' convergence notes
        learner.fit(sample)
    return _f16(learner.components_.T).astype(np.float64)


def learned_dictionary(matrix: np.ndarray, dictionary: np.ndarray, nnz: int) -> Coded:
    """Codes against a :func:`fit_dictionary` dictionary, which is stored (float16)."""
    return omp_coded(matrix, dictionary, nnz, {"dictionary": _f16(dictionary)})


def srpp_dictionary(atoms: int, seed: int = 0) -> np.ndarray:
    """The seeded very sparse random ±1 dictionary (SEGMENT x atoms), columns of unit norm."""
    rng = np.random.default_rng(seed)
    p = 1 / np.sqrt(SEGMENT)
    u = rng.random((SEGMENT, atoms))
    d = np.where(u < p / 2, 1.0, np.where(u < p, -1.0, 0.0))
    empty = ~d.any(axis=0)
    d[rng.integers(0, SEGMENT, empty.sum()), np.flatnonzero(empty)] = 1.0  # no atom is all zero
    return d / np.linalg.norm(d, axis=0)


def random_dictionary(matrix: np.ndarray, atoms: int, nnz: int, seed: int = 0) -> Coded:
    """SRPP: codes against :func:`srpp_dictionary`, which is not stored (only its seed)."""
    coded = omp_coded(matrix, srpp_dictionary(atoms, seed), nnz, {})
    coded.scalars += 1  # the seed
    return coded
