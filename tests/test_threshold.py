"""threshold: its three budgets honoured exactly, measured from the archive; sparse storage choice."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from checkers import check_config_roundtrip, check_deterministic, check_max_error, check_roundtrip, read_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from sparsify import sparse
from sparsify.methods.base import EncodeContext
from sparsify.methods.threshold import Threshold, mask_for_sparsity, squared_threshold_for_error

slow = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_model(path, seed: int, shape=(48, 40), dtype=np.float32, ties: bool = False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    if ties:  # many equal magnitudes: tau may not split a group of ties
        w = np.round(w * 4) / 4
    arrays = {"layer.weight": w.astype(dtype), "other.weight": (rng.standard_normal((30, 30)) * 0.01).astype(dtype)}
    save_file(arrays, str(path))
    return arrays


@slow
@given(
    seed=st.integers(0, 2**16),
    bound=st.floats(0.0, 1.0),
    dtype=st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16, np.float64]),
    ties=st.booleans(),
)
def test_max_error_never_exceeded_and_tau_is_largest(tmp_path, seed, bound, dtype, ties):
    source = tmp_path / "m.safetensors"
    originals = write_model(source, seed, dtype=dtype, ties=ties)
    report = check_roundtrip(source, tmp_path, f"threshold:max_error={bound!r}", min_size=0)
    check_max_error(report, bound)
    for name, w in originals.items():
        sq = np.square(w.astype(np.float64)).reshape(-1)
        kept = read_tensors(tmp_path / "restored-m.safetensors")[name].astype(np.float64).reshape(-1) != 0
        # Largest tau: dropping also the next-smallest kept magnitude level would break the bound.
        kept_sq = sq[kept]
        if kept_sq.size:
            next_level = kept_sq.min()
            cost = sq[~kept].sum() + sq[sq == next_level].sum()
            assert cost > bound**2 * sq.sum() * (1 - 1e-9)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_sparsity_is_exact(tmp_path, sparsity):
    source = tmp_path / "m.safetensors"
    originals = write_model(source, 3)
    report = check_roundtrip(source, tmp_path, f"threshold:sparsity={sparsity}", min_size=0)
    restored = read_tensors(tmp_path / "restored-m.safetensors")
    for name, w in originals.items():
        zeros = int(np.count_nonzero(restored[name] == 0))
        assert zeros == round(sparsity * w.size), name
        kept = restored[name] != 0
        assert np.array_equal(restored[name][kept], w[kept])  # kept values are bit-exact copies
    assert all(r["density"] == pytest.approx(1 - sparsity, abs=1e-3) for r in report["tensors"])


def test_threshold_value_keeps_strictly_greater(tmp_path):
    source = tmp_path / "m.safetensors"
    originals = write_model(source, 4)
    check_roundtrip(source, tmp_path, "threshold:threshold=0.5", min_size=0)
    restored = read_tensors(tmp_path / "restored-m.safetensors")
    for name, w in originals.items():
        assert np.array_equal(restored[name], np.where(np.abs(w) > 0.5, w, 0))


def test_error_search_respects_ties():
    squares = np.array([1.0, 1.0, 1.0, 4.0])
    assert squared_threshold_for_error(squares, 2.5) == 0.0  # the three 1s cost 3 > 2.5: none can go
    assert squared_threshold_for_error(squares, 3.01) == 1.0
    assert squared_threshold_for_error(squares, 100.0) == 4.0


def test_nonfinite_values_are_kept():
    w = np.array([[np.inf, 0.1, -np.inf, np.nan, 5.0, 0.2]])
    ctx = EncodeContext(np.dtype(np.float32), np.dtype(np.float32), 25.05)
    for stage in (Threshold(sparsity=0.5), Threshold(max_error=1.0), Threshold(threshold=10.0)):
        out = stage.encode(w, ctx)
        assert np.isinf(out.approximation[0, [0, 2]]).all() and np.isnan(out.approximation[0, 3]), stage


@pytest.mark.parametrize("density, layout", [(0.01, "csr"), (0.9, "bitmask")])
def test_storage_picks_the_smaller_layout(density, layout):
    rng = np.random.default_rng(0)
    mask = rng.random((300, 200)) < density
    parts = sparse.pack(mask, np.ones(int(mask.sum()), dtype=np.float32))
    assert sparse.layout_of(parts) == layout
    assert parts.get("indices", np.zeros(0, np.uint8)).dtype == np.uint8  # 200 columns fit in one byte
    dense = sparse.unpack(parts, mask.shape)
    assert np.array_equal(dense != 0, mask)


def test_narrowest_index_types():
    assert sparse.narrowest_uint(255) == np.uint8
    assert sparse.narrowest_uint(256) == np.uint16
    assert sparse.narrowest_uint(70_000) == np.uint32
    assert sparse.narrowest_uint(2**40) == np.uint64


def test_integer_tensor_by_rule(tmp_path):
    source = tmp_path / "i.safetensors"
    save_file({"ids": np.arange(-500, 500, dtype=np.int32).reshape(20, 50)}, str(source))
    report = check_roundtrip(source, tmp_path, "keep", rules=["ids=threshold:sparsity=0.5"])
    restored = read_tensors(tmp_path / "restored-i.safetensors")["ids"]
    assert restored.dtype == np.int32 and np.count_nonzero(restored == 0) == 500
    assert report["tensors"][0]["pipeline"] == "threshold:sparsity=0.5"


def test_deterministic(fp32_model, tmp_path):
    check_deterministic(fp32_model, tmp_path, "threshold:max_error=0.1+zstd")


@pytest.mark.parametrize(
    "text", ["threshold:sparsity=0.9", "threshold:max_error=0.05+zstd:level=7", "keep", "threshold:threshold=0.01+zstd"]
)
def test_config_roundtrip(text):
    check_config_roundtrip(text)


def test_every_sample_meets_max_error(sample, tmp_path):
    report = check_roundtrip(sample, tmp_path, "threshold:max_error=0.05")
    check_max_error(report, 0.05)
    assert any(not r["exact"] for r in report["tensors"])
    assert report["gate"] is None


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, np.inf, np.nan]), min_size=1, max_size=40),
    sparsity=st.floats(0.0, 1.0),
)
def test_sparsity_mask_matches_a_stable_sort(values, sparsity):
    """The O(N) partition gives the same mask as dropping by a stable sort (ties lowest index first)."""
    magnitude = np.abs(np.array(values))
    drop = int(round(sparsity * magnitude.size))
    order = np.argsort(np.where(np.isfinite(magnitude), magnitude, np.inf), kind="stable")
    expected = np.ones(magnitude.size, dtype=bool)
    expected[order[:drop]] = False
    assert np.array_equal(mask_for_sparsity(magnitude, sparsity), expected)


def test_scalar_and_tiny_tensors_by_rule(tmp_path):
    source = tmp_path / "s.safetensors"
    save_file({"s": np.array(2.5, np.float32), "v": np.array([1.0, -3.0, 0.25], np.float32)}, str(source))
    report = check_roundtrip(source, tmp_path, "keep", rules=["*=threshold:sparsity=0.5"])
    # round() halves to even: 0.5 of 1 entry drops none, 0.5 of 3 drops 2
    assert [r["density"] for r in report["tensors"]] == [1.0, pytest.approx(1 / 3)]
