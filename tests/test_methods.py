"""Every method and budget, from the Python API and the CLI, on every sample model (HDF5 conv kernels
included): round trip through the archive, error bounds measured from the archive, composition."""

from __future__ import annotations

import json

import pytest
from checkers import check_max_error, check_roundtrip
from click.testing import CliRunner
from conftest import SAMPLE_FILES

from sparsify.cli import cli, run

# One pipeline per method and budget form; small budgets keep the suite fast.
PIPELINES = {
    "svd rank": ("svd:rank=4", None),
    "svd energy": ("svd:energy=0.8", None),
    "svd max_error": ("svd:max_error=0.3", 0.3),
    "svd block": ("svd:max_error=0.5,block=64", 0.5),
    "lasso alpha": ("lasso:alpha=0.02", None),
    "lasso nnz dct": ("lasso:nnz=8,dict=dct,segment=64", None),
    "lasso max_error learned": ("lasso:max_error=0.3,dict=learned,atoms=16", 0.3),
    "ksvd nnz": ("ksvd:atoms=16,nnz=2,iters=3", None),
    "ksvd max_error": ("ksvd:max_error=0.5,atoms=16,iters=2,segment=32", 0.5),
    "svd + threshold": ("svd:energy=0.9+threshold:max_error=0.05", 0.05),
    "svd + ksvd": ("svd:rank=2+ksvd:atoms=8,nnz=2,iters=2+zstd", None),
    "threshold + lasso": ("threshold:sparsity=0.9+lasso:max_error=0.2", 0.2),
}


@pytest.mark.parametrize("key", sorted(PIPELINES))
def test_every_method_on_every_sample(sample, tmp_path, key):
    pipeline, bound = PIPELINES[key]
    report = check_roundtrip(sample, tmp_path, pipeline)
    lossy = [r for r in report["tensors"] if not r["exact"]]
    assert lossy and all(r["pipeline"].startswith(pipeline.split(":")[0]) for r in lossy)
    if bound is not None:
        check_max_error(report, bound)


def test_done_when_svd_energy_plus_threshold_meets_its_bound(tmp_path):
    """The issue's acceptance command, through the CLI, with the bound checked from the archive."""
    archive = tmp_path / "mlp.sparsify"
    result = CliRunner().invoke(
        cli,
        [
            "compress",
            str(SAMPLE_FILES["fp32"]),
            "-o",
            str(archive),
            "-p",
            "svd:energy=0.9+threshold:max_error=0.05",
            "--max-error",
            "0.05",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["gate"]["passed"]
    weights = [r for r in report["tensors"] if r["name"].endswith("weight")]
    assert all(0 < r["rel_error"] <= 0.05 for r in weights)
    verified = CliRunner().invoke(
        cli, ["verify", str(archive), "--against", str(SAMPLE_FILES["fp32"]), "--max-error", "0.05"]
    )
    assert verified.exit_code == 0, verified.output


def test_view_override_is_recorded(tmp_path):
    """HDF5 kernels default to the Keras view (output channels last); view=first overrides it."""
    for view, rows in (("last", 128), ("first", 512)):
        report = check_roundtrip(
            SAMPLE_FILES["crepe"], tmp_path, "keep", rules=[f"conv1/*kernel*=svd:rank=2,view={view}"]
        )
        from sparsify.archive import Archive

        with Archive(tmp_path / "weights.h5.sparsify") as archive:
            record = next(t for t in archive.tensors if t["name"] == "conv1/conv1_3/kernel:0")
        assert record["view"] == {"layout": view, "rows": rows, "cols": 512 * 128 // rows}
        assert (
            next(r for r in report["tensors"] if r["name"] == "conv1/conv1_3/kernel:0")["stages"][0]["resolved"]["rank"]
            == 2
        )


def test_conflicting_views_are_a_usage_error(capsys):
    pipeline = "svd:rank=2,view=first+threshold:sparsity=0.5,view=last"
    assert run(["compress", str(SAMPLE_FILES["fp32"]), "-p", pipeline]) == 2
    assert "stages ask for different views (first, last)" in capsys.readouterr().err
