"""quantize: bit packing, RTN per group (against numpy references), storable scales, 1-D k-means (against sklearn)."""

from __future__ import annotations

import numpy as np
import pytest
from checkers import read_tensors
from conftest import SAMPLE_FILES
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from threadpoolctl import threadpool_limits

from sparsify.errors import CorruptArchiveError
from sparsify.quantize import (
    Quantized,
    bits_for,
    dequantize,
    group_layout,
    kmeans_1d,
    nearest_centroid,
    pack_bits,
    packed_nbytes,
    quantize,
    storable_scale,
    unpack_bits,
)

F16_MAX = float(np.finfo(np.float16).max)


def weights(name: str) -> np.ndarray:
    """A real weight matrix from the sample models, float64."""
    if name.startswith("crepe:"):
        return read_tensors(SAMPLE_FILES["crepe"])[name[6:]].astype(np.float64)
    return read_tensors(SAMPLE_FILES["fp32"])[name].astype(np.float64)


# --- bit packing ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_unpack_roundtrip(bits, data):
    codes = data.draw(hnp.arrays(np.uint8, st.integers(0, 67), elements=st.integers(0, (1 << bits) - 1)))
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_nbytes(codes.size, bits) == -(-codes.size * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, codes.size), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_is_msb_first_bit_stream(bits):
    """Code k takes bits [k*bits, (k+1)*bits) of the big-endian stream, padding bits are zero."""
    codes = (np.arange(11) % (1 << bits)).astype(np.uint8)
    stream = "".join(format(int(c), f"0{bits}b") for c in codes)
    stream += "0" * (-len(stream) % 8)
    expected = [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]
    assert pack_bits(codes, bits).tolist() == expected


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 9, 33])
def test_unpack_rejects_wrong_sizes(bits, count):
    right = packed_nbytes(count, bits)
    for size in {right - 1, right + 1} - {-1}:
        with pytest.raises(CorruptArchiveError):
            unpack_bits(np.zeros(size, np.uint8), bits, count)


# --- RTN quantisation ----------------------------------------------------------------------------

# Zero, or magnitudes whose scales float32 can hold (beyond that: test_scales_beyond_float32_range).
finite = st.one_of(st.just(0.0), st.floats(1e-6, 1e4), st.floats(-1e4, -1e-6))


@st.composite
def matrices(draw):
    """Matrices with assorted rows: random, constant, zero, negative-only, positive-only."""
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    matrix = draw(hnp.arrays(np.float64, (rows, cols), elements=finite))
    kind = draw(st.sampled_from(["any", "constant", "zero", "negative", "positive", "tiny"]))
    if kind == "constant":
        matrix[:] = matrix[0, 0]
    elif kind == "zero":
        matrix[:] = 0.0
    elif kind == "negative":
        matrix = -np.abs(matrix) - 1.0
    elif kind == "positive":
        matrix = np.abs(matrix) + 1.0
    elif kind == "tiny":
        matrix = matrix * 1e-8
    return matrix


@settings(max_examples=200, deadline=None)
@given(matrix=matrices(), bits=st.integers(2, 8), group=st.integers(0, 50))
def test_symmetric_error_within_half_a_step(matrix, bits, group):
    q = quantize(matrix, bits, group, symmetric=True)
    groups, width = group_layout(matrix.shape, group)
    assert q.zero is None and q.scale.shape == (matrix.shape[0], groups) and q.codes.shape == matrix.shape
    assert q.scale.dtype in (np.float16, np.float32) and np.all(q.scale >= 0)
    assert q.codes.min() >= 1 and q.codes.max() <= (1 << bits) - 1  # the most negative code is unused
    decoded = dequantize(q, bits, group)
    step = np.repeat(q.scale.astype(np.float64), width, axis=1)[:, : matrix.shape[1]]
    assert np.all(np.abs(decoded - matrix) <= step / 2 * (1 + 1e-12))
    assert np.all(decoded[matrix == 0] == 0)  # zero is exact
    assert np.all(decoded[matrix != 0] * matrix[matrix != 0] >= 0)  # no sign flips


@settings(max_examples=200, deadline=None)
@given(matrix=matrices(), bits=st.integers(2, 8), group=st.integers(0, 50))
def test_asymmetric_codes_and_zero(matrix, bits, group):
    q = quantize(matrix, bits, group, symmetric=False)
    groups, width = group_layout(matrix.shape, group)
    assert q.zero is not None and q.zero.shape == q.scale.shape == (matrix.shape[0], groups)
    assert q.codes.max() <= (1 << bits) - 1 and q.zero.max() <= (1 << bits) - 1
    decoded = dequantize(q, bits, group)
    step = np.repeat(q.scale.astype(np.float64), width, axis=1)[:, : matrix.shape[1]]
    assert np.all(decoded[matrix == 0] == 0)  # the zero point keeps 0 exact, also in one-signed groups
    # Within half a step up to the rounding of the integer zero point, which can shift the representable
    # range by up to half a step (inherent to integer zero points, as in GPTQ-style RTN).
    assert np.all(np.abs(decoded - matrix) <= step * (0.5 + (1 << bits) * 2.0**-11) * (1 + 1e-12))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "shape",
    [
        (3, 0),
        (0, 5),
        (1, 1),
        (4, 128),
        (4, 129),
    ],
)
def test_degenerate_shapes(shape, symmetric):
    matrix = np.random.default_rng(0).standard_normal(shape)
    q = quantize(matrix, 4, 128, symmetric)
    assert q.codes.shape == shape
    assert dequantize(q, 4, 128).shape == shape


def test_group_layout():
    assert group_layout((3, 300), 128) == (3, 128)
    assert group_layout((3, 300), 0) == (1, 300)
    assert group_layout((3, 300), 300) == (1, 300)
    assert group_layout((3, 300), 1000) == (1, 300)
    assert group_layout((3, 0), 128) == (0, 0)


def rtn_reference(matrix: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Symmetric RTN written out: per group scale = max|w| / (2**(b-1) - 1) as stored (float16 or, for the whole
    array, float32), w ~ rint(w/s) s."""
    half = (1 << (bits - 1)) - 1
    out = np.empty_like(matrix)
    maxima = [
        np.abs(matrix[r, a : a + (group or matrix.shape[1])]).max()
        for r in range(matrix.shape[0])
        for a in range(0, matrix.shape[1], group or matrix.shape[1])
    ]
    scales = np.array(maxima) / half
    nonzero = scales[scales > 0]
    # float16 when every nonzero scale is a normal float16 well below its top, else float32
    stored = np.float16 if nonzero.min() >= 2.0**-14 and nonzero.max() <= F16_MAX / 2 else np.float32
    width = group or matrix.shape[1]
    for r in range(matrix.shape[0]):
        for a in range(0, matrix.shape[1], width):
            g = matrix[r, a : a + width]
            scale = float(stored(np.abs(g).max() / half))
            out[r, a : a + width] = np.clip(np.rint(g / scale), -half, half) * scale if scale else 0.0
    return out


@pytest.mark.parametrize("name", ["fc2.weight", "fc1.weight", "crepe:classifier/classifier_3/kernel:0"])
def test_int8_per_row_equals_reference(name):
    w = weights(name)
    q = quantize(w, 8, 0, symmetric=True)
    assert q.scale.shape == (w.shape[0], 1)
    assert np.array_equal(q.scale[:, 0], (np.abs(w).max(axis=1) / 127).astype(q.scale.dtype))
    assert np.array_equal(dequantize(q, 8, 0), rtn_reference(w, 8, 0))
    # The float16 scale costs nothing that matters: within 0.1% of RTN with the exact scale.
    exact_scale = np.abs(w).max(axis=1, keepdims=True) / 127
    exact = np.rint(w / exact_scale) * exact_scale
    assert np.linalg.norm(dequantize(q, 8, 0) - w) <= 1.001 * np.linalg.norm(exact - w)


@pytest.mark.parametrize("name", ["fc2.weight", "crepe:classifier/classifier_3/kernel:0"])
def test_int4_group128_equals_reference(name):
    w = weights(name)
    w = np.hstack([w, w[:, :45]])  # a last group narrower than 128
    q = quantize(w, 4, 128, symmetric=True)
    assert q.scale.shape == (w.shape[0], -(-w.shape[1] // 128))
    assert np.array_equal(dequantize(q, 4, 128), rtn_reference(w, 4, 128))


def test_storable_scale_falls_back_to_float32():
    assert storable_scale(np.array([0.0, 1e-3, 100.0])).dtype == np.float16
    assert storable_scale(np.zeros(3)).dtype == np.float16
    assert storable_scale(np.array([1.0, F16_MAX])).dtype == np.float32  # near the float16 top
    assert storable_scale(np.array([1.0, 1e-6])).dtype == np.float32  # would be subnormal in float16
    assert storable_scale(np.array([0.0, 1e-7])).dtype == np.float32  # would round to 0 in float16
    huge = quantize(np.array([[1e7, -3e5, 7.0]]), 8, 0, symmetric=True)
    tiny = quantize(np.array([[1e-7, -3e-8, 0.0]]), 8, 0, symmetric=False)
    for q, x in ((huge, [[1e7, -3e5, 7.0]]), (tiny, [[1e-7, -3e-8, 0.0]])):
        assert q.scale.dtype == np.float32 and np.all(np.isfinite(q.scale)) and np.all(q.scale > 0)
        decoded = dequantize(q, 8, 0)
        assert np.all(np.abs(decoded - x) <= float(q.scale.max()) * 0.6)


@pytest.mark.parametrize("values", [[1e300, -2e299], [1e-300, 5e-301]], ids=["huge", "tiny"])
def test_scales_beyond_float32_range(values):
    x = np.array([values])
    with np.errstate(all="ignore"):
        q = quantize(x, 8, 0, symmetric=True)
        decoded = dequantize(q, 8, 0)
    step = float(q.scale.astype(np.float64).max())
    assert np.all(np.isfinite(decoded)) and np.all(np.abs(decoded - x) <= step / 2 * (1 + 1e-9))


def test_quantized_decodes_from_stored_scale():
    """Dequantising uses only codes, scales, zero points: a hand-made Quantized decodes as documented."""
    q = Quantized(np.array([[8, 9, 1, 15]], np.uint8), np.array([[0.5]], np.float16), None)
    assert dequantize(q, 4, 0).tolist() == [[0.0, 0.5, -3.5, 3.5]]
    q = Quantized(np.array([[0, 3, 15]], np.uint8), np.array([[0.25]], np.float16), np.array([[3]], np.uint8))
    assert dequantize(q, 4, 0).tolist() == [[-0.75, 0.0, 3.0]]


# --- 1-D k-means ---------------------------------------------------------------------------------


def sq_error(values: np.ndarray, centroids: np.ndarray) -> float:
    flat = values.reshape(-1)
    return float(np.sum((flat - centroids[nearest_centroid(flat, centroids)]) ** 2))


@settings(max_examples=120, deadline=None)
@given(
    values=hnp.arrays(np.float64, st.integers(1, 200), elements=st.floats(-100, 100, allow_subnormal=False)),
    k=st.integers(2, 20),
)
def test_kmeans_centroids_sorted_at_most_k_and_lloyd_fixed_point(values, k):
    centroids = kmeans_1d(values, k, iterations=10_000)
    assert 1 <= centroids.size <= k and np.all(np.diff(centroids) > 0)
    # Cell means come from differences of one cumulative sum, so they carry its rounding (~n eps max|v|).
    tol = 1e-12 * values.size * max(float(np.abs(values).max()), 1e-300)
    assert centroids.min() >= values.min() - tol and centroids.max() <= values.max() + tol
    distinct = np.unique(values)
    if distinct.size <= k:
        assert np.array_equal(centroids, distinct) and sq_error(values, centroids) == 0
    cells = nearest_centroid(values, centroids)
    for j, c in enumerate(centroids):  # Lloyd's property: each centroid is the mean of its cell
        members = values[cells == j]
        if members.size:
            assert c == pytest.approx(members.mean(), rel=1e-9, abs=tol)
    # never worse than the uniform grid of k levels it starts from
    grid = sq_error(values, np.linspace(values.min(), values.max(), k))
    assert sq_error(values, centroids) <= grid * (1 + 1e-12) + values.size * tol**2


def test_kmeans_edge_cases():
    assert kmeans_1d(np.zeros(0), 4).tolist() == [0.0]
    assert kmeans_1d(np.full(10, 3.0), 4).tolist() == [3.0]
    assert kmeans_1d(np.array([2.0, -1.0, 2.0, 5.0]), 3).tolist() == [-1.0, 2.0, 5.0]
    assert nearest_centroid(np.array([-5.0, 0.49, 0.5, 0.51, 9.0]), np.array([0.0, 1.0])).tolist() == [0, 0, 0, 1, 1]
    assert nearest_centroid(np.array([1.0, 2.0]), np.array([7.0])).tolist() == [0, 0]
    assert [bits_for(n) for n in (1, 2, 3, 4, 5, 16, 17, 256)] == [1, 1, 2, 2, 3, 4, 5, 8]


@pytest.mark.parametrize("name", ["fc2.weight", "fc1.weight", "crepe:classifier/classifier_3/kernel:0"])
@pytest.mark.parametrize("k", [4, 16, 64])
def test_kmeans_beats_uniform_grid_on_real_weights(name, k):
    w = weights(name).reshape(-1)
    grid = np.linspace(w.min(), w.max(), k)
    assert sq_error(w, kmeans_1d(w, k)) <= sq_error(w, grid)


def sklearn_inertia(values: np.ndarray, k: int) -> float:
    from sklearn.cluster import KMeans

    with threadpool_limits(1):
        return float(KMeans(k, n_init=3, random_state=0).fit(values.reshape(-1, 1)).inertia_)


@pytest.mark.parametrize("k", [8, 16])
def test_kmeans_converged_matches_sklearn(k):
    """Converged, it is Lloyd's local optimum from the linear init: equal to sklearn's from the same init, and
    within 8% of sklearn's k-means++ with 3 restarts (k=8: +6.9%, k=16: +1.4% on digits fc2)."""
    from sklearn.cluster import KMeans

    w = weights("fc2.weight").reshape(-1)
    ours = sq_error(w, kmeans_1d(w, k, iterations=1000))
    with threadpool_limits(1):
        init = np.linspace(w.min(), w.max(), k)[:, None]
        same_init = KMeans(k, init=init, n_init=1, max_iter=1000, tol=0).fit(w[:, None]).inertia_
    assert ours <= same_init * (1 + 1e-6)
    assert ours <= 1.08 * sklearn_inertia(w, k)


def test_kmeans_default_iterations_match_sklearn():
    w = weights("fc2.weight").reshape(-1)
    assert sq_error(w, kmeans_1d(w, 16)) <= 1.05 * sklearn_inertia(w, 16)
