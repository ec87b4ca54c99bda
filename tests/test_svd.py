"""svd: truncated SVD (exact and randomized), its three budgets, column blocks, and the archive round trip."""

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
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from threadpoolctl import threadpool_limits

from sparsify.archive import Archive
from sparsify.errors import CorruptArchiveError
from sparsify.methods.base import EncodeContext
from sparsify.methods.svd import SVD, block_widths
from sparsify.pipeline import resolve_config

# The smallest max_error each storage type can reach at full rank (rounding of the stored factors).
REACHABLE = {np.float64: 1e-9, np.float32: 1e-4, np.float16: 0.01, ml_dtypes.bfloat16: 0.05}


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Small matrices gain nothing from BLAS threads, and on a loaded machine spinning threads cost 10x."""
    with threadpool_limits(1, user_api="blas"):
        yield


def svd(**given) -> SVD:
    return SVD(**resolve_config(SVD, given))


def decaying(m: int, n: int, seed: int = 0, rate: float = 0.5) -> np.ndarray:
    """A random m x n matrix with singular values i^-rate (i = 1 ...)."""
    rng = np.random.default_rng(seed)
    p = min(m, n)
    u = np.linalg.qr(rng.standard_normal((m, p)))[0]
    v = np.linalg.qr(rng.standard_normal((n, p)))[0]
    return (u * np.arange(1.0, p + 1) ** -rate) @ v.T


def truncation(w: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


@pytest.mark.parametrize(
    "config",
    [
        {"rank": 5},
        {"rank": 200},
        {"energy": 0.8},
        {"max_error": 0.2},
        {"max_error": 0.2, "block": 7},
        {"rank": 3, "block": 16, "solver": "randomized"},
        {"energy": 0.9, "solver": "randomized", "block": 30},
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_encode_decode_contract(config, dtype):
    out = check_encode_decode(svd(**config), decaying(40, 70), float_dtype=dtype)
    assert out.parts["us"].dtype == np.dtype(dtype) and out.parts["vt"].dtype == np.dtype(dtype)
    assert out.resolved["rank"] == out.parts["us"].shape[1]
    if "block" in config:
        assert out.resolved["ranks"] == out.parts["ranks"].tolist() and out.parts["ranks"].dtype == np.uint8


@pytest.mark.parametrize("name", ["fp32", "crepe", "bf16"])
def test_roundtrip_samples(name, tmp_path):
    report = check_roundtrip(SAMPLE_FILES[name], tmp_path, "svd:rank=8")
    assert any(not row["exact"] for row in report["tensors"])


def test_max_error_from_the_archive_bf16(tmp_path):
    report = check_roundtrip(SAMPLE_FILES["bf16"], tmp_path, "svd:max_error=0.3")
    check_max_error(report, 0.3)


@settings(max_examples=150, deadline=None)
@given(
    m=st.integers(1, 60),
    n=st.integers(1, 80),
    seed=st.integers(0, 2**16),
    bound=st.floats(0.0, 1.2),
    solver=st.sampled_from(["auto", "exact", "randomized"]),
    block=st.one_of(st.none(), st.integers(1, 90)),
    dtype=st.sampled_from(list(REACHABLE)),
)
def test_max_error_never_exceeded(m, n, seed, bound, solver, block, dtype):
    bound = max(bound, REACHABLE[dtype])
    w = decaying(m, n, seed) * np.random.default_rng(seed).uniform(0.1, 100)
    config = {"max_error": bound, "solver": solver, "oversample": 2, **({"block": block} if block else {})}
    out = check_encode_decode(svd(**config), w, float_dtype=dtype, seed=seed)
    assert relative_error(w, out.approximation) <= bound


def test_rank_grows_when_rounding_of_stored_factors_breaks_max_error():
    w = decaying(40, 60, seed=9)
    s2 = np.linalg.svd(w, compute_uv=False) ** 2
    bound = float(np.sqrt(s2[10:].sum() / s2.sum())) + 1e-7  # rank 10 meets it, but not in bfloat16
    out = check_encode_decode(svd(max_error=bound, solver="exact"), w, float_dtype=ml_dtypes.bfloat16)
    assert out.resolved["rank"] == 11 and relative_error(w, out.approximation) <= bound


def test_max_error_is_relative_to_the_original_tensor():
    """On a residual, max_error is measured against ||W|| of the original (ctx.reference_sq)."""
    w = decaying(30, 50)
    out = check_encode_decode(svd(max_error=0.1), 0.5 * w, float_dtype=np.float64, reference_sq=float(np.sum(w * w)))
    assert np.linalg.norm(0.5 * w - out.approximation) <= 0.1 * np.linalg.norm(w)
    assert out.resolved["rank"] < check_encode_decode(svd(max_error=0.1), 0.5 * w).resolved["rank"]


@pytest.mark.parametrize("solver", ["exact", "randomized", "auto"])
@pytest.mark.parametrize("energy", [0.3, 0.8, 0.95, 1.0])
def test_energy_budget_honoured(solver, energy):
    w = decaying(100, 120, seed=1)
    out = check_encode_decode(svd(energy=energy, solver=solver), w, float_dtype=np.float64)
    s2 = np.linalg.svd(w, compute_uv=False) ** 2
    r = out.resolved["rank"]
    assert out.resolved["energy"] >= energy - 1e-12
    assert 1 - relative_error(w, out.approximation) ** 2 >= energy - 1e-9
    if solver == "exact":
        assert s2[: r - 1].sum() < energy * s2.sum()  # the smallest such rank


def test_energy_over_blocks_takes_the_largest_sigmas():
    w = np.hstack([decaying(40, 30, seed=2), 0.6 * decaying(40, 30, seed=3)])
    out = check_encode_decode(svd(energy=0.9, block=30), w, float_dtype=np.float64)
    spectra = [np.linalg.svd(w[:, j : j + 30], compute_uv=False) ** 2 for j in (0, 30)]
    ranks = out.resolved["ranks"]
    kept = sum(s[:r].sum() for s, r in zip(spectra, ranks, strict=True))
    assert kept >= 0.9 * sum(s.sum() for s in spectra) - 1e-12
    assert ranks[0] > ranks[1] > 0
    # greedy: every dropped sigma^2 is at most every kept one
    pairs = list(zip(spectra, ranks, strict=True))
    assert max(s[r] for s, r in pairs) <= min(s[r - 1] for s, r in pairs)


@pytest.mark.parametrize("rank", [1, 7, 30, 45])
def test_exact_equals_numpy_truncation(rank):
    w = decaying(45, 60, seed=4)
    out = check_encode_decode(svd(rank=rank, solver="exact"), w, float_dtype=np.float64)
    assert np.allclose(out.approximation, truncation(w, rank), rtol=0, atol=1e-10)


def test_exact_blocks_equal_numpy_truncation_per_block():
    w = decaying(20, 50, seed=5)
    out = check_encode_decode(svd(rank=4, solver="exact", block=16), w, float_dtype=np.float64)
    assert block_widths(50, 16) == [16, 16, 16, 2] and out.resolved["ranks"] == [4, 4, 4, 2]
    for a in range(0, 50, 16):
        b = min(a + 16, 50)
        assert np.allclose(out.approximation[:, a:b], truncation(w[:, a:b], 4), atol=1e-10)


@pytest.mark.parametrize("shape, rank", [((200, 300), 5), ((200, 300), 25), ((96, 800), 12)])
def test_randomized_within_one_percent_of_exact(shape, rank):
    w = decaying(*shape, seed=6, rate=0.3)
    exact = relative_error(w, truncation(w, rank))
    out = check_encode_decode(svd(rank=rank), w, float_dtype=np.float64)
    assert out.resolved["solver"] == "randomized" and out.resolved["singular_values"] == rank + 10
    assert relative_error(w, out.approximation) <= 1.01 * exact


def test_auto_switches_to_exact_for_large_ranks_and_small_matrices():
    assert check_encode_decode(svd(rank=26), decaying(200, 300)).resolved["solver"] == "exact"  # 26 > 200 // 8
    assert check_encode_decode(svd(rank=2), decaying(60, 300)).resolved["solver"] == "exact"  # 60 < 64
    assert check_encode_decode(svd(max_error=0.5), decaying(200, 300, rate=2)).resolved["solver"] == "randomized"


def test_rank_zero():
    zeros = check_encode_decode(svd(rank=5), np.zeros((6, 9)))
    assert zeros.parts["us"].shape == (6, 0) and zeros.parts["vt"].shape == (0, 9)
    loose = check_encode_decode(svd(max_error=1.0, block=4), decaying(6, 9))
    assert loose.resolved["ranks"] == [0, 0, 0] and not loose.approximation.any()


def test_rank_zero_through_the_archive(tmp_path):
    source = tmp_path / "z.safetensors"
    save_file({"z": np.zeros((40, 40), np.float32), "w": decaying(40, 40).astype(np.float32)}, str(source))
    report = check_roundtrip(source, tmp_path, "svd:max_error=1.0")
    assert {r["name"]: r["rel_error"] for r in report["tensors"]} == {"w": 1.0, "z": 0.0}


def test_signs_fixed_and_deterministic():
    w = decaying(70, 90, seed=7)
    for solver in ("exact", "randomized"):
        a = check_encode_decode(svd(rank=8, solver=solver), w)
        b = check_encode_decode(svd(rank=8, solver=solver), w)
        assert all(a.parts[k].tobytes() == b.parts[k].tobytes() for k in a.parts)
        us = a.parts["us"].astype(np.float64)
        assert (us[np.argmax(np.abs(us), axis=0), np.arange(8)] > 0).all()


@pytest.mark.parametrize("pipeline", ["svd:rank=8", "svd:max_error=0.3,solver=randomized,block=32"])
def test_deterministic(fp32_model, tmp_path, pipeline):
    check_deterministic(fp32_model, tmp_path, pipeline)


@pytest.mark.parametrize(
    "text",
    [
        "svd:rank=8",
        "svd:energy=0.9,solver=exact",
        "svd:max_error=0.05,solver=randomized,oversample=4,power_iters=1,block=64,view=last+zstd",
        "svd:energy=0.9+threshold:max_error=0.05",
    ],
)
def test_config_roundtrip(text):
    check_config_roundtrip(text)


def test_composition_with_threshold_meets_max_error(tmp_path):
    report = check_roundtrip(SAMPLE_FILES["fp32"], tmp_path, "svd:energy=0.9+threshold:max_error=0.05")
    check_max_error(report, 0.05)
    assert any(row["pipeline"].startswith("svd:energy=0.9") for row in report["tensors"])


@pytest.mark.parametrize("view", ["first", "last"])
def test_view_recorded_in_the_manifest(tmp_path, view):
    check_roundtrip(SAMPLE_FILES["crepe"], tmp_path, f"svd:rank=4,view={view}")
    with Archive(tmp_path / "weights.h5.sparsify") as archive:
        kernel = next(t for t in archive.tensors if t["name"].endswith("conv2_3/kernel:0"))
    assert kernel["shape"] == [64, 128, 16]
    rows = 64 if view == "first" else 16
    assert kernel["view"] == {"layout": view, "rows": rows, "cols": 64 * 128 * 16 // rows}
    assert kernel["stages"][0]["resolved"]["rank"] == 4


def test_nonfinite_entries_do_not_break_the_factors():
    w = decaying(10, 12)
    w[2, 3], w[4, 5] = np.inf, np.nan
    out = check_encode_decode(svd(rank=2), w)
    assert np.isfinite(out.approximation).all() and out.resolved["nonfinite"] == 2


def test_float16_overflow_falls_back_to_float32():
    out = check_encode_decode(svd(rank=2), decaying(30, 30) * 1e7, float_dtype=np.float16)
    assert out.parts["us"].dtype == np.float32 and out.resolved["factor_dtype"] == "float32"


@pytest.mark.parametrize(
    "text, message",
    [
        ("svd:rank=0", "integer, 1 <= x"),
        ("svd:solver=fast", "auto, exact, randomized"),
        ("svd:energy=0", "0 < x <= 1"),
        ("svd:rank=4,energy=0.5", "give one budget"),
        ("svd", "one of rank, energy, max_error"),
    ],
)
def test_bad_params(text, message):
    check_usage_error(text, message)


def test_corrupt_parts_are_rejected():
    out = check_encode_decode(svd(rank=3, block=5), decaying(8, 12))
    method = svd(rank=3, block=5)
    bad = [
        {**out.parts, "vt": out.parts["vt"][:-1]},
        {**out.parts, "ranks": np.array([9, 3, 2], np.uint8)},
        {k: v for k, v in out.parts.items() if k != "ranks"},
    ]
    for parts in bad:
        with pytest.raises(CorruptArchiveError):
            method.decode(parts, out.resolved, (8, 12))
    with pytest.raises(CorruptArchiveError):
        svd(rank=3).decode({"us": np.zeros((8, 3)), "vt": np.zeros((2, 12))}, {}, (8, 12))


def test_seed_changes_only_randomized_output():
    w = decaying(80, 100, seed=8)
    ctx = [EncodeContext(np.dtype(np.float32), np.dtype(np.float32), float(np.sum(w * w)), seed=s) for s in (0, 1)]
    a, b = (svd(rank=5, solver="randomized").encode(w, c) for c in ctx)
    assert a.parts["us"].tobytes() != b.parts["us"].tobytes()
    assert relative_error(w, a.approximation) == pytest.approx(relative_error(w, b.approximation), rel=0.01)
