"""--importance FILE: the file's forms and checks, the weighted distortion, the plan it makes, the
torch recorder (where torch is installed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from checkers import decompress_with_cli
from click.testing import CliRunner
from conftest import SAMPLE_FILES
from safetensors.numpy import load_file, save_file

import sparsify
from sparsify import work
from sparsify.archive.reader import Archive
from sparsify.cli import cli
from sparsify.errors import InputError, UsageError
from sparsify.importance import TensorImportance, check_importance, tensor_importance
from sparsify.io.base import TensorInfo

DIGITS = SAMPLE_FILES["fp32"]  # torch layout: fc1.weight (256, 64), fc2.weight (128, 256), fc3.weight (10, 128)


def digits_activations() -> dict[str, np.ndarray]:
    """Per-input-channel second moments of the digits MLP's layers on sklearn's digits (the real
    activations: pixel columns that are always blank weigh 0)."""
    from sklearn.datasets import load_digits

    weights = load_file(str(DIGITS))
    x = load_digits().data[:600].astype(np.float64) / 16.0
    entries = {}
    for layer in ("fc1", "fc2", "fc3"):
        entries[f"{layer}.weight"] = (x * x).mean(axis=0).astype(np.float32)
        x = np.maximum(x @ weights[f"{layer}.weight"].T.astype(np.float64) + weights[f"{layer}.bias"], 0.0)
    return entries


def weighted_error(archive, importance: dict[str, np.ndarray]) -> float:
    """Σ a ΔW² of a decoded archive against the digits model, by the importance's columns."""
    original = load_file(str(DIGITS))
    with Archive(archive) as opened:
        decoded = {t["name"]: opened.decode(t) for t in opened.tensors}
    total = 0.0
    for name, w in original.items():
        diff = decoded[name].astype(np.float64) - w.astype(np.float64)
        a = importance.get(name, np.ones(w.shape[-1] if w.ndim else 1))
        total += float(((diff * diff) * a.astype(np.float64)).sum())
    return total


@pytest.fixture
def activations(tmp_path):
    entries = digits_activations()
    path = tmp_path / "importance.safetensors"
    save_file(entries, str(path))
    return path, entries


def test_importance_spends_bytes_where_it_is_large(tmp_path):
    """Two tensors alike, one a hundred times as important: with the importance file, the
    important one gets the lower error and the weighted error falls well below the plain plan's."""
    rng = np.random.default_rng(3)
    model = tmp_path / "two.safetensors"
    save_file({n: rng.standard_normal((256, 128)).astype(np.float32) for n in ("a.weight", "b.weight")}, str(model))
    importance = tmp_path / "two-importance.safetensors"
    save_file({"a.weight": np.full(128, 100.0, np.float32), "b.weight:rows": np.ones(256, np.float32)}, str(importance))
    figures = {}
    for label, file in (("sse", None), ("importance", importance)):
        report = sparsify.compress(model, tmp_path / f"{label}.sparsify", target_ratio=8, importance=file)
        assert report["plan"]["met"]
        errors = {t["name"]: t["rel_error"] for t in report["tensors"]}
        figures[label] = (errors, 100 * errors["a.weight"] ** 2 + errors["b.weight"] ** 2)
    assert figures["importance"][0]["a.weight"] < 0.5 * figures["importance"][0]["b.weight"]
    assert figures["importance"][1] < 0.5 * figures["sse"][1]


def test_real_activations_record_the_file(tmp_path, activations):
    """The digits MLP with its real input moments: a plan that meets the target, records the file by
    name and checksum, and whose weighted error is no worse than the plain plan's (the manifest that
    names the file costs it a few of the budget's bytes)."""
    path, entries = activations
    figures = {}
    for label, importance in (("sse", None), ("importance", path)):
        out = tmp_path / f"{label}.sparsify"
        report = sparsify.compress(DIGITS, out, target_ratio=10, importance=importance)
        assert report["plan"]["met"]
        figures[label] = weighted_error(out, entries)
    assert figures["importance"] < 1.02 * figures["sse"]
    manifest = Archive(tmp_path / "importance.sparsify").manifest
    assert manifest["options"]["objective"] == manifest["plan"]["objective"] == "importance"
    assert manifest["options"]["importance"]["file"] == "importance.safetensors"
    assert manifest["options"]["importance"]["checksum"].startswith("xxh3:")
    assert "importance" not in Archive(tmp_path / "sse.sparsify").manifest["options"]


def test_importance_plan_is_deterministic_across_jobs(tmp_path):
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}.sparsify"
        sparsify.compress(SAMPLE_FILES["crepe"], out, target_ratio=8, importance=_crepe_importance(tmp_path), jobs=jobs)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def _crepe_importance(tmp_path):
    """Per-row importance for every 2-D-or-more tensor of CREPE tiny (a Keras file: rows = axis 0)."""
    path = tmp_path / "crepe-importance.safetensors"
    if not path.exists():
        from sparsify.io import open_weights

        rng = np.random.default_rng(5)
        with open_weights(SAMPLE_FILES["crepe"]) as reader:
            entries = {
                f"{t.name}:rows": rng.gamma(0.5, 2.0, t.shape[0]).astype(np.float32)
                for t in reader.tensors()
                if len(t.shape) >= 2
            }
        save_file(entries, str(path))
    return path


@pytest.mark.parametrize(
    "form",
    ["full", "rows", "cols", "rows+cols"],
)
def test_weighted_sq_error_of_each_form(form):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    w_hat = w + rng.standard_normal(w.shape).astype(np.float32) * 0.1
    full, rows, cols = rng.random((6, 5)), rng.random(6), rng.random(5)
    a = {
        "full": full,
        "rows": rows[:, None] * np.ones(5),
        "cols": np.ones((6, 1)) * cols,
        "rows+cols": np.outer(rows, cols),
    }
    importance = TensorImportance(
        full if form == "full" else None,
        rows if "rows" in form else None,
        cols if "cols" in form else None,
    )
    expected = float((a[form] * (w_hat.astype(np.float64) - w) ** 2).sum())
    assert importance.weighted_sq_error(w, w_hat) == pytest.approx(expected, rel=1e-12)
    assert importance.weighted_sq_error(w, w.copy()) == 0.0


def test_weighted_sq_error_non_finite():
    importance = TensorImportance(cols=np.ones(3))
    w = np.array([[1.0, np.nan, np.inf]], dtype=np.float32)
    assert importance.weighted_sq_error(w, w.copy()) == 0.0  # the same non-finite values: no error
    assert importance.weighted_sq_error(w, np.array([[1.0, 0.0, np.inf]], dtype=np.float32)) == float("inf")


def test_tensor_importance_reads_each_form(tmp_path):
    path = tmp_path / "imp.safetensors"
    save_file(
        {
            "a": np.arange(4, dtype=np.float32),
            "a:rows": np.ones(3, dtype=np.float32),
            "b": np.ones((2, 2), dtype=np.float32),
            "bias": np.full(3, 2.0, dtype=np.float32),
        },
        str(path),
    )
    tensors = {
        "a": TensorInfo("a", "F32", (3, 4), "first"),
        "b": TensorInfo("b", "F32", (2, 2), "first"),
        "bias": TensorInfo("bias", "F32", (3,), "first"),
        "c": TensorInfo("c", "F32", (3, 4), "first"),
    }
    source = check_importance(path, tensors)
    assert source.keys == {"a", "a:rows", "b", "bias"}
    file = work.Source(source.path, "safetensors", source.stamp)

    def read(info):
        return tensor_importance(source, info, lambda key: work.read(file, key))

    a = read(tensors["a"])
    assert a.full is None and a.cols.tolist() == [0, 1, 2, 3] and a.rows.tolist() == [1, 1, 1]
    b = read(tensors["b"])
    assert b.full.shape == (2, 2) and b.rows is None and b.cols is None
    assert read(tensors["bias"]).cols.tolist() == [2, 2, 2]
    assert read(tensors["c"]) is None
    assert tensor_importance(None, tensors["a"], lambda key: None) is None
    work.close_all()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"nope.weight": np.ones(64, np.float32)}, "'nope.weight' names no tensor of the model"),
        ({"fc1.weight": np.ones(63, np.float32)}, "has shape (63,); expected (256, 64) or (64,)"),
        ({"fc1.weight:rows": np.ones(64, np.float32)}, "expected (256,), the rows of 'fc1.weight'"),
        ({"fc1.weight": -np.ones(64, np.float32)}, "negative or non-finite values"),
        ({"fc1.weight": np.full(64, np.nan, np.float32)}, "negative or non-finite values"),
        ({"fc1.weight": np.ones(64, np.int32)}, "is I32; importance is a float tensor"),
        ({}, "holds no tensors"),
    ],
)
def test_bad_importance_files_are_input_errors(tmp_path, entries, message):
    path = tmp_path / "bad.safetensors"
    save_file(entries, str(path))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sparsify.compress(DIGITS, tmp_path / "out.sparsify", target_ratio=8, importance=path)
    assert not (tmp_path / "out.sparsify").exists()
    result = subprocess.run(
        [sys.executable, "-m", "sparsify", "compress", str(DIGITS), "-o", str(tmp_path / "o.sparsify"),
         "--target-ratio", "8", "--importance", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "imp.safetensors"
    path.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError):
        sparsify.compress(DIGITS, tmp_path / "out.sparsify", target_ratio=8, importance=path)
    with pytest.raises(InputError, match="importance file not found"):
        sparsify.compress(DIGITS, tmp_path / "out.sparsify", target_ratio=8, importance=tmp_path / "missing")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_error": 0.1}, "--importance applies to a size target"),
        ({"pipeline": "auto", "max_error": 0.1}, "--importance applies to a size target"),
        ({"target_ratio": 8, "objective": "relative"}, "drop --objective relative"),
    ],
)
def test_importance_usage_errors(tmp_path, activations, options, message):
    with pytest.raises(UsageError, match=message):
        sparsify.compress(DIGITS, tmp_path / "out.sparsify", importance=activations[0], **options)


def test_cli_importance(tmp_path, activations):
    out = tmp_path / "cli.sparsify"
    result = subprocess.run(
        [sys.executable, "-m", "sparsify", "compress", str(DIGITS), "-o", str(out), "--target-ratio", "10",
         "--importance", str(activations[0]), "--json", "-q"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["plan"]["objective"] == "importance" and report["plan"]["met"]
    api = sparsify.compress(DIGITS, tmp_path / "api.sparsify", target_ratio=10, importance=activations[0])
    assert [t["pipeline"] for t in report["tensors"]] == [t["pipeline"] for t in api["tensors"]]
    assert out.read_bytes() == (tmp_path / "api.sparsify").read_bytes()  # "10" and 10: the same options
    assert api["plan"]["objective"] == "importance"


# --- the torch recorder ----------------------------------------------------------------------------


def _tiny_lm(torch):
    class TinyLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(40, 32)
            self.norm = torch.nn.LayerNorm(32)
            self.hidden = torch.nn.Linear(32, 96)
            self.head = torch.nn.Linear(96, 40)

        def forward(self, tokens):
            return self.head(torch.relu(self.hidden(self.norm(self.embed(tokens)))))

    torch.manual_seed(0)
    return TinyLM().eval()


def test_recorder_activations_match_numpy(tmp_path):
    torch = pytest.importorskip("torch")
    from sparsify.importance.recorder import record_importance

    model = _tiny_lm(torch)
    batches = [torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    entries = record_importance(model, batches)
    assert sorted(entries) == ["embed.weight:rows", "head.weight", "hidden.weight"]
    tokens = torch.cat([b.reshape(-1) for b in batches])
    with torch.no_grad():
        normed = model.norm(model.embed(tokens))
        hidden = torch.relu(model.hidden(normed))

    def unit_mean(values):
        return values / values.mean()

    np.testing.assert_allclose(entries["hidden.weight"], unit_mean((normed.double() ** 2).mean(0).numpy()), rtol=1e-5)
    np.testing.assert_allclose(entries["head.weight"], unit_mean((hidden.double() ** 2).mean(0).numpy()), rtol=1e-5)
    counts = np.bincount(tokens.numpy(), minlength=40).astype(np.float64)
    np.testing.assert_allclose(entries["embed.weight:rows"], unit_mean(counts), rtol=1e-6)


def test_recorder_fisher_and_compress(tmp_path):
    """K-FAC factors from a loss: one entry per weight form, mean importance 1, gradients cleared;
    the saved file drives a compress of the model's own safetensors from the API and the CLI."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    from sparsify.importance.recorder import record_importance, save_importance

    model = _tiny_lm(torch)
    batches = [torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def loss(logits, tokens):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 40), tokens.reshape(-1))

    entries = record_importance(model, batches, loss=loss)
    assert all(p.grad is None for p in model.parameters())
    assert entries["embed.weight"].shape == (40, 32)
    assert entries["hidden.weight"].shape == (32,) and entries["hidden.weight:rows"].shape == (96,)
    assert entries["norm.weight"].shape == entries["norm.bias"].shape == (32,)
    assert entries["head.bias"].shape == (40,)
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in entries.values())
    per_weight = [
        (np.outer(entries[f"{n}:rows"], entries[n]).sum(), entries[f"{n}:rows"].size * entries[n].size)
        if f"{n}:rows" in entries
        else (entries[n].sum(), entries[n].size)
        for n in (
            "embed.weight",
            "hidden.weight",
            "head.weight",
            "norm.weight",
            "norm.bias",
            "hidden.bias",
            "head.bias",
        )
    ]
    assert sum(s for s, _ in per_weight) / sum(c for _, c in per_weight) == pytest.approx(1.0, rel=1e-5)

    weights = tmp_path / "tiny.safetensors"
    save_torch({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    importance = tmp_path / "tiny-importance.safetensors"
    save_importance(entries, importance)
    report = sparsify.compress(weights, tmp_path / "api.sparsify", target_ratio=6, min_size=16, importance=importance)
    assert report["plan"]["objective"] == "importance" and report["plan"]["met"]
    result = CliRunner().invoke(
        cli,
        ["compress", str(weights), "-o", str(tmp_path / "cli.sparsify"), "--target-ratio", "6", "--min-size", "16",
         "--importance", str(importance), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.sparsify").read_bytes() == (tmp_path / "api.sparsify").read_bytes()


@pytest.mark.parametrize("mode", ["activations", "fisher", "fisher-frozen"])
def test_recorder_inputs_matrix(mode):
    """``inputs=True``: each linear weight's ``NAME:inputs`` = Σ xᵀx / count (in, in), exactly
    symmetric, in place of its per-column entry and scaled like it: its diagonal is that entry (bit
    for bit), the other entries are unchanged. ``fisher-frozen``: the layers before the head are
    frozen, so ``hidden.weight`` has no ``:rows`` and its matrix carries the common scale itself."""
    torch = pytest.importorskip("torch")
    from sparsify.importance.recorder import record_importance

    model = _tiny_lm(torch)
    if mode == "fisher-frozen":
        for module in (model.embed, model.norm, model.hidden):
            module.requires_grad_(False)
    batches = [torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def loss(logits, tokens):
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 40), tokens.reshape(-1))

    fisher = None if mode == "activations" else loss
    columns = record_importance(model, batches, loss=fisher)
    matrices = record_importance(model, batches, loss=fisher, inputs=True)
    linear = ("hidden.weight", "head.weight")
    assert set(matrices) == {k for k in columns if k not in linear} | {f"{n}:inputs" for n in linear}
    assert ("hidden.weight:rows" in matrices) == (mode == "fisher")
    for key in set(columns) - set(linear):
        np.testing.assert_array_equal(matrices[key], columns[key])
    tokens = torch.cat([b.reshape(-1) for b in batches])
    with torch.no_grad():
        normed = model.norm(model.embed(tokens)).double()
        hidden = torch.relu(model.hidden(normed.float())).double()
    for name, x in zip(linear, (normed, hidden), strict=True):
        a = matrices[f"{name}:inputs"]
        assert a.dtype == np.float32 and a.shape == (x.shape[1], x.shape[1])
        np.testing.assert_array_equal(a, a.T)
        np.testing.assert_array_equal(np.diagonal(a), columns[name])
        expected = (x.T @ x / x.shape[0]).numpy()
        if mode == "activations":  # the diagonal to mean 1
            expected = expected / np.diagonal(expected).mean()
        elif f"{name}:rows" not in matrices:  # a lone factor carries the common scale
            assert mode == "fisher-frozen" and name == "hidden.weight"
            expected = expected * (columns[name] / np.diagonal(expected)).mean()
        np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("form", ["full", "rows", "cols", "rows+cols", "full+rows"])
@pytest.mark.parametrize("shape", [(6,), (4, 5), (4, 3, 5)])
def test_importance_in_the_matrix_view(shape, form, layout):
    """The factors in the matrix view multiply to the importance of each weight, moved as the weights are."""
    from sparsify.codec import to_matrix

    rng = np.random.default_rng(2)
    importance = TensorImportance(
        full=rng.random(shape) if "full" in form else None,
        rows=rng.random(shape[0]) if "rows" in form else None,
        cols=rng.random(shape[-1]) if "cols" in form else None,
    )
    per_weight = np.broadcast_to(importance.scale(shape) ** 2, shape)
    full, rows, cols = importance.in_matrix(shape, layout)
    expected = to_matrix(per_weight, layout)
    product = np.ones(expected.shape)
    for factor, where in ((full, slice(None)), (rows, np.s_[:, None]), (cols, np.s_[None, :])):
        if factor is not None:
            product = product * (factor if where == slice(None) else factor[where])
    np.testing.assert_allclose(product, expected, rtol=1e-12)


def test_weighted_steps_lower_the_weighted_error_of_one_tensor(tmp_path):
    """One tensor, so the allocation between tensors has nothing to move: what the importance buys
    comes from the quantiser's steps per column (quant weighted=true), chosen by the rate control;
    the archive decodes through the CLI (which checks the decoded checksum the encoder recorded)."""
    rng = np.random.default_rng(8)
    model = tmp_path / "one.safetensors"
    weight = rng.laplace(0.0, 0.02, (512, 1024)).astype(np.float32)
    save_file({"w.weight": weight}, str(model))
    columns = rng.lognormal(0.0, 1.0, 1024).astype(np.float32)
    importance = tmp_path / "one-importance.safetensors"
    save_file({"w.weight": columns}, str(importance))
    errors = {}
    for label, file in (("sse", None), ("importance", importance)):
        out = tmp_path / f"{label}.sparsify"
        report = sparsify.compress(model, out, target_ratio=10, importance=file)
        assert report["plan"]["met"]
        restored = tmp_path / f"{label}.restored.safetensors"
        decoded = decompress_with_cli(out, restored)["w.weight"].astype(np.float64)
        errors[label] = float(np.sum(columns * (decoded - weight) ** 2))
        pipelines = [t["pipeline"] for t in report["tensors"]]
        assert ("weighted=true" in pipelines[0]) == (label == "importance"), pipelines
    assert errors["importance"] < 0.75 * errors["sse"], errors


def test_a_weighted_quantiser_is_not_a_fixed_pipeline(tmp_path, activations):
    for options in (
        {"pipeline": "quant:step=0.01,weighted=true+zstd"},
        {"rules": ["fc1.*=quant:step=0.01,weighted=true"]},
    ):
        with pytest.raises(UsageError, match="weighted=true takes its steps from an importance file"):
            sparsify.compress(DIGITS, tmp_path / "out.sparsify", **options)
