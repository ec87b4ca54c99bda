"""Rate control on estimates: the sample, the estimates against exact measurements, and the
estimated planner against the exhaustive reference (``SPARSIFY_RATE_CONTROL=exhaustive``)."""

from __future__ import annotations

import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import sparsify
import sparsify.ratecontrol as ratecontrol
from sparsify import estimate
from sparsify.codec import Original
from sparsify.io.base import TensorInfo
from sparsify.planner import RATE_CONTROL_ENV
from sparsify.ratecontrol import Point, TensorPlan, ladder_candidates, measure_candidates


def _weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Heavy-tailed weights whose scale varies from row to row and along the columns (as trained
    convolution kernels' do), with a few outliers."""
    rng = np.random.default_rng(seed)
    rows = shape[0]
    values = rng.standard_t(4, size=shape) * np.exp(rng.normal(0, 0.5, size=(rows,) + (1,) * (len(shape) - 1)))
    values *= np.exp(rng.normal(0, 0.3, size=shape[-1]))
    values.reshape(-1)[rng.integers(0, values.size, 5)] *= 12
    return (values * 0.02).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small model with two tensors big enough to be sampled (short and long rows) and one not."""
    path = tmp_path_factory.mktemp("estimate") / "model.safetensors"
    tensors = {
        "short.weight": _weights((512, 400), 1),
        "long.weight": _weights((24, 12, 1024), 2),
        "small.weight": _weights((96, 128), 3),
        "short.bias": _weights((512,), 4),
    }
    save_file(tensors, str(path))
    return path


def test_the_sample_is_systematic_and_aligned():
    rows, cols = estimate.sample_positions(64, 16384)
    assert np.array_equal(rows, np.arange(64))  # as many rows as there are runs
    runs = cols.reshape(rows.size, -1, estimate.RUN)
    assert rows.size * cols.shape[1] >= estimate.SAMPLE_ELEMENTS
    assert np.all(runs[:, :, 0] % estimate.RUN == 0)  # RTN groups of the full rows
    assert np.all(np.diff(runs, axis=2) == 1)  # consecutive values
    # the runs of all rows together cover the columns evenly, not the same columns in every row
    uses = np.bincount(runs[:, :, 0].reshape(-1) // estimate.RUN, minlength=16384 // estimate.RUN)
    assert uses.max() - uses.min() <= 1
    many_rows, _ = estimate.sample_positions(1000, 8192)
    assert np.array_equal(many_rows, estimate.evenly_spaced(many_rows.size, 1000)) and many_rows.size < 1000
    short_rows, short_cols = estimate.sample_positions(4096, 300)
    assert np.array_equal(short_cols[0], np.arange(300)) and short_rows.size * 300 >= estimate.SAMPLE_ELEMENTS
    assert estimate.sample_positions(256, 512) is None  # small: measured exactly


def test_the_sample_holds_what_whole_rows_and_the_whole_tensor_decide():
    array = _weights((32, 2, 4096), 5)
    array[7, 1, 4000] = 3.0  # the tensor's largest value, in a row the sample does not take
    array[30, 0, 5] = -2.5
    sample = estimate.take_sample(array, "first")
    matrix = array.reshape(32, -1)
    assert set(sample.extremes.tolist()) == {3.0, -2.5}
    rows, _ = estimate.sample_positions(*matrix.shape)
    peaks = matrix[rows, np.argmax(np.abs(matrix[rows]), axis=1)]
    assert np.array_equal(sample.peaks[:, 0], peaks)
    per_row = estimate.sampled_matrix(sample, "quant:bits=8+zstd")
    assert per_row.shape == (rows.size, sample.values.shape[1] + 1)
    assert estimate.sampled_matrix(sample, "quant:bits=4,group=128+zstd") is sample.values
    whole = estimate.sampled_matrix(sample, "quant:step=0.01+zstd")
    assert whole.shape == (1, sample.values.size + 2) and whole.max() == 3.0 and whole.min() == -2.5
    assert estimate.take_sample(np.where(matrix > 2, np.nan, matrix), "first") is None  # not finite
    keras = estimate.take_sample(np.ascontiguousarray(np.moveaxis(array, 0, -1)), "last")
    assert np.array_equal(keras.values, sample.values)  # the same matrix view, output channels last


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_estimates_are_close_to_the_exact_figures(dtype):
    array = _weights((64, 4, 2048), 6).astype(dtype)
    info = TensorInfo("w", "F32" if dtype == np.float32 else "BF16", array.shape)
    candidates = [c for c in ladder_candidates(array) if "step=" in c][20:40] + ["quant:bits=8+zstd"]
    original = Original(array)
    exact = measure_candidates(array, info, candidates, 0, original)
    estimated = estimate.estimate_candidates(array, info, candidates, 0, original.reference.sq_norm)
    assert [p.pipeline for p in estimated] == [p.pipeline for p in exact]
    assert not any(p.exact for p in estimated) and not any(p.record for p in estimated)
    bytes_ratio = np.array([e.nbytes / x.nbytes for e, x in zip(estimated, exact, strict=True)])
    error_ratio = np.array([e.sq_error / x.sq_error for e, x in zip(estimated, exact, strict=True)])
    assert np.median(np.abs(bytes_ratio - 1)) < 0.03 and np.all(np.abs(bytes_ratio - 1) < 0.15), bytes_ratio
    assert np.median(np.abs(error_ratio - 1)) < 0.05 and np.all(np.abs(error_ratio - 1) < 0.2), error_ratio


def test_substitute_puts_exact_points_in_and_recalibrates_the_family():
    estimated = [
        Point("quant:step=0.1+zstd", 1000, 10.0, 0.1, exact=False),
        Point("quant:step=0.2+zstd", 600, 40.0, 0.2, exact=False),
        Point("quant:bits=8+zstd", 900, 5.0, 0.05, exact=False),
        Point("quant:codebook=4+zstd", 300, 90.0, 0.3, exact=False),
    ]
    plan = TensorPlan("t", 1000.0, list(estimated))
    requested = ["quant:step=0.1+zstd", "quant:codebook=4+zstd"]  # the codebook does not apply
    ratecontrol.substitute(plan, requested, [Point("quant:step=0.1+zstd", 1100, 12.0, 0.11, {"r": 1})])
    assert [p.pipeline for p in plan.points] == ["quant:step=0.1+zstd", "quant:step=0.2+zstd", "quant:bits=8+zstd"]
    assert plan.points[0].exact and plan.points[0].record == {"r": 1}
    step = plan.points[1]  # scaled by the exact / estimated figures of its family's exact point
    assert not step.exact and step.nbytes == 660 and math.isclose(step.sq_error, 48.0)
    assert plan.points[2] == estimated[2]  # no exact point of its family: as estimated
    # a later substitution scales from the first estimates, not from already scaled ones
    ratecontrol.substitute(plan, ["quant:bits=8+zstd"], [Point("quant:bits=8+zstd", 950, 5.0, 0.05)])
    assert plan.points[1].nbytes == 660


def test_a_family_a_tensor_has_no_exact_point_of_takes_the_models_correction():
    """family_corrections: per family, the lower median of exact / estimated over the model's exact
    points; substitute applies it where the tensor has no exact point of the family."""

    def plan_with(name: str, estimate: Point, exact: Point | None) -> TensorPlan:
        plan = TensorPlan(name, 1.0, [estimate])
        if exact is not None:
            ratecontrol.substitute(plan, [exact.pipeline], [exact])
        return plan

    measured = [
        plan_with(f"t{i}", Point(f"quant:codebook={c}+zstd", 1000, 10.0, 0.1, exact=False), exact)
        for i, (c, exact) in enumerate(
            [
                (64, Point("quant:codebook=64+zstd", 1100, 5.0, 0.07)),
                (32, Point("quant:codebook=32+zstd", 1200, 4.0, 0.06)),
                (16, Point("quant:codebook=16+zstd", 1300, 6.0, 0.08)),
            ]
        )
    ]
    shared = ratecontrol.family_corrections(measured)
    assert shared == {"quant:codebook+zstd": (1.2, 0.5, 0.5)}  # the middle of (1.1, 1.2, 1.3), of (0.4, 0.5, 0.6)
    other = TensorPlan("u", 1.0, [Point("quant:codebook=128+zstd", 2000, 8.0, 0.2, exact=False)])
    ratecontrol.substitute(other, (), [], shared)
    assert other.points[0].nbytes == 2400 and math.isclose(other.points[0].sq_error, 4.0)
    assert math.isclose(other.points[0].rel_error, 0.2 * math.sqrt(0.5)) and not other.points[0].exact


def test_near_choice_is_the_choice_and_its_hull_neighbours():
    points = [
        Point(f"p{i}", r, d, 0.0, exact=False)
        for i, (r, d) in enumerate([(10, 9.0), (20, 4.0), (30, 3.9), (40, 1.0), (50, 0.5)])
    ]
    plan = TensorPlan("t", 1.0, points, chosen=1)
    assert ratecontrol.near_choice(plan) == [0, 1, 3]  # (30, 3.9) is not on the hull
    assert ratecontrol.near_choice(plan, neighbours=False) == [1]
    plan.points[0] = Point("p0", 10, 9.0, 0.0)
    assert ratecontrol.near_choice(plan) == [1, 3]  # what is exact already is not measured again


def _weighted_error(report: dict) -> float:
    return report["totals"]["weighted_rel_error"]


@pytest.mark.parametrize("target", [{"target_ratio": 8}, {"target_ratio": 20}, {"target_error": 0.05}])
def test_the_estimated_plan_is_as_good_as_the_exhaustive_one(model, tmp_path, monkeypatch, target):
    exact_encodes = []
    real = ratecontrol.measure_candidates

    def counted(array, info, candidates, *args, **kwargs):
        candidates = list(candidates)
        if info.name == "long.weight" and array.size == 24 * 12 * 1024:
            exact_encodes.extend(candidates)
        return real(array, info, candidates, *args, **kwargs)

    monkeypatch.setattr(ratecontrol, "measure_candidates", counted)
    monkeypatch.setattr(estimate, "measure_candidates", counted)
    new = sparsify.compress(model, tmp_path / "new.sparsify", jobs=1, **target)
    assert 0 < len(exact_encodes) <= 6  # of the 63 candidates, only those near the choice in full
    monkeypatch.setenv(RATE_CONTROL_ENV, "exhaustive")
    reference = sparsify.compress(model, tmp_path / "ref.sparsify", jobs=1, **target)
    assert new["plan"]["met"] and reference["plan"]["met"]
    if "target_ratio" in target:
        assert new["totals"]["ratio"] >= target["target_ratio"]
        assert _weighted_error(new) <= 1.01 * _weighted_error(reference)
    else:
        lossy = [t for t in new["tensors"] if t["reason"].startswith("rate control")]
        assert new["plan"]["predicted_weighted_rel_error"] <= target["target_error"] and lossy
        assert new["totals"]["stored_bytes"] <= 1.01 * reference["totals"]["stored_bytes"]


def test_the_estimated_plan_writes_the_same_bytes_for_any_jobs(model, tmp_path):
    sparsify.compress(model, tmp_path / "one.sparsify", jobs=1, target_ratio=10)
    sparsify.compress(model, tmp_path / "two.sparsify", jobs=2, target_ratio=10)
    assert (tmp_path / "one.sparsify").read_bytes() == (tmp_path / "two.sparsify").read_bytes()
