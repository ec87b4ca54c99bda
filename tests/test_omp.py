"""Batch OMP: the same supports and coefficients as scikit-learn's orthogonal_mp_gram, stopping rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import orthogonal_mp_gram

from sparsify.omp import batch_omp, batch_omp_support, codes_to_dense, omp_signals


def problem(length: int, atoms: int, signals: int, seed: int):
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((length, atoms))
    dictionary /= np.linalg.norm(dictionary, axis=0)
    y = rng.standard_normal((length, signals))
    return dictionary, y


def sklearn_omp(gram, xy, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "orthogonal matching pursuit ended prematurely"
        return orthogonal_mp_gram(Gram=gram, Xy=xy, **options)


@pytest.mark.parametrize(
    "length, atoms, signals, nnz, seed",
    [(20, 40, 300, 5, 0), (32, 64, 500, 10, 1), (16, 48, 400, 1, 2), (64, 256, 3000, 8, 3), (12, 12, 200, 6, 4)],
)
def test_same_supports_and_coefficients_as_sklearn(length, atoms, signals, nnz, seed):
    dictionary, y = problem(length, atoms, signals, seed)
    gram, xy = dictionary.T @ dictionary, dictionary.T @ y
    ours = batch_omp(gram, xy, nnz)
    reference = sklearn_omp(gram, xy, n_nonzero_coefs=nnz)
    assert ours.shape == (atoms, signals)
    assert np.array_equal(ours != 0, reference != 0)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-8)
    assert (np.count_nonzero(ours, axis=0) == nnz).all()


def test_tolerance_matches_sklearn_and_residuals_are_exact():
    dictionary, y = problem(24, 60, 400, 5)
    gram, xy = dictionary.T @ dictionary, dictionary.T @ y
    y_sq = np.sum(y * y, axis=0)
    tol = 0.3 * float(np.median(y_sq))
    tol = min(tol, 0.99 * float(y_sq.min()))  # every signal needs at least one atom (as sklearn assumes)
    result = batch_omp_support(gram, xy.T, 60, tol_sq=tol, y_sq=y_sq)
    ours = codes_to_dense(result.support, result.coefs, 60)
    reference = sklearn_omp(gram, xy, tol=tol, norms_squared=y_sq)
    assert np.array_equal(ours != 0, reference != 0)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-8)
    actual = np.sum((y - dictionary @ ours) ** 2, axis=0)
    np.testing.assert_allclose(result.residual_sq, actual, rtol=1e-9, atol=1e-12)
    assert (actual <= tol * (1 + 1e-9)).all()
    # One atom fewer would not have met the tolerance.
    counts = np.count_nonzero(ours, axis=0)
    for count in np.unique(counts):
        group = counts == count
        fewer = batch_omp_support(gram, xy.T[group], int(count) - 1, y_sq=y_sq[group])
        assert (fewer.residual_sq > tol).all()


def test_per_signal_tolerance_array():
    dictionary, y = problem(16, 32, 50, 6)
    gram, xy = dictionary.T @ dictionary, dictionary.T @ y
    y_sq = np.sum(y * y, axis=0)
    tol = np.where(np.arange(50) % 2 == 0, 0.5 * y_sq, 0.0)
    result = batch_omp_support(gram, xy.T, 4, tol_sq=tol, y_sq=y_sq)
    counts = np.count_nonzero(result.support >= 0, axis=1)
    assert (counts[1::2] == 4).all() and counts[::2].mean() < 3
    assert ((result.residual_sq[::2] <= tol[::2]) | (counts[::2] == 4)).all()


def test_exact_and_zero_signals_stop_early():
    dictionary, _ = problem(20, 50, 1, 7)
    exact = dictionary[:, [3, 17]] @ np.array([2.0, -0.5])
    y = np.stack([exact, np.zeros(20)], axis=1)
    result = batch_omp_support(dictionary.T @ dictionary, (dictionary.T @ y).T, 6)
    assert sorted(result.support[0][result.support[0] >= 0].tolist()) == [3, 17]
    np.testing.assert_allclose(codes_to_dense(result.support, result.coefs, 50)[[3, 17], 0], [2.0, -0.5], atol=1e-12)
    assert (result.support[1] == -1).all() and (result.coefs[1] == 0).all()


def test_nnz_capped_and_inputs_checked():
    dictionary, y = problem(6, 4, 10, 8)
    gram, xy = dictionary.T @ dictionary, dictionary.T @ y
    assert batch_omp_support(gram, xy.T, 10).support.shape == (10, 4)
    assert not batch_omp(gram, xy, 0).any()
    with pytest.raises(ValueError, match="do not fit"):
        batch_omp_support(gram, xy, 2)
    with pytest.raises(ValueError, match="y_sq"):
        batch_omp(gram, xy, 2, tol_sq=0.1)


def test_chunking_does_not_change_the_result(monkeypatch):
    import sparsify.omp

    dictionary, y = problem(16, 40, 700, 9)
    gram, xy = dictionary.T @ dictionary, dictionary.T @ y
    whole = batch_omp(gram, xy, 5)
    monkeypatch.setattr(sparsify.omp, "_CHUNK_ELEMENTS", 1000)
    assert np.array_equal(batch_omp(gram, xy, 5), whole)


@pytest.mark.parametrize(
    "length, atoms, signals, nnz, seed",
    [(16, 256, 2000, 4, 5), (8, 32, 500, 8, 6), (32, 64, 400, 6, 7), (64, 128, 300, 5, 8), (12, 12, 200, 12, 9)],
)
def test_signal_side_omp_matches_sklearn_and_its_residuals_are_exact(length, atoms, signals, nnz, seed):
    """omp_signals (signal space for short signals, Gram rows for long ones): sklearn's supports and
    coefficients, and residuals y - D x."""
    dictionary, y = problem(length, atoms, signals, seed)
    codes = omp_signals(dictionary, np.ascontiguousarray(y.T), nnz, residual=True)
    dense = codes_to_dense(codes.support, codes.coefs, atoms)
    reference = sklearn_omp(dictionary.T @ dictionary, dictionary.T @ y, n_nonzero_coefs=nnz)
    assert np.array_equal(dense != 0, reference != 0)
    np.testing.assert_allclose(dense, reference, rtol=0, atol=1e-8)
    residual = y.T - (dictionary @ dense).T
    np.testing.assert_allclose(codes.residual, residual, rtol=0, atol=1e-10)
    np.testing.assert_allclose(codes.residual_sq, np.einsum("sl,sl->s", residual, residual), rtol=1e-9, atol=1e-12)
    without = omp_signals(dictionary, np.ascontiguousarray(y.T), nnz)
    assert without.residual is None and np.array_equal(without.support, codes.support)


def test_signal_side_omp_chunking_zero_and_exact_signals(monkeypatch):
    import sparsify.omp

    dictionary, y = problem(16, 40, 700, 10)
    y[:, :3] = 0.0
    y[:, 3:6] = dictionary[:, :3] * 2.5  # one atom each: coded exactly with one nonzero
    signals = np.ascontiguousarray(y.T)
    whole = omp_signals(dictionary, signals, 5, residual=True)
    assert (whole.support[:3] == -1).all() and not whole.coefs[:3].any()
    assert (whole.support[3:6, 0] == [0, 1, 2]).all() and (whole.support[3:6, 1:] == -1).all()
    np.testing.assert_allclose(whole.coefs[3:6, 0], 2.5, rtol=1e-12)
    monkeypatch.setattr(sparsify.omp, "_SIGNAL_CHUNK_ELEMENTS", 1000)
    small = omp_signals(dictionary, signals, 5, residual=True)
    assert np.array_equal(small.support, whole.support) and np.array_equal(small.coefs, whole.coefs)
    with pytest.raises(ValueError, match="do not fit"):
        omp_signals(dictionary, y, 5)
