"""lasso: the solver against scikit-learn, closed forms, budgets, storage contract, round trips."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.fft
from checkers import (
    check_config_roundtrip,
    check_deterministic,
    check_encode_decode,
    check_max_error,
    check_roundtrip,
    relative_error,
)
from conftest import SAMPLE_FILES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparsify.methods.ksvd as ksvd_module
from sparsify.errors import UsageError
from sparsify.lasso_solver import (
    bisect_alpha,
    debias,
    fista_lasso,
    homotopy_lasso,
    soft_threshold,
    solve_on_support,
)
from sparsify.methods.lasso import Lasso
from sparsify.pipeline import parse_pipeline


def stage(text: str) -> Lasso:
    return parse_pipeline(text).methods[0]


def objective(y, d, x, alpha):
    return 0.5 * float(np.sum((y - d @ x) ** 2)) + alpha * float(np.abs(x).sum())


@pytest.fixture
def random_dictionary(monkeypatch):
    """dict=learned with a seeded random unit-norm dictionary standing in for K-SVD (tests our side)."""

    def learn_dictionary(signals, atoms, nnz, iters, seed, sample=None):
        d = np.random.default_rng(seed).standard_normal((signals.shape[0], atoms))
        return d / np.linalg.norm(d, axis=0)

    monkeypatch.setattr(ksvd_module, "learn_dictionary", learn_dictionary, raising=False)


# --- the solver ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.01, 0.3, 2.0])
def test_fista_objective_matches_sklearn(seed, alpha):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso as SkLasso

    rng = np.random.default_rng(seed)
    length, atoms, count = 20, 35, 6
    d = rng.standard_normal((length, atoms)) * rng.uniform(0.5, 2.0, atoms)  # non-orthogonal, uneven norms
    y = rng.standard_normal((length, count))
    codes = fista_lasso(d.T @ d, d.T @ y, alpha)
    for s in range(count):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            sk = SkLasso(alpha=alpha / length, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(d, y[:, s])
        ours, theirs = objective(y[:, s], d, codes[:, s], alpha), objective(y[:, s], d, sk.coef_, alpha)
        assert ours <= theirs * (1 + 1e-9)
        if not any(issubclass(w.category, ConvergenceWarning) for w in caught):  # else sklearn is the worse
            assert ours == pytest.approx(theirs, rel=1e-6)


def _kkt_violation(d, y, x, alpha):
    """Largest relative violation of the lasso's optimality conditions (0 at the exact minimiser)."""
    grad = d.T @ (y - d @ x)
    off = np.where(x == 0, np.maximum(np.abs(grad) - alpha, 0.0), 0.0)
    on = np.where(x != 0, np.abs(grad - alpha * np.sign(x)), 0.0)
    return float(max(off.max(), on.max()) / alpha)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0])
def test_solver_paths_agree_and_are_exact(alpha):
    """Cold start, warm start (from a nearby alpha), the float64 fallback alone, the float32 rounds in
    small blocks and the homotopy: same minimiser."""
    rng = np.random.default_rng(11)
    length, atoms, count = 24, 48, 300
    d = rng.standard_normal((length, atoms))
    d /= np.linalg.norm(d, axis=0)
    y = rng.standard_normal((length, count))
    gram, dty = d.T @ d, d.T @ y
    cold = fista_lasso(gram, dty, alpha)
    assert _kkt_violation(d, y, cold, alpha) < 1e-8
    warm = fista_lasso(gram, dty, alpha, init=fista_lasso(gram, dty, 1.1 * alpha))
    fallback = fista_lasso(gram, dty, alpha, max_warm_iters=0, newton_steps=1, homotopy=False)  # float64 FISTA
    blocks = fista_lasso(gram, dty, alpha, block=7, homotopy=False)  # float32 FISTA + Newton, in small blocks
    path, solved = homotopy_lasso(gram, dty, alpha)
    assert solved.all()
    for other in (warm, fallback, blocks, path):
        assert _kkt_violation(d, y, other, alpha) < 1e-8
        assert np.allclose(other, cold, atol=1e-9)
    init = fista_lasso(gram, dty, 1.1 * alpha).astype(np.float32)
    kept = init.copy()
    fista_lasso(gram, dty, alpha, init=init, homotopy=False)
    assert np.array_equal(init, kept)  # the warm start is not modified


def _overcomplete(length, atoms, count, seed, duplicate=False):
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((length, atoms))
    if duplicate:
        d[:, 1] = d[:, 0]  # two equal atoms: the minimiser is not unique, the homotopy cannot border G_AA
    d /= np.linalg.norm(d, axis=0)
    return d, rng.standard_normal((length, count))


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0])
def test_homotopy_is_exact_on_overcomplete_short_signals(alpha):
    """Segments over a learned dictionary: L < K, rank L. The homotopy solves every signal to the KKT
    conditions, with sklearn's objective, and fista_lasso (which uses it there) agrees with its rounds."""
    from sklearn.linear_model import Lasso as SkLasso

    d, y = _overcomplete(16, 128, 400, 3)
    gram, dty = d.T @ d, d.T @ y
    codes, solved = homotopy_lasso(gram, dty, alpha)
    assert solved.all()
    assert _kkt_violation(d, y, codes, alpha) < 1e-8
    assert np.array_equal(fista_lasso(gram, dty, alpha), codes)
    rounds = fista_lasso(gram, dty[:, :40], alpha, homotopy=False)  # slow here: what the homotopy is for
    assert np.allclose(rounds, codes[:, :40], atol=1e-9)
    for s in range(0, 400, 50):
        sk = SkLasso(alpha=alpha / 16, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(d, y[:, s])
        assert objective(y[:, s], d, codes[:, s], alpha) <= objective(y[:, s], d, sk.coef_, alpha) * (1 + 1e-9)


def test_homotopy_leaves_what_it_cannot_solve_to_the_rounds():
    d, y = _overcomplete(12, 40, 200, 4, duplicate=True)
    gram, dty = d.T @ d, d.T @ y
    alpha = 1.0
    codes, solved = homotopy_lasso(gram, dty, alpha, max_active=3)
    assert 0 < solved.sum() < solved.size  # signals needing more than 3 atoms gave up
    assert not codes[:, ~solved].any()
    assert _kkt_violation(d, y[:, solved], codes[:, solved], alpha) < 1e-8
    full = fista_lasso(gram, dty, alpha)
    assert _kkt_violation(d, y, full, alpha) < 1e-8
    zero, done = homotopy_lasso(gram, dty, float(np.abs(dty).max()) * 1.01)
    assert done.all() and not zero.any()  # alpha >= max |D^T y|: x = 0


def test_soft_threshold_and_batched_least_squares():
    assert np.array_equal(soft_threshold(np.array([-3.0, -1.0, 0.5, 2.0]), 1.0), [-2.0, 0.0, 0.0, 1.0])
    rng = np.random.default_rng(1)
    d = rng.standard_normal((12, 9))
    y = rng.standard_normal((12, 50))
    support = rng.random((9, 50)) < 0.4
    x = debias(d.T @ d, d.T @ y, support.astype(float))
    for s in range(50):
        rows = np.flatnonzero(support[:, s])
        expected = np.linalg.lstsq(d[:, rows], y[:, s], rcond=None)[0] if rows.size else []
        assert np.allclose(x[rows, s], expected) and not x[~support[:, s], s].any()
    assert np.array_equal(solve_on_support(np.eye(9), d.T @ y, support), np.where(support, d.T @ y, 0.0))


def test_bisect_alpha_finds_the_boundary():
    assert bisect_alpha(lambda a: a <= 0.3, 1.0, ok_when_small=True) == pytest.approx(0.3, rel=1e-3)
    assert bisect_alpha(lambda a: a >= 0.3, 1.0, ok_when_small=False) == pytest.approx(0.3, rel=1e-3)
    assert bisect_alpha(lambda a: a <= 0.3, 1.0, ok_when_small=True) <= 0.3


# --- closed forms -------------------------------------------------------------------------------


def test_identity_is_soft_thresholding():
    w = np.random.default_rng(2).standard_normal((30, 20))
    out = check_encode_decode(stage("lasso:alpha=0.7,debias=false"), w, float_dtype=np.float64)
    assert np.array_equal(out.approximation, soft_threshold(w, 0.7))
    out = check_encode_decode(stage("lasso:alpha=0.7"), w, float_dtype=np.float64)
    assert np.array_equal(out.approximation, np.where(np.abs(w) > 0.7, w, 0.0))


@pytest.mark.parametrize("segment", [None, 16])
def test_dct_is_soft_thresholding_of_the_transform(segment):
    w = np.random.default_rng(3).standard_normal((24, 10))
    text = "lasso:alpha=0.5,dict=dct,debias=false" + (f",segment={segment}" if segment else "")
    out = check_encode_decode(stage(text), w, float_dtype=np.float64)
    signals = w if segment is None else np.pad(w.reshape(-1), (0, -w.size % segment)).reshape(-1, segment).T
    codes = soft_threshold(scipy.fft.dct(signals, norm="ortho", axis=0), 0.5)
    expected = scipy.fft.idct(codes, norm="ortho", axis=0)
    expected = expected if segment is None else expected.T.reshape(-1)[: w.size].reshape(w.shape)
    assert np.allclose(out.approximation, expected, atol=1e-12)
    assert out.resolved["nnz"] == np.count_nonzero(codes)


# --- budgets ------------------------------------------------------------------------------------

budget_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@budget_settings
@given(
    seed=st.integers(0, 2**16),
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    bound=st.floats(0.01, 0.95),
    kind=st.sampled_from(["identity", "dct", "dct,segment=8", "learned", "learned,segment=8"]),
    unbiased=st.booleans(),
    float_dtype=st.sampled_from([np.float32, np.float16]),
)
def test_max_error_never_exceeded(random_dictionary, seed, m, n, bound, kind, unbiased, float_dtype):
    w = np.random.default_rng(seed).standard_normal((m, n))
    method = stage(f"lasso:max_error={bound!r},dict={kind},debias={str(unbiased).lower()}")
    out = check_encode_decode(method, w, float_dtype=float_dtype)
    # A (random, stand-in) learned dictionary may not reach the bound at all; then alpha = 0 is the best.
    feasible = not kind.startswith("learned") or out.resolved["alpha"] > 0
    assert relative_error(w, out.approximation) <= bound or not feasible


@pytest.mark.parametrize("kind", ["identity", "dct", "dct,segment=64"])
def test_max_error_is_tight_for_orthonormal_dictionaries(kind):
    w = np.random.default_rng(5).standard_normal((64, 48))
    out = check_encode_decode(stage(f"lasso:max_error=0.2,dict={kind}"), w)
    assert 0.19 <= relative_error(w, out.approximation) <= 0.2


@pytest.mark.parametrize("kind", ["identity", "dct", "dct,segment=32", "learned"])
@pytest.mark.parametrize("target", [0.5, 3.0, 7.25])
def test_nnz_budget(random_dictionary, kind, target):
    w = np.random.default_rng(6).standard_normal((32, 40))
    out = check_encode_decode(stage(f"lasso:nnz={target},dict={kind}"), w)
    mean = out.resolved["mean_nnz"]
    assert mean <= target
    slack = 1 / out.resolved["signals"] if kind != "learned" else 0.05 * target + 1 / out.resolved["signals"]
    assert mean >= target - slack  # as close as the coefficient counts allow


@pytest.mark.parametrize("kind", ["identity", "dct", "learned"])
def test_debias_lowers_the_error_at_the_same_support(random_dictionary, kind):
    w = np.random.default_rng(7).standard_normal((20, 30))
    on = check_encode_decode(stage(f"lasso:alpha=0.8,dict={kind}"), w, float_dtype=np.float64)
    off = check_encode_decode(stage(f"lasso:alpha=0.8,dict={kind},debias=false"), w, float_dtype=np.float64)
    assert on.resolved["nnz"] == off.resolved["nnz"] > 0
    assert relative_error(w, on.approximation) < relative_error(w, off.approximation)


def test_learned_stores_the_dictionary(random_dictionary):
    w = np.random.default_rng(8).standard_normal((16, 64))
    out = check_encode_decode(stage("lasso:alpha=0.3,dict=learned,atoms=24"), w)
    assert out.parts["dictionary"].shape == (16, 24) and out.parts["dictionary"].dtype == np.float32
    assert out.parts["values"].dtype == np.float32 and out.resolved["atoms"] == 24


# --- archive ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fp32", "crepe"])
@pytest.mark.parametrize("pipeline", ["lasso:alpha=0.01", "lasso:alpha=0.01,dict=dct,segment=64"])
def test_roundtrip(tmp_path, model, pipeline):
    report = check_roundtrip(SAMPLE_FILES[model], tmp_path, pipeline)
    assert any(not r["exact"] for r in report["tensors"])


@pytest.mark.parametrize("pipeline", ["lasso:max_error=0.05", "lasso:max_error=0.05,dict=dct,segment=64"])
def test_archive_meets_max_error(sample, tmp_path, pipeline):
    check_max_error(check_roundtrip(sample, tmp_path, pipeline), 0.05)


def test_composition(tmp_path):
    report = check_roundtrip(SAMPLE_FILES["fp32"], tmp_path, "svd:rank=8+lasso:max_error=0.05")
    check_max_error(report, 0.05)


def test_deterministic(fp32_model, tmp_path):
    check_deterministic(fp32_model, tmp_path, "lasso:max_error=0.1,dict=dct,segment=64+zstd")


@pytest.mark.parametrize(
    "text",
    [
        "lasso:alpha=0.01",
        "lasso:nnz=4,dict=dct,segment=64",
        "lasso:max_error=0.05,debias=false+zstd",
        "lasso:max_error=0.05,dict=learned,atoms=32,view=last",
    ],
)
def test_config_roundtrip(text):
    check_config_roundtrip(text)


@pytest.mark.parametrize(
    "text, words",
    [
        ("lasso:dict=wavelet,alpha=1", ["identity, dct, learned"]),
        ("lasso:bogus=1", ["alpha", "nnz", "max_error", "dict", "atoms", "segment", "debias", "view"]),
        ("lasso:alpha=1,nnz=2", ["one budget"]),
        ("lasso", ["alpha, nnz, max_error"]),
        ("lasso:alpha=-1", ["0 <= x"]),
        ("lasso:alpha=1,segment=0", ["integer, 1 <= x"]),
        ("lasso:alpha=1,atoms=8", ["dict=learned"]),
        ("lasso:alpha=1,debias=maybe", ["true or false"]),
    ],
)
def test_bad_params(text, words):
    with pytest.raises(UsageError) as error:
        parse_pipeline(text)
    assert all(w in str(error.value) for w in words), str(error.value)


# --- with the real K-SVD dictionary (last: it is written concurrently) ---------------------------


@pytest.mark.parametrize("budget", ["alpha=0.05", "nnz=3", "max_error=0.3"])
def test_learned_dictionary_from_ksvd(budget):
    w = np.random.default_rng(9).standard_normal((16, 96))
    out = check_encode_decode(stage(f"lasso:{budget},dict=learned,atoms=24"), w)
    assert out.parts["dictionary"].shape == (16, 24)
    if budget.startswith("max_error"):
        assert relative_error(w, out.approximation) <= 0.3


def test_learned_roundtrip(tmp_path):
    from safetensors.numpy import save_file

    source = tmp_path / "m.safetensors"
    save_file({"w": np.random.default_rng(10).standard_normal((32, 48)).astype(np.float32)}, str(source))
    report = check_roundtrip(source, tmp_path, "lasso:max_error=0.3,dict=learned,segment=16", min_size=0)
    check_max_error(report, 0.3)


def test_learned_dictionary_that_cannot_reach_max_error_falls_back_to_identity():
    """A 2-atom dictionary cannot code 40 random 30-long signals to 1%: the values are coded instead."""
    target = np.random.default_rng(11).standard_normal((30, 40))
    out = check_encode_decode(Lasso(max_error=0.01, dict="learned", atoms=2), target)
    assert out.resolved["dict"] == "identity" and "fallback" in out.resolved
    assert relative_error(target, out.approximation) <= 0.01
