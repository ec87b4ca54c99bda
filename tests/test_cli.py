"""The command line: every command, every exit code, one-line errors, no overwrites, input untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from checkers import input_unchanged
from click.testing import CliRunner
from conftest import DIGITS_TENSORS, SAMPLE_FILES
from report_schema import checked

from sparsify.cli import cli, run
from sparsify.methods import CODERS, METHODS, VALUE_CODERS

GOLDEN = Path(__file__).parent / "golden" / "digits_mlp.threshold.sparsify"


def invoke(*args: str):
    """Run the CLI in-process through the same exit-code mapping as the console script."""
    runner = CliRunner()
    code = {}

    def entry():
        code["rc"] = run(list(args))

    from click import command

    result = runner.invoke(command()(entry), [], catch_exceptions=False)
    result.rc = code["rc"]
    return result


@pytest.fixture(autouse=True)
def every_json_report_validates(monkeypatch):
    """Every report these tests print with --json is checked against docs/report.schema.json."""
    from sparsify.report import render

    original = render.render_json
    monkeypatch.setattr(render, "render_json", lambda report, out: original(checked(report), out))


@pytest.fixture
def model(tmp_path) -> Path:
    """A copy of the fp32 sample in a scratch folder."""
    path = tmp_path / "model.safetensors"
    shutil.copy(SAMPLE_FILES["fp32"], path)
    return path


def test_compress_inspect_decompress_verify(model, tmp_path):
    with input_unchanged(model):
        r = invoke("compress", str(model), "-q")
        assert r.rc == 0, r.output
        assert "fc2.weight" in r.stdout and "ratio" in r.stdout
        archive = tmp_path / "model.sparsify"
        assert archive.exists()
        r = invoke("inspect", str(archive))
        assert r.rc == 0 and "fc1.weight" in r.stdout and "keep+zstd" in r.stdout
    os.rename(model, tmp_path / "kept.safetensors")
    r = invoke("decompress", str(archive))
    assert r.rc == 0 and f"wrote {model}" in r.stderr
    assert model.read_bytes() == (tmp_path / "kept.safetensors").read_bytes()
    r = invoke("verify", str(archive), "--against", str(model))
    assert r.rc == 0 and "6 tensors checked, OK" in r.stdout


def test_json_report_schema(model):
    r = invoke("compress", str(model), "-p", "threshold:max_error=0.05", "--json", "--max-error", "0.05")
    assert r.rc == 0
    report = json.loads(r.stdout)
    assert report["schema_version"] == 3 and report["command"] == "compress"
    assert set(report["totals"]) >= {
        "stored_bytes",
        "manifest_bytes",
        "ratio",
        "weighted_rel_error",
        "worst",
        "bits_per_weight",
    }
    assert report["totals"]["stored_bytes"] == (model.parent / "model.sparsify").stat().st_size
    row = next(t for t in report["tensors"] if t["name"] == "fc2.weight")
    assert set(row) >= {
        "rel_error",
        "max_abs_error",
        "snr_db",
        "cosine",
        "density",
        "bits_per_weight",
        "ratio",
        "bytes_by_kind",
    }
    assert 0 < row["rel_error"] <= 0.05 and report["gate"]["passed"]


def test_markdown_report():
    r = invoke("inspect", str(GOLDEN), "--markdown")
    assert r.rc == 0
    assert r.stdout.startswith("### sparsify inspect: digits\\_mlp.safetensors\n\n- **archive**: ")
    assert "| `fc1.weight` | 256x64 | threshold:sparsity=0.9+zstd | " in r.stdout
    assert "| `fc1.bias` | 256 | keep+zstd ¹ | " in r.stdout and "¹ 1-D: lossless" in r.stdout
    wide = invoke("inspect", str(GOLDEN), "--markdown", "--wide")
    assert "| `fc1.weight` | 256x64 | F32 | threshold:sparsity=0.9+zstd | 64.0 KiB |" in wide.stdout


def test_gate_failure_exits_1_and_archive_records_it(model):
    r = invoke("compress", str(model), "-p", "threshold:sparsity=0.99", "--max-error", "0.05")
    assert r.rc == 1
    assert "gate failed: rel. error above 0.05 in fc1.weight, fc2.weight, fc3.weight" in r.stderr
    manifest = json.loads(invoke("inspect", str(model.with_suffix(".sparsify")), "--json").stdout)
    assert manifest["gate"] == {
        "max_error": 0.05,
        "passed": False,
        "failures": ["fc1.weight", "fc2.weight", "fc3.weight"],
    }


def test_verify_gate_and_mismatch(model, tmp_path):
    invoke("compress", str(model), "-p", "threshold:sparsity=0.5", "-q")
    archive = model.with_suffix(".sparsify")
    assert invoke("verify", str(archive), "--max-error", "0.9").rc == 0
    r = invoke("verify", str(archive), "--max-error", "0.01")
    assert r.rc == 1 and "FAILED" in r.stdout
    other = tmp_path / "other.safetensors"
    shutil.copy(SAMPLE_FILES["bf16"], other)
    r = invoke("verify", str(archive), "--against", str(other))
    assert r.rc == 1 and "original is BF16[256, 64], archive F32[256, 64]" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["compress", "{model}", "-p", "threshold"], "threshold needs a budget: one of sparsity, threshold, max_error"),
        (
            ["compress", "{model}", "-p", "nope"],
            "unknown stage 'nope'; methods: keep, threshold, svd, lasso, ksvd, quant; value coders: fp32, fp16",
        ),
        (["compress", "{model}", "--rule", "bad"], "is not GLOB=PIPELINE"),
        (["compress", "{model}", "--json", "--markdown"], "choose one of --json and --markdown"),
        (["compress", "{model}", "--max-error", "-1"], "Invalid value for '--max-error'"),
        (["decompress", "{model}", "--format", "onnx"], "Invalid value for '--format'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(model, args, message):
    r = invoke(*[a.format(model=model) for a in args])
    assert r.rc == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda d: None, ["compress", "{d}/missing.safetensors"], "missing.safetensors: no such file"),
        (
            lambda d: (d / "junk.bin").write_bytes(b"\x00junk" * 10),
            ["compress", "{d}/junk.bin"],
            "not a safetensors, HDF5 or npz file",
        ),
        (
            lambda d: (d / "t.safetensors").write_bytes(SAMPLE_FILES["fp32"].read_bytes()[:1000]),
            ["compress", "{d}/t.safetensors"],
            "truncated",
        ),
        (
            lambda d: (d / "a.sparsify").write_bytes(GOLDEN.read_bytes()[:-10]),
            ["inspect", "{d}/a.sparsify"],
            "truncated",
        ),
        (
            lambda d: (d / "a.sparsify").write_bytes(GOLDEN.read_bytes()[:-1] + b"\x01"),
            ["decompress", "{d}/a.sparsify", "-o", "{d}/o.safetensors"],
            "checksum mismatch",
        ),
        (lambda d: None, ["inspect", str(SAMPLE_FILES["fp32"])], "a safetensors file, not a sparsify archive"),
        (
            lambda d: (d / "r.toml").write_text("x = 1"),
            ["compress", str(SAMPLE_FILES["fp32"]), "--rules", "{d}/r.toml", "-o", "{d}/o.sparsify"],
            "unknown key(s) x",
        ),
    ],
)
def test_bad_input_exits_3_with_one_line(tmp_path, setup, args, message):
    setup(tmp_path)
    r = invoke(*[a.format(d=tmp_path) for a in args])
    expected = 2 if "toml" in " ".join(args) else 3
    assert r.rc == expected, r.output
    assert message in r.stderr
    assert r.stderr.startswith("sparsify: error: ") and r.stderr.count("\n") == 1
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.sparsify").exists()


def test_existing_output_needs_force_exit_4(model):
    archive = model.with_suffix(".sparsify")
    archive.write_bytes(b"precious")
    r = invoke("compress", str(model))
    assert r.rc == 4 and "already exists (use --force to overwrite)" in r.stderr
    assert archive.read_bytes() == b"precious"
    assert invoke("compress", str(model), "--force", "-q").rc == 0
    assert archive.read_bytes() != b"precious"
    r = invoke("decompress", str(archive), "-o", str(model))
    assert r.rc == 4 and "already exists" in r.stderr


def test_output_may_not_be_the_input(model):
    with input_unchanged(model):
        r = invoke("compress", str(model), "-o", str(model), "--force")
    assert r.rc == 4 and "is the input file; sparsify never modifies its input" in r.stderr


def test_unwritable_output_exit_4(model, tmp_path):
    r = invoke("compress", str(model), "-o", str(tmp_path / "no" / "such" / "dir.sparsify"))
    assert r.rc == 4 and "no such directory" in r.stderr
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        r = invoke("compress", str(model), "-o", str(ro / "x.sparsify"))
        assert r.rc == 4 and "permission denied" in r.stderr


def test_no_temp_files_left_after_failure(model, tmp_path):
    invoke("compress", str(model), "-p", "threshold:sparsity=0.5", "--rule", "fc1.*=threshold:sparsity=2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_decompress_converts_format(model, tmp_path):
    invoke("compress", str(model), "-q")
    archive = model.with_suffix(".sparsify")
    for fmt, ext in (("npz", ".npz"), ("hdf5", ".h5")):
        r = invoke("decompress", str(archive), "--format", fmt, "-q")
        assert r.rc == 0, r.output
        assert (tmp_path / f"model{ext}").exists()
    r = invoke("compress", str(tmp_path / "model.npz"), "-o", str(tmp_path / "npz.sparsify"), "--json")
    assert [t["name"] for t in json.loads(r.stdout)["tensors"]] == DIGITS_TENSORS


def test_methods_lists_every_stage_from_the_specs():
    r = invoke("methods")
    assert r.rc == 0
    for cls in (*METHODS.values(), *VALUE_CODERS.values(), *CODERS.values()):
        assert cls.name in r.stdout and cls.example in r.stdout
        for p in cls.params:
            assert p.name in r.stdout and p.range_text() in r.stdout
    data = json.loads(invoke("methods", "--json").stdout)
    assert {d["name"] for d in data} == set(METHODS) | set(VALUE_CODERS) | set(CODERS)


def test_help_documents_exit_codes():
    for args in ([], ["compress"], ["decompress"], ["verify"], ["inspect"]):
        r = CliRunner().invoke(cli, [*args, "--help"])
        assert r.exit_code == 0
        assert "4  cannot write the output" in r.output


def test_internal_error_is_one_line_unless_debug(model, monkeypatch):
    import sparsify.work

    def boom(*a, **k):
        raise RuntimeError("kaput")

    monkeypatch.setattr(sparsify.work, "encode_tensor", boom)
    r = invoke("compress", str(model))
    assert (
        r.rc == 70
        and r.stderr == "sparsify: internal error: RuntimeError: kaput (rerun with --debug for the traceback)\n"
    )
    with pytest.raises(RuntimeError):
        invoke("--debug", "compress", str(model))


def test_console_script_subprocess(model, tmp_path):
    """The installed entry point and ``python -m sparsify`` in real processes (no terminal: no progress)."""
    exe = Path(sys.executable).parent / "sparsify"
    commands = [[str(exe)]] if exe.exists() else []
    commands.append([sys.executable, "-m", "sparsify"])
    for i, command in enumerate(commands):
        out = tmp_path / f"s{i}.sparsify"
        done = subprocess.run(
            [
                *command,
                "compress",
                str(model),
                "-o",
                str(out),
                "-p",
                "threshold:max_error=0.05",
                "--max-error",
                "0.05",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["gate"]["passed"] is True
        assert done.stderr == f"wrote {out}\n"
        bad = subprocess.run([*command, "inspect", str(model)], capture_output=True, text=True, check=False)
        assert bad.returncode == 3 and bad.stderr.startswith("sparsify: error:") and "Traceback" not in bad.stderr
    version = subprocess.run(
        [sys.executable, "-m", "sparsify", "--version"], capture_output=True, text=True, check=True
    )
    assert "sparsify, version 0.1.0" in version.stdout
