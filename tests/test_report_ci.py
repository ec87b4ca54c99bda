"""docs/CI.md works as written: its shell script run on the digits MLP keeps the archive and the
reports and exits 0 within the bound and 1 past it; its GitHub Actions workflow is valid YAML that
runs the same commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_FILES
from report_schema import checked

DOC = (Path(__file__).resolve().parents[1] / "docs" / "CI.md").read_text(encoding="utf-8")


def block(language: str) -> str:
    (text,) = re.findall(rf"```{language}\n(.*?)```", DOC, re.S)
    return text


@pytest.mark.parametrize("max_error, expected", [("0.5", 0), ("0.01", 1)])
def test_the_shell_script(tmp_path, max_error, expected):
    pytest.importorskip("matplotlib")
    script = tmp_path / "compress-model.sh"
    script.write_text(block("sh"))
    model = tmp_path / "model.safetensors"
    shutil.copy(SAMPLE_FILES["fp32"], model)
    env = {
        **os.environ,
        "MAX_ERROR": max_error,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["sh", str(script), str(model), str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == expected, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["model.sparsify", "report.html", "report.json", "report.md"]
    assert done.stdout == (out / "report.md").read_text() and done.stdout.startswith("### sparsify compress: ")
    report = checked(json.loads((out / "report.json").read_text()))
    assert report["gate"]["passed"] is (expected == 0)
    if expected:
        assert done.stderr.endswith(f"rel. error above {max_error}: see {out}/report.html\n")
    rerun = subprocess.run(["sh", str(script), str(model), str(out)], capture_output=True, text=True, env=env)
    assert rerun.returncode == expected, rerun.stderr  # --force: a second run replaces the outputs


def test_the_workflow():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(block("yaml"))
    steps = workflow["jobs"]["compress"]["steps"]
    names = [s.get("name") for s in steps]
    assert names[-4:] == [
        "Compress with an error gate",
        "Keep the archive and the report",
        "Post the summary to the pull request",
        "Fail when the error bound was broken",
    ]
    compress = steps[-4]["run"]
    assert '--max-error "$MAX_ERROR"' in compress and "--html out/report.html --markdown > out/report.md" in compress
    assert all(s.get("if", "").startswith("always()") for s in steps[-3:-1])
    assert steps[-1]["if"] == "steps.compress.outputs.status != '0'"
    assert workflow["permissions"]["pull-requests"] == "write"
