"""Error feedback (GPTQ): the factor, the feedback loop, the quant stage and the planner with input moments."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from checkers import check_encode_decode, decompress_with_cli
from conftest import SAMPLE_FILES
from safetensors.numpy import load_file, save_file

import sparsify
import sparsify.feedback as feedback
from sparsify.archive.reader import Archive
from sparsify.errors import InputError, UsageError
from sparsify.feedback import damping, feedback_factor, quantise_with_feedback
from sparsify.importance import check_importance, tensor_importance
from sparsify.io.base import TensorInfo
from sparsify.methods import METHODS
from sparsify.quantize import step_matrix, step_shifts

DIGITS = SAMPLE_FILES["fp32"]  # fc1.weight (256, 64), fc2.weight (128, 256), fc3.weight (10, 128)


def correlated_moments(n: int, seed: int, samples: int = 2000) -> np.ndarray:
    """E[x xᵀ] of inputs whose channels share a few common factors (as a layer's inputs do)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 8)) @ rng.standard_normal((8, n)) + 0.3 * rng.standard_normal((samples, n))
    return x.T @ x / samples


def output_error(w: np.ndarray, w_hat: np.ndarray, moments: np.ndarray) -> float:
    diff = w_hat - w
    return float(np.sum((diff @ moments) * diff))


def test_the_factor_is_the_damped_moments_reversed_cholesky():
    h = correlated_moments(150, 1)
    v = feedback_factor(h)
    damped = h + damping(h) * np.eye(150)
    assert np.array_equal(v, np.triu(v)) and (np.diagonal(v) > 0).all()
    np.testing.assert_allclose(v @ v.T, damped, rtol=0, atol=1e-12 * np.abs(damped).max())
    assert damping(h) == pytest.approx(0.01 * np.trace(h) / 150)


def test_the_panels_do_not_change_a_bit(monkeypatch):
    """The blocked loops add every product in the unblocked order: any panel width, the same bits."""
    h = correlated_moments(130, 2)
    w = np.random.default_rng(3).laplace(0.0, 0.05, (40, 130))
    v = feedback_factor(h)
    codes, loss = quantise_with_feedback(w, 0.03, v)
    monkeypatch.setattr(feedback, "PANEL", 7)
    v7 = feedback_factor(h)
    codes7, loss7 = quantise_with_feedback(w, 0.03, v7)
    assert np.array_equal(v, v7) and np.array_equal(codes, codes7) and np.array_equal(loss, loss7)


def test_feedback_is_gptq_and_its_loss_is_the_output_error():
    """The codes are those of GPTQ's loop written with U = V⁻¹ (numpy's inverse, float64), and each
    row's loss is its output error under the damped moments."""
    h = correlated_moments(96, 4)
    w = np.random.default_rng(5).laplace(0.0, 0.05, (64, 96))
    steps = 0.02 * np.random.default_rng(6).choice([0.5, 1.0, 2.0], size=96)[None, :]
    v = feedback_factor(h)
    codes, loss = quantise_with_feedback(w, steps, v)
    u = np.linalg.inv(v)
    work, reference = w.copy(), np.empty_like(w)
    for j in range(96):
        q = np.rint(work[:, j] / steps[0, j])
        reference[:, j] = q
        err = (work[:, j] - q * steps[0, j]) / u[j, j]
        work[:, j + 1 :] -= np.outer(err, u[j, j + 1 :])
    assert np.mean(codes == reference) >= 0.999  # a rounding tie may fall the other way
    damped = h + damping(h) * np.eye(96)
    diff = codes * steps - w
    np.testing.assert_allclose(loss, np.sum((diff @ damped) * diff, axis=1), rtol=1e-9)


@pytest.mark.parametrize("step", [0.005, 0.02, 0.06])
def test_feedback_lowers_the_output_error_at_the_same_step(step):
    h = correlated_moments(128, 7)
    w = np.random.default_rng(8).laplace(0.0, 0.05, (200, 128))
    codes, _ = quantise_with_feedback(w, step, feedback_factor(h))
    plain = np.rint(w / step) * step
    assert output_error(w, codes * step, h) < 0.5 * output_error(w, plain, h)


def test_the_quant_stage_feeds_back_and_decodes_as_the_uniform_quantiser():
    h = correlated_moments(64, 9)
    w = np.random.default_rng(10).laplace(0.0, 0.05, (48, 64))
    factor = feedback_factor(h)
    stage = METHODS["quant"](step=0.02, feedback=True)
    out = check_encode_decode(stage, w, feedback=factor)
    codes, loss = quantise_with_feedback(w, 0.02, factor)
    assert set(out.parts) == {"q", "step"} and np.array_equal(out.approximation, codes * 0.02)
    assert np.array_equal(out.row_losses, loss)
    plain = METHODS["quant"](step=0.02)
    assert np.array_equal(plain.decode(out.parts, out.resolved, w.shape), out.approximation)
    shifts = (step_shifts(np.geomspace(0.1, 10.0, 48)), step_shifts(np.diagonal(h)))
    weighted = check_encode_decode(
        METHODS["quant"](step=0.02, weighted=True, feedback=True), w, feedback=factor, step_shifts=shifts
    )
    codes, _ = quantise_with_feedback(w, step_matrix(0.02, w.shape, *shifts), factor)
    assert np.array_equal(weighted.approximation, codes * step_matrix(0.02, w.shape, *shifts))


def test_feedback_needs_a_step_and_the_moments():
    w = np.random.default_rng(11).laplace(0.0, 0.05, (8, 16))
    with pytest.raises(UsageError, match="input moments"):
        check_encode_decode(METHODS["quant"](step=0.02, feedback=True), w)
    with pytest.raises(UsageError, match="takes a step"):
        check_encode_decode(METHODS["quant"](max_error=0.1, feedback=True), w, feedback=np.eye(16))
    with pytest.raises(UsageError, match="feedback=true takes its input moments from an importance file"):
        sparsify.compress(DIGITS, "unused.sparsify", pipeline="quant:step=0.01,feedback=true+zstd")


# --- the importance file's NAME:inputs ------------------------------------------------------------


def digits_moments() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(per-column E[x²], input matrices E[x xᵀ]) of the digits MLP's layers on sklearn's digits."""
    from sklearn.datasets import load_digits

    weights = load_file(str(DIGITS))
    x = load_digits().data[:600].astype(np.float64) / 16.0
    columns, matrices = {}, {}
    for layer in ("fc1", "fc2", "fc3"):
        h = x.T @ x / x.shape[0]
        h = (h + h.T) / 2
        matrices[f"{layer}.weight:inputs"] = h.astype(np.float32)
        columns[f"{layer}.weight"] = np.diagonal(h).astype(np.float32)
        x = np.maximum(x @ weights[f"{layer}.weight"].T.astype(np.float64) + weights[f"{layer}.bias"], 0.0)
    return columns, matrices


def test_input_moments_are_read_as_the_damped_diagonal(tmp_path):
    _, matrices = digits_moments()
    path = tmp_path / "inputs.safetensors"
    save_file(matrices, str(path))
    shapes = {"fc1.weight": (256, 64), "fc2.weight": (128, 256), "fc3.weight": (10, 128)}
    checked = check_importance(path, {name: TensorInfo(name, "F32", shape) for name, shape in shapes.items()})
    info = TensorInfo("fc2.weight", "F32", (128, 256))
    weights = tensor_importance(checked, info, lambda key: load_file(str(path))[key])
    h = matrices["fc2.weight:inputs"].astype(np.float64)
    assert np.array_equal(weights.inputs, h)
    assert np.array_equal(weights.cols, np.diagonal(h) + damping(h))
    assert weights.takes_feedback(info) and not weights.takes_feedback(TensorInfo("x", "F32", (128, 256), "last"))


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"fc1.weight:inputs": np.eye(32, dtype=np.float32)}, r"expected \(64, 64\)"),
        ({"fc1.weight:inputs": np.eye(64, dtype=np.float32), "fc1.weight": np.ones(64, np.float32)}, "give one of"),
        ({"fc1.weight:inputs": np.triu(np.ones((64, 64), np.float32))}, "not symmetric"),
        ({"fc1.weight:inputs": -np.eye(64, dtype=np.float32)}, "negative diagonal"),
        ({"fc1.bias:inputs": np.eye(256, dtype=np.float32)}, "2-D weight"),
    ],
)
def test_bad_input_moments_are_input_errors(tmp_path, entries, message):
    path = tmp_path / "bad.safetensors"
    save_file(entries, str(path))
    tensors = {
        "fc1.weight": TensorInfo("fc1.weight", "F32", (256, 64)),
        "fc1.bias": TensorInfo("fc1.bias", "F32", (256,)),
    }
    with pytest.raises(InputError, match=message):
        check_importance(path, tensors)


def test_moments_that_are_not_positive_semi_definite_are_an_input_error():
    from sparsify.importance import TensorImportance

    h = np.array([[1.0, 5.0], [5.0, 1.0]])
    with pytest.raises(InputError, match="not positive semi-definite"):
        TensorImportance(inputs=h).feedback_factor()


def test_input_moments_lower_the_output_error_at_the_same_size(tmp_path):
    """The digits MLP at 10x with the per-column moments only, and with the input matrices: with
    these the rate control tries every step with error feedback, and the layers' output error
    Σ Δw H Δwᵀ at the same target falls by far more than the bytes move; the archive decodes through
    the CLI, and one or two jobs write the same bytes."""
    columns, matrices = digits_moments()
    files = {"columns": tmp_path / "columns.safetensors", "inputs": tmp_path / "inputs.safetensors"}
    save_file(columns, str(files["columns"]))
    save_file(matrices, str(files["inputs"]))
    original = load_file(str(DIGITS))
    errors, sizes = {}, {}
    for label, path in files.items():
        out = tmp_path / f"{label}.sparsify"
        report = sparsify.compress(DIGITS, out, target_ratio=10, importance=path)
        assert report["plan"]["met"]
        fed = [t["name"] for t in report["tensors"] if "feedback=true" in t["pipeline"]]
        assert bool(fed) == (label == "inputs"), fed
        restored = tmp_path / f"{label}.restored.safetensors"
        decoded = decompress_with_cli(out, restored)
        layers = ("fc1.weight", "fc2.weight", "fc3.weight")
        wide = {k: (original[k].astype(np.float64), decoded[k].astype(np.float64)) for k in layers}
        errors[label] = sum(output_error(*wide[k], matrices[k + ":inputs"].astype(np.float64)) for k in layers)
        sizes[label] = out.stat().st_size
    assert errors["inputs"] < 0.6 * errors["columns"], errors
    again = tmp_path / "again.sparsify"
    sparsify.compress(DIGITS, again, target_ratio=10, importance=files["inputs"], jobs=2)
    assert again.read_bytes() == (tmp_path / "inputs.sparsify").read_bytes()
    with Archive(again) as opened:
        assert opened.tensors


def test_with_feedback_the_column_steps_follow_the_factor():
    """Weighted steps with feedback take the columns' importance from V_jj² (what a column's error
    costs after the later columns' feedback), not H_jj: at the same bytes through zstd, a lower
    output error than with the steps by H_jj."""
    from sparsify.codec import coded_bytes
    from sparsify.importance import TensorImportance
    from sparsify.pipeline import parse_pipeline

    scale = np.sqrt(np.random.default_rng(13).lognormal(0.0, 1.0, 256))  # channels of unequal energy
    h = correlated_moments(256, 12) * scale[:, None] * scale[None, :]
    w = np.random.default_rng(15).laplace(0.0, 0.05, (512, 256))
    weights = TensorImportance(cols=np.diagonal(h) + damping(h), inputs=h)
    by_factor = weights.step_shifts(w.shape, "first", feedback=True)
    by_diagonal = weights.step_shifts(w.shape, "first")
    np.testing.assert_array_equal(by_factor[1], step_shifts(np.diagonal(weights.feedback_factor()) ** 2))
    coders = parse_pipeline("keep+zstd").coders
    factor = weights.feedback_factor()

    def curve(shifts) -> list[tuple[float, float]]:
        points = []
        for k in range(-30, -14, 2):
            stage = METHODS["quant"](step=2.0 ** (k / 4), weighted=True, feedback=True)
            out = check_encode_decode(stage, w, feedback=factor, step_shifts=shifts)
            stored = sum(coded_bytes(part, coders)[0].size for part in out.parts.values())
            points.append((8 * stored / w.size, float(np.sum(out.row_losses))))
        return sorted(points)

    def at(points, bits):
        xs, ys = zip(*points, strict=True)
        return float(np.exp(np.interp(bits, xs, np.log(ys))))

    factor_curve, diagonal_curve = curve(by_factor), curve(by_diagonal)
    gains = [at(diagonal_curve, b) / at(factor_curve, b) for b in (3.0, 4.0)]
    assert min(gains) > 1.1, gains


def test_moments_that_cannot_be_factored_fail_the_cli_in_one_line(tmp_path):
    moments = np.ones((64, 64), np.float32)
    moments[0, 1] = moments[1, 0] = 5.0  # symmetric, a positive diagonal, not positive semi-definite
    path = tmp_path / "bad.safetensors"
    save_file({"fc1.weight:inputs": moments}, str(path))
    out = tmp_path / "out.sparsify"
    command = ["compress", str(DIGITS), "-o", str(out), "--target-ratio", "8", "--importance", str(path)]
    result = subprocess.run([sys.executable, "-m", "sparsify", *command], capture_output=True, text=True, check=False)
    assert result.returncode == InputError.exit_code, result.stderr
    assert (
        result.stderr.strip() == "sparsify: error: fc1.weight:inputs: input moments that are not positive semi-definite"
    )
    assert not out.exists()


def test_many_steps_in_one_pass_give_each_steps_own_codes():
    """quantise_many stacks the rows of every step: each result is a call of its own, bit for bit;
    Prepared hands a stage only the results made for its very values and steps."""
    h = correlated_moments(70, 7)
    w = np.random.default_rng(8).laplace(0.0, 0.05, (12, 70))
    v = feedback_factor(h)
    steps = [0.01, 0.03, 0.02 * step_matrix(1.0, w.shape, None, step_shifts(np.diagonal(h) + 0.1))]
    prepared = feedback.Prepared.make(w, steps, v)
    for step, (codes, loss) in zip(steps, prepared.results, strict=True):
        alone = quantise_with_feedback(w, step, v)
        assert np.array_equal(codes, alone[0]) and np.array_equal(loss, alone[1])
        assert prepared.lookup(w.copy(), step) is not None
    assert prepared.lookup(w, 0.015) is None
    assert prepared.lookup(w[:6], 0.01) is None
    assert prepared.lookup(w + 1e-9, 0.01) is None


def test_a_tensors_factor_is_made_once_per_run(tmp_path, monkeypatch):
    """The planning rounds and the write job share each tensor's factor through the run's factor
    folder (made once, not once per phase), the archive is the same, and the folder is gone after."""
    made = []
    factor = feedback.feedback_factor
    monkeypatch.setattr(feedback, "feedback_factor", lambda moments: made.append(moments.shape) or factor(moments))
    golden = DIGITS.parents[1] / "tests" / "golden"
    out = tmp_path / "fb.sparsify"
    sparsify.compress(DIGITS, out, jobs=1, target_ratio=10, importance=golden / "digits_mlp.inputs.safetensors")
    assert sorted(made) == [(64, 64), (128, 128), (256, 256)]
    assert out.read_bytes() == (golden / "digits_mlp.feedback.sparsify").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb.sparsify"]
