"""ksvd: dictionary learning. Signals ≈ dictionary (dense) x codes (sparse, at most ``nnz`` per signal).

The signals Y (L x S) are the matrix's columns, or consecutive pieces of ``segment`` values (see
:mod:`sparsify.signals`). K-SVD (Aharon, Elad & Bruckstein 2006) alternates, for ``iters`` rounds,

.. math::

    \\min_{D, X} \\|Y - D X\\|_F^2 \\quad \\text{s.t.} \\quad \\|d_j\\|_2 = 1, \\ \\|x_s\\|_0 \\le \\text{nnz}

* sparse coding: X by batch OMP (:func:`sparsify.omp.omp_signals`: against the Gram matrix DᵀD, in
  signal space for short signals, all signals of a chunk at once, with their residuals); a signal keeps
  its previous code where that is still better (OMP is greedy), so the error never increases;
* dictionary update, atom by atom: with E the residual of the signals that use atom j plus that atom's
  contribution, (d_j, x_j) becomes the rank-1 fit of E on the same support (one step of the power
  method, the approximate K-SVD of Rubinstein, Zibulevsky & Elad 2008: d = E x / ‖E x‖, x = Eᵀ d;
  each half-step is a least-squares optimum, so the error cannot increase either);
* unused atoms are replaced by the normalised residuals of the worst-represented signals.

The initial dictionary is ``atoms`` distinct training signals, normalised, chosen with
``np.random.default_rng(seed)`` (random unit vectors where there are too few nonzero signals); the
training set is all signals or a seeded sample of them. At the end every signal is coded by OMP
against the dictionary *as stored* (in the tensor's float type), and the stored codes are what the
approximation is computed from.

Size: ``atoms=K`` atoms [default: min(256, S / 4) -- a dictionary as large as the signal set would
just store the signals]. Budget (exactly one; ``nnz=8`` when none is given):

* ``nnz=k``       -- nonzeros per signal;
* ``max_error=e`` -- the smallest nnz whose stored approximation has relative Frobenius
  error <= e, by a doubling then bisection search (each probe is a full K-SVD run at that nnz, so
  the result is exactly what ``nnz=k`` with the same seed gives). A stage whose input is already
  within the bound stores nothing (atoms = nnz = 0); when no nnz up to min(L, atoms) meets the bound
  (rounding of stored values), the dictionary becomes the identity and the codes the signal values.

Defaults and why: 256 atoms is 2x overcomplete for length-128 signals (typical K-SVD) and costs
little beside the codes when S >> 256; atoms are capped at S (more atoms than signals cannot help)
and, by default, at S / 4.
nnz = 8 keeps codes at ~48 bytes per signal (8 x 4-byte values + 2-byte indices), a strong reduction
for signals of length >= 64, with nnz capped at min(L, atoms). ``iters=10`` rounds get most of the
gain of K-SVD on weight matrices. Training on ``sample=32768`` signals (128 per default atom) bounds
the training time on large matrices while keeping the dictionary general: on a 128 x 65,536 conv
kernel (256 atoms, nnz 8) the error on all signals is 0.611 against 0.604 on the training ones
(16,384 signals: 0.619 against 0.599); every signal is coded at the end in any case.

Non-finite entries are coded as 0 (left to the residual, e.g. for a later threshold stage). Stored
parts: ``dictionary`` (L x atoms, float type of the tensor) and the (atoms x S) code matrix as
:mod:`sparsify.sparse` parts prefixed ``codes_`` (values in the same float type).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from sparsify import sparse
from sparsify.errors import CorruptArchiveError, UsageError
from sparsify.methods.base import VIEW, EncodeContext, Method, StageOutput
from sparsify.omp import omp_signals
from sparsify.params import Param
from sparsify.reproducible import sparse_matmul
from sparsify.signals import from_signals, to_signals

DEFAULT_ATOMS = 256
DEFAULT_NNZ = 8
DEFAULT_ITERS = 10
DEFAULT_SAMPLE = 32768.0

_CODES = "codes_"


class KSVDResult(NamedTuple):
    """What :func:`ksvd` learns.

    dictionary: float64 array of shape (L, atoms), unit-norm columns.
    errors:     ‖Y_t - D X‖_F² on the training signals Y_t after each round (non-increasing).
    train:      int64 indices (into the S signals) of the training signals, ascending.
    support:    int64 array of shape (len(train), nnz): each training signal's atoms after the last
                round (-1 in unused slots; all -1 when iters = 0).
    """

    dictionary: np.ndarray
    errors: list[float]
    train: np.ndarray
    support: np.ndarray


def training_indices(count: int, sample: float | None, atoms: int, rng: np.random.Generator) -> np.ndarray:
    """Ascending indices of the training signals among ``count``.

    ``sample``: None (all), a fraction in (0, 1], or a count > 1; never fewer than min(count, atoms).
    """
    if sample is None or sample == 1:
        size = count
    elif sample < 1:
        size = int(round(sample * count))
    else:
        size = int(sample)
    size = min(count, max(size, atoms, 1))
    if size >= count:
        return np.arange(count, dtype=np.int64)
    return np.sort(rng.choice(count, size, replace=False)).astype(np.int64)


def ksvd(signals: np.ndarray, atoms: int, nnz: int, iters: int, seed: int, sample: float | None = None) -> KSVDResult:
    """Learn a dictionary by K-SVD (see the module docstring for the algorithm).

    Parameters
    ----------
    signals : ndarray of shape (L, S)
        The signals, as columns (finite values).
    atoms : int
        K, the number of dictionary atoms (>= 1).
    nnz : int
        At most this many nonzero codes per signal during training (capped at min(L, K)).
    iters : int
        Rounds of sparse coding + dictionary update (0: the seeded initial dictionary).
    seed : int
        Seed of ``np.random.default_rng`` (training sample, initial atoms).
    sample : float, optional
        Train on a seeded sample: a fraction (<= 1) or a count (> 1) of the signals; all when None.

    Returns
    -------
    KSVDResult
        The dictionary (L, K), the training error after each round, the training indices.
    """
    signals = np.asarray(signals, dtype=np.float64)
    length, count = signals.shape
    rng = np.random.default_rng(seed)
    train = training_indices(count, sample, atoms, rng)
    y = np.ascontiguousarray(signals[:, train].T)  # (n, L): signal-major
    dictionary = _initial_dictionary(y, atoms, rng)
    width = min(nnz, length, atoms)
    errors: list[float] = []
    support = np.full((y.shape[0], width), -1, dtype=np.int64)
    if length == 0 or y.shape[0] == 0:
        return KSVDResult(dictionary, [0.0] * iters, train, support)
    coefs = residual = None
    for _ in range(iters):
        new = omp_signals(dictionary, y, width, residual=True)
        if residual is None:
            support, coefs, residual = new.support, new.coefs, new.residual
        else:
            better = new.residual_sq < np.einsum("sl,sl->s", residual, residual)
            support[better], coefs[better], residual[better] = (
                new.support[better],
                new.coefs[better],
                new.residual[better],
            )
        _update_atoms(dictionary, support, coefs, residual)
        errors.append(float(np.einsum("sl,sl->", residual, residual)))
    return KSVDResult(dictionary, errors, train, support)


def learn_dictionary(
    signals: np.ndarray, atoms: int, nnz: int, iters: int, seed: int, sample: float | None = None
) -> np.ndarray:
    """The K-SVD dictionary (L, atoms) of ``signals`` (L, S): :func:`ksvd` without the diagnostics."""
    return ksvd(signals, atoms, nnz, iters, seed, sample).dictionary


def reconstruct_signals(dictionary: np.ndarray, support: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """Signal-major D X: shape (S, L) from compact codes (``support``/``coefs`` of shape (S, nnz))."""
    import scipy.sparse

    count, width = support.shape
    used = support >= 0
    counts = np.count_nonzero(used, axis=1)
    indptr = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    codes = scipy.sparse.csr_matrix((coefs[used], support[used], indptr), shape=(count, dictionary.shape[1]))
    return np.asarray(codes @ dictionary.T)


def refit_codes(dictionary: np.ndarray, support: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of each signal on its own support.

    Parameters
    ----------
    dictionary : ndarray of shape (L, K)
    support : int ndarray of shape (S, k)
        Atoms per signal, -1 in unused slots (their coefficient is 0).
    y : ndarray of shape (S, L)
        The signals, signal-major.

    Returns
    -------
    coefs : ndarray of shape (S, k)
        argmin_c ‖y_s - D[:, support_s] c‖² per signal (minimum-norm where the atoms are dependent).
    """
    count, width = support.shape
    coefs = np.zeros((count, width), dtype=np.float64)
    chunk = max(1, (1 << 20) // max(1, width * dictionary.shape[0]))
    for start in range(0, count, chunk):
        block = slice(start, min(start + chunk, count))
        used = support[block] >= 0
        atoms = dictionary.T[np.where(used, support[block], 0)] * used[..., None]  # (s, k, L)
        gram = np.einsum("skl,sjl->skj", atoms, atoms)
        gram[~used] = 0.0
        gram[..., range(width), range(width)] += ~used  # unused slots: 1 x c = 0
        rhs = np.einsum("skl,sl->sk", atoms, y[block])
        try:
            coefs[block] = np.linalg.solve(gram, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:  # atoms that became dependent: minimum-norm solution
            coefs[block] = np.einsum("skj,sj->sk", np.linalg.pinv(gram, hermitian=True), rhs)
    return coefs


def _residual_sq(dictionary: np.ndarray, support: np.ndarray, coefs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """‖y_s - D x_s‖² per signal (shape (S,)), from compact codes."""
    residual = y - reconstruct_signals(dictionary, support, coefs)
    return np.einsum("sl,sl->s", residual, residual)


def _initial_dictionary(y: np.ndarray, atoms: int, rng: np.random.Generator) -> np.ndarray:
    """``atoms`` distinct nonzero training signals, normalised; random unit vectors for the rest."""
    length = y.shape[1]
    norms = np.sqrt(np.einsum("sl,sl->s", y, y))
    candidates = np.flatnonzero(norms > 0)
    picked = rng.choice(candidates, min(atoms, candidates.size), replace=False) if candidates.size else candidates
    dictionary = np.empty((length, atoms), dtype=np.float64)
    dictionary[:, : picked.size] = (y[picked] / norms[picked, None]).T
    extra = rng.standard_normal((length, atoms - picked.size))
    if length:
        extra /= np.maximum(np.linalg.norm(extra, axis=0), np.finfo(np.float64).tiny)
    dictionary[:, picked.size :] = extra
    return dictionary


def _update_atoms(dictionary: np.ndarray, support: np.ndarray, coefs: np.ndarray, residual: np.ndarray) -> None:
    """One approximate K-SVD sweep over the atoms, in place (residual = Y - D X kept up to date)."""
    width = support.shape[1]
    flat = support.reshape(-1)
    entries = np.flatnonzero(flat >= 0)
    entries = entries[np.argsort(flat[entries], kind="stable")]
    bounds = np.searchsorted(flat[entries], np.arange(dictionary.shape[1] + 1))
    coef_flat = coefs.reshape(-1)
    unused = []
    for atom in range(dictionary.shape[1]):
        users = entries[bounds[atom] : bounds[atom + 1]]
        if users.size == 0:
            unused.append(atom)
            continue
        rows = users // width
        x = coef_flat[users]
        block = residual[rows] + np.outer(x, dictionary[:, atom])  # E restricted to the atom's signals
        direction = block.T @ x
        norm = np.linalg.norm(direction)
        if norm == 0:
            continue
        direction /= norm
        x_new = block @ direction
        residual[rows] = block - np.outer(x_new, direction)
        dictionary[:, atom] = direction
        coef_flat[users] = x_new
    if unused:
        energy = np.einsum("sl,sl->s", residual, residual)
        worst = np.argsort(-energy, kind="stable")[: len(unused)]
        for atom, row in zip(unused, worst, strict=False):
            if energy[row] > 0:
                dictionary[:, atom] = residual[row] / np.sqrt(energy[row])


class _Fit(NamedTuple):
    parts: dict[str, np.ndarray]
    approximation: np.ndarray
    error_sq: float
    resolved: dict[str, Any]


class KSVD(Method):
    name = "ksvd"
    summary = "K-SVD dictionary learning: signals ~ dense dictionary x sparse codes (batch OMP)"
    params = (
        Param(
            "atoms",
            int,
            f"dictionary size [default: min({DEFAULT_ATOMS}, signals / 4)]; at most the number of signals",
            low=1,
        ),
        Param(
            "nnz",
            int,
            "nonzero codes per signal (at most the signal length and atoms)",
            default=DEFAULT_NNZ,
            low=1,
            budget=True,
        ),
        Param(
            "max_error",
            float,
            "the smallest nnz with relative Frobenius error <= max_error, measured on the stored values",
            low=0.0,
            budget=True,
        ),
        Param("iters", int, "K-SVD rounds (sparse coding + dictionary update)", default=DEFAULT_ITERS, low=0),
        Param(
            "sample",
            float,
            "train on a seeded sample: a fraction (<= 1) or a count (> 1, whole) of the signals; "
            "all signals are coded at the end",
            default=DEFAULT_SAMPLE,
            low=0.0,
            low_open=True,
        ),
        Param(
            "segment", int, "signals: consecutive pieces of this many values [default: the columns]", low=1, high=65536
        ),
        VIEW,
    )
    example = "ksvd:atoms=128,nnz=4"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        sample = config.get("sample")
        if sample is not None and sample > 1 and not float(sample).is_integer():
            raise UsageError(f"ksvd: sample={sample} is not a fraction (<= 1) or a whole count (> 1)")

    def encode(self, target: np.ndarray, ctx: EncodeContext) -> StageOutput:
        segment = self.config.get("segment")
        clean = np.where(np.isfinite(target), target, 0.0)
        signals = to_signals(clean, segment)
        length, count = signals.shape
        # A dictionary as large as the signal set would just store the signals: by default keep it to a
        # quarter of them.
        atoms = min(self.config.get("atoms") or max(1, min(DEFAULT_ATOMS, count // 4)), count)
        if "max_error" in self.config:
            fit = self._search(clean, signals, atoms, ctx)
        else:
            nnz = min(self.config.get("nnz", DEFAULT_NNZ), length, atoms)
            fit = self._fit(clean, signals, atoms, nnz, ctx)
        return StageOutput(fit.parts, fit.resolved, fit.approximation)

    def decode(
        self, parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, int]
    ) -> np.ndarray:
        segment = self.config.get("segment")
        length, count = _signal_shape(shape, segment)
        if "dictionary" not in parts:
            raise CorruptArchiveError("ksvd: missing part 'dictionary'")
        dictionary = parts["dictionary"]
        if dictionary.ndim != 2 or dictionary.shape[0] != length:
            raise CorruptArchiveError(f"ksvd: dictionary of shape {dictionary.shape}, signals have length {length}")
        codes = {k[len(_CODES) :]: v for k, v in parts.items() if k.startswith(_CODES)}
        if "values" not in codes:
            raise CorruptArchiveError("ksvd: missing part 'codes_values'")
        return _reconstruct(dictionary, codes, count, shape, segment)

    # -- fitting ---------------------------------------------------------------------------------------

    def _fit(self, clean: np.ndarray, signals: np.ndarray, atoms: int, nnz: int, ctx: EncodeContext) -> _Fit:
        """K-SVD at (atoms, nnz), all signals coded against the stored dictionary."""
        length, count = signals.shape
        nnz = min(nnz, length, atoms)
        if nnz == 0:
            empty = np.zeros((length, 0), dtype=ctx.float_dtype)
            return self._store(clean, empty, np.zeros((count, 0), np.int64), np.zeros((count, 0)), ctx)
        iters = self.config.get("iters", DEFAULT_ITERS)
        learned = ksvd(signals, atoms, nnz, iters, ctx.seed, self.config.get("sample", DEFAULT_SAMPLE))
        stored = learned.dictionary.astype(ctx.float_dtype)
        dictionary = stored.astype(np.float64)
        y = np.ascontiguousarray(signals.T)
        codes = omp_signals(dictionary, y, nnz)
        support, coefs = codes.support, codes.coefs
        if iters:
            # The training codes, refit to the stored dictionary, where they beat OMP's greedy choice.
            train = learned.train
            refit = refit_codes(dictionary, learned.support, y[train])
            better = _residual_sq(dictionary, learned.support, refit, y[train]) < _residual_sq(
                dictionary, support[train], coefs[train], y[train]
            )
            support[train[better]], coefs[train[better]] = learned.support[better], refit[better]
        fit = self._store(clean, stored, support, coefs, ctx)
        reference = float(np.einsum("ls,ls->", signals[:, learned.train], signals[:, learned.train]))
        fit.resolved.update(
            iters=iters,
            train_signals=int(learned.train.size),
            train_errors=[float(np.sqrt(e / reference)) if reference else 0.0 for e in learned.errors],
        )
        return fit

    def _store(
        self, clean: np.ndarray, stored: np.ndarray, support: np.ndarray, coefs: np.ndarray, ctx: EncodeContext
    ) -> _Fit:
        """Parts for a stored dictionary and compact codes; the approximation decoded from them."""
        segment = self.config.get("segment")
        count, atoms = support.shape[0], stored.shape[1]
        values = coefs.astype(ctx.float_dtype)
        used = (support >= 0) & (values.astype(np.float64) != 0)
        signal_ids = np.broadcast_to(np.arange(count)[:, None], support.shape)[used]
        atom_ids = support[used]
        order = np.lexsort((signal_ids, atom_ids))
        mask = np.zeros((atoms, count), dtype=bool)
        mask[atom_ids, signal_ids] = True
        code_parts = sparse.pack(mask, values[used][order], ctx.coded_size)
        parts = {"dictionary": stored, **{_CODES + k: v for k, v in code_parts.items()}}
        approximation = _reconstruct(stored, code_parts, count, clean.shape, segment)
        error_sq = float(np.sum(np.square(clean - approximation)))
        per_signal = np.count_nonzero(used, axis=1)
        resolved: dict[str, Any] = {
            "atoms": int(atoms),
            "nnz": int(support.shape[1]),
            "signal_length": int(stored.shape[0]),
            "signals": int(count),
            "codes_nnz": int(atom_ids.size),
            "max_codes_per_signal": int(per_signal.max()) if count else 0,
            "layout": sparse.layout_of(code_parts),
        }
        return _Fit(parts, approximation, error_sq, resolved)

    def _search(self, clean: np.ndarray, signals: np.ndarray, atoms: int, ctx: EncodeContext) -> _Fit:
        """The smallest nnz whose stored approximation meets the max_error budget."""
        budget = ctx.error_budget_sq(self.config["max_error"])
        length, _ = signals.shape
        empty = self._fit(clean, signals, 0, 0, ctx)
        if empty.error_sq <= budget:
            return _searched(empty, [0])
        fits: dict[int, _Fit] = {}

        def meets(nnz: int) -> bool:
            fits[nnz] = self._fit(clean, signals, atoms, nnz, ctx)
            return fits[nnz].error_sq <= budget

        top = min(length, atoms)
        failing, passing, nnz = 0, None, 1
        while nnz <= top:
            if meets(nnz):
                passing = nnz
                break
            failing = nnz
            nnz = top + 1 if nnz == top else min(2 * nnz, top)
        if passing is None:
            identity = np.eye(length).astype(ctx.float_dtype)
            y = np.ascontiguousarray(signals.T)
            support = np.broadcast_to(np.arange(length), y.shape).copy()
            fit = self._store(clean, identity, support, y, ctx)
            fit.resolved["fallback"] = "identity"
            return _searched(fit, sorted(fits))
        while passing - failing > 1:
            middle = (passing + failing) // 2
            if meets(middle):
                passing = middle
            else:
                failing = middle
        return _searched(fits[passing], sorted(fits))


def _searched(fit: _Fit, tried: list[int]) -> _Fit:
    fit.resolved["searched_nnz"] = tried
    return fit


def _signal_shape(shape: tuple[int, int], segment: int | None) -> tuple[int, int]:
    """(L, S) of the signals of an (m, n) matrix."""
    m, n = shape
    if segment is None:
        return m, n
    return segment, -(-(m * n) // segment)


def _reconstruct(
    stored: np.ndarray, code_parts: Mapping[str, np.ndarray], count: int, shape: tuple[int, int], segment: int | None
) -> np.ndarray:
    """The float64 (m, n) matrix of a stored dictionary (L, K) and (K, S) code parts."""
    length, atoms = stored.shape
    codes = sparse.unpack_csr(code_parts, (atoms, count))
    dictionary = stored.astype(np.float64)
    if atoms == 0 or codes.nnz == 0:
        approx_t = np.zeros((count, length), dtype=np.float64)
    else:
        approx_t = sparse_matmul(codes.T.tocsr(), dictionary.T)  # (S, L), the same on every machine
    return np.ascontiguousarray(from_signals(approx_t.T, shape, segment))
