"""ksvd: learning (monotone error, recovery), the method contract, budgets, the archive round trip."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from checkers import (
    check_config_roundtrip,
    check_deterministic,
    check_encode_decode,
    check_max_error,
    check_roundtrip,
    check_usage_error,
    relative_error,
)
from conftest import SAMPLE_FILES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from sparsify.errors import CorruptArchiveError
from sparsify.methods.base import EncodeContext
from sparsify.methods.ksvd import KSVD, ksvd, learn_dictionary, training_indices
from sparsify.pipeline import parse_pipeline, resolve_config


def method(**given) -> KSVD:
    return KSVD(**resolve_config(KSVD, given))


def synthetic(length=16, atoms=24, signals=1200, nnz=3, seed=0, noise=0.0):
    """Signals made of ``nnz`` atoms each of a random unit-norm dictionary (returned too)."""
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((length, atoms))
    dictionary /= np.linalg.norm(dictionary, axis=0)
    codes = np.zeros((atoms, signals))
    for s in range(signals):
        codes[rng.choice(atoms, nnz, replace=False), s] = rng.standard_normal(nnz) + np.sign(rng.standard_normal(nnz))
    return dictionary @ codes + noise * rng.standard_normal((length, signals)), dictionary


@pytest.mark.parametrize("seed, sample", [(0, None), (1, 0.5), (2, 300)])
def test_training_error_never_increases(seed, sample):
    y = np.random.default_rng(seed).standard_normal((12, 800))
    result = ksvd(y, 40, 3, 12, seed, sample)
    errors = np.array(result.errors)
    assert errors.size == 12 and errors[-1] < errors[0]
    assert (np.diff(errors) <= 1e-9 * errors[0]).all(), errors


def test_recovers_a_generating_dictionary():
    y, truth = synthetic(noise=0.01)
    learned = learn_dictionary(y, 24, 3, 25, 0)
    assert learned.shape == (16, 24)
    np.testing.assert_allclose(np.linalg.norm(learned, axis=0), 1.0, rtol=1e-12)
    best = np.abs(truth.T @ learned).max(axis=1)
    assert np.mean(best > 0.99) >= 0.9, np.sort(best)


def test_learning_is_seeded():
    y = np.random.default_rng(3).standard_normal((10, 300))
    a, b = learn_dictionary(y, 20, 2, 3, 7, 0.5), learn_dictionary(y, 20, 2, 3, 7, 0.5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, learn_dictionary(y, 20, 2, 3, 8, 0.5))


def test_training_sample_size():
    rng = np.random.default_rng(0)
    assert training_indices(1000, None, 10, rng).size == 1000
    assert training_indices(1000, 0.25, 10, rng).size == 250
    assert training_indices(1000, 300.0, 10, rng).size == 300
    assert training_indices(1000, 5.0, 64, rng).size == 64  # never fewer than the atoms
    picked = training_indices(1000, 0.5, 10, rng)
    assert np.array_equal(picked, np.unique(picked))


@pytest.mark.parametrize(
    "config, dtype",
    [
        ({"nnz": 4}, np.float32),
        ({"atoms": 20, "iters": 3}, np.float32),
        ({"nnz": 2, "segment": 7}, np.float16),
        ({"nnz": 3, "sample": 0.5}, ml_dtypes.bfloat16),
        ({"max_error": 0.3}, np.float64),
        ({"nnz": 1, "iters": 0}, np.float32),
    ],
)
def test_encode_decode_contract(config, dtype):
    target = np.random.default_rng(1).standard_normal((24, 70))
    out = check_encode_decode(method(**config), target, float_dtype=dtype)
    assert out.parts["dictionary"].dtype == np.dtype(dtype) and out.parts["codes_values"].dtype == np.dtype(dtype)
    length = config.get("segment", 24)
    assert out.parts["dictionary"].shape == (length, out.resolved["atoms"])
    assert out.resolved["max_codes_per_signal"] <= out.resolved["nnz"]
    assert relative_error(target, out.approximation) < 1.0


def test_final_error_no_worse_than_training():
    target, _ = synthetic(length=20, atoms=30, signals=600, nnz=4, seed=5, noise=0.05)
    out = check_encode_decode(KSVD(nnz=4, atoms=30), target, float_dtype=np.float64)  # both: library use only
    assert relative_error(target, out.approximation) <= out.resolved["train_errors"][-1] * (1 + 1e-9)
    untrained = check_encode_decode(KSVD(nnz=4, atoms=30, iters=0), target, float_dtype=np.float64)
    assert relative_error(target, out.approximation) < 0.85 * relative_error(target, untrained.approximation)


def test_budget_defaults_and_caps():
    target = np.random.default_rng(2).standard_normal((10, 40))
    out = check_encode_decode(method(nnz=30), target)
    assert out.resolved["atoms"] == 10 and out.resolved["nnz"] == 10  # default atoms: S / 4; nnz <= L, atoms
    out = check_encode_decode(method(nnz=30, atoms=100), target)
    assert out.resolved["atoms"] == 40  # atoms <= S
    out = check_encode_decode(method(atoms=16), target)
    assert out.resolved["nnz"] == 8


def test_nonfinite_entries_are_left_to_the_residual():
    target = np.random.default_rng(3).standard_normal((8, 30))
    target[2, 5], target[0, 0] = np.inf, np.nan
    out = check_encode_decode(method(nnz=2), target)
    assert np.isfinite(out.approximation).all()


def test_max_error_edges():
    target = np.random.default_rng(4).standard_normal((16, 50)).astype(np.float32).astype(np.float64)
    loose = check_encode_decode(method(max_error=1.0), target)
    assert loose.resolved["atoms"] == 0 and not loose.approximation.any()
    exact = check_encode_decode(method(max_error=0.0), target)
    assert exact.resolved.get("fallback") == "identity" and np.array_equal(exact.approximation, target)


def test_max_error_picks_the_smallest_nnz():
    target, _ = synthetic(length=16, atoms=24, signals=400, nnz=5, seed=6, noise=0.02)
    ctx = EncodeContext(np.dtype(np.float32), np.dtype(np.float32), float(np.sum(target**2)))
    out = KSVD(max_error=0.2, iters=5).encode(target, ctx)
    assert relative_error(target, out.approximation) <= 0.2
    smaller = KSVD(nnz=out.resolved["nnz"] - 1, iters=5).encode(target, ctx)
    assert relative_error(target, smaller.approximation) > 0.2
    same = KSVD(nnz=out.resolved["nnz"], iters=5).encode(target, ctx)
    assert np.array_equal(same.approximation, out.approximation)


def write_model(path, seed: int, shape, dtype):
    rng = np.random.default_rng(seed)
    arrays = {
        "a.weight": rng.standard_normal(shape).astype(dtype),
        "b.weight": rng.standard_normal((6, 9)).astype(dtype),
    }
    save_file(arrays, str(path))
    return arrays


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    bound=st.floats(0.0, 1.0),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 30)),
    dtype=st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16, np.float64]),
    segment=st.sampled_from(["", ",segment=5"]),
)
def test_max_error_never_exceeded(tmp_path, seed, bound, shape, dtype, segment):
    source = tmp_path / "m.safetensors"
    write_model(source, seed, shape, dtype)
    report = check_roundtrip(source, tmp_path, f"ksvd:max_error={bound!r},iters=3{segment}", min_size=0)
    check_max_error(report, bound)


def test_roundtrip_safetensors(tmp_path):
    report = check_roundtrip(SAMPLE_FILES["fp32"], tmp_path, "ksvd:nnz=4")
    lossy = [r for r in report["tensors"] if not r["exact"]]
    assert lossy and all(r["rel_error"] < 1 for r in lossy)


def test_roundtrip_hdf5_segments(tmp_path):
    report = check_roundtrip(SAMPLE_FILES["crepe"], tmp_path, "ksvd:nnz=2,segment=16,iters=3+zstd")
    assert any(not r["exact"] for r in report["tensors"])


def test_deterministic(tmp_path):
    check_deterministic(SAMPLE_FILES["fp32"], tmp_path, "ksvd:nnz=4,iters=3+zstd")


@pytest.mark.parametrize(
    "text",
    ["ksvd:nnz=4", "ksvd:atoms=64,segment=16,view=last", "ksvd:max_error=0.1,sample=0.5", "ksvd:nnz=2,sample=5000"],
)
def test_config_roundtrip(text):
    check_config_roundtrip(text)


def test_composition_with_svd(tmp_path):
    source = tmp_path / "m.safetensors"
    write_model(source, 9, (40, 64), np.float32)
    alone = check_roundtrip(source, tmp_path, "svd:rank=8", min_size=0)
    both = check_roundtrip(source, tmp_path, "svd:rank=8+ksvd:nnz=2,iters=3", min_size=0)
    for a, b in zip(alone["tensors"], both["tensors"], strict=True):
        assert b["rel_error"] <= a["rel_error"] * (1 + 1e-6), (a, b)
    assert both["tensors"][0]["rel_error"] < alone["tensors"][0]["rel_error"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("ksvd:nnz=4,max_error=0.1", "give one budget, not nnz and max_error"),
        ("ksvd:nnz=0", "valid: integer, 1 <= x"),
        ("ksvd:nnz=2,rank=3", "parameters: atoms .*nnz .*max_error .*iters .*sample .*segment .*view"),
        ("ksvd:nnz=2,sample=2.5", "sample=2.5 is not a fraction"),
        ("ksvd:nnz=2,sample=0", "out of range"),
    ],
)
def test_bad_params(text, message):
    check_usage_error(text, message)


def test_corrupt_parts_are_rejected():
    target = np.random.default_rng(5).standard_normal((12, 40))
    stage = method(nnz=2, atoms=40)  # sparse enough codes for CSR
    out = check_encode_decode(stage, target)
    with pytest.raises(CorruptArchiveError, match="dictionary"):
        stage.decode({**out.parts, "dictionary": out.parts["dictionary"][:5]}, out.resolved, target.shape)
    bad = dict(out.parts)
    bad["codes_indices"] = bad["codes_indices"] + 100
    with pytest.raises(CorruptArchiveError, match="inconsistent"):
        stage.decode(bad, out.resolved, target.shape)
    with pytest.raises(CorruptArchiveError, match="codes_values"):
        stage.decode({"dictionary": out.parts["dictionary"]}, out.resolved, target.shape)


def test_atoms_is_a_size_and_nnz_the_default_budget():
    assert str(parse_pipeline("ksvd")).startswith("ksvd:nnz=8,iters=")
    assert parse_pipeline("ksvd:atoms=64,nnz=4").methods[0].config["atoms"] == 64
    assert "nnz" not in parse_pipeline("ksvd:atoms=64,max_error=0.1").methods[0].config
