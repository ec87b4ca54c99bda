"""Start-up: --version, --help and inspect import none of the heavy modules (timings belong in the
benchmark; what is imported is checked here, in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import sparsify

HEAVY = ("ml_dtypes", "scipy", "rich", "sparsify.methods", "sparsify.codec", "sparsify.planner", "msgspec")


def _imported_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nimport json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_version_and_help_import_nothing_heavy():
    for args in (["--version"], ["--help"], ["compress", "--help"]):
        loaded = _imported_after(f"from sparsify.cli import run\nrun({args!r})")
        assert not loaded & set(HEAVY), (args, loaded & set(HEAVY))


def test_import_sparsify_is_cheap_and_the_api_loads_on_use():
    loaded = _imported_after("import sparsify")
    assert "numpy" not in loaded and "sparsify.api" not in loaded
    assert callable(sparsify.compress) and callable(sparsify.open) and "inspect" in dir(sparsify)


def test_inspect_reads_a_manifest_without_the_heavy_modules(tmp_path):
    """The manifest's validation needs the stage registry (each stage checks its own config), not
    scipy, ml_dtypes or the rate controller."""
    archive = tmp_path / "m.sparsify"
    sparsify.compress("sample_models/digits_mlp.safetensors", archive, jobs=1)
    loaded = _imported_after(f"from sparsify.inspection import inspect\ninspect({str(archive)!r})")
    assert not loaded & {"ml_dtypes", "scipy", "sparsify.planner", "sparsify.ratecontrol", "sparsify.work"}
