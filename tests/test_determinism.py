"""The same archive bytes on every machine: the probe (tests/determinism_probe.py) runs in
subprocesses under several OpenBLAS kernels, thread counts and numpy SIMD paths, standing in for
other CPUs, and every run must give the same digests as the committed golden archives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from golden.make_golden import GOLDEN

HERE = Path(__file__).resolve().parent
PROBE = HERE / "determinism_probe.py"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.split(":", 1)[-1].split())


def environments() -> dict[str, dict[str, str]]:
    """Name -> environment overrides. OpenBLAS kernels the CPU cannot run (SIGILL) are left out."""
    flags = _cpu_flags()
    kernels = ["Prescott"] + (["Haswell", "Zen"] if "avx2" in flags else [])
    kernels += ["SkylakeX"] if "avx512f" in flags else []
    envs = {}
    for i, kernel in enumerate(kernels):
        threads = str(1 + i % 2)
        envs[f"{kernel}-{threads}t"] = {"OPENBLAS_CORETYPE": kernel, "OPENBLAS_NUM_THREADS": threads}
    envs["default-2t"] = {"OPENBLAS_NUM_THREADS": "2"}
    # numpy's runtime-dispatched SIMD loops switched off down to its baseline
    envs["numpy-baseline"] = {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX2 FMA3 AVX512F AVX512_SKX"}
    return envs


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, dict]:
    """Each environment's probe output; the BLAS-backed archives are made once, in this process."""
    from determinism_probe import BLAS_BACKED, make

    blas_dir = tmp_path_factory.mktemp("blas")
    make(BLAS_BACKED, blas_dir)

    def run(item):
        name, overrides = item
        out = tmp_path_factory.mktemp(name)
        env = {**os.environ, **overrides}
        done = subprocess.run(
            [sys.executable, str(PROBE), str(out), str(blas_dir)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
        return name, json.loads(done.stdout)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, environments().items()))


def test_archives_are_identical_under_every_blas_kernel_thread_count_and_simd_path(probes):
    reference_name, reference = next(iter(probes.items()))
    for name, result in probes.items():
        differ = sorted(k for k, v in result["archives"].items() if reference["archives"][k] != v)
        assert not differ, f"{name} and {reference_name} wrote different bytes for {differ}"


def test_blas_backed_archives_decode_and_measure_identically_everywhere(probes):
    reference_name, reference = next(iter(probes.items()))
    for name, result in probes.items():
        assert result["decoded"] == reference["decoded"], f"{name} decodes differently from {reference_name}"


def test_every_environment_reproduces_the_committed_golden_archives(probes):
    import hashlib

    for name in GOLDEN:
        committed = hashlib.sha256((HERE / "golden" / name).read_bytes()).hexdigest()
        for env, result in probes.items():
            assert result["archives"][name] == committed, f"{env}: {name} differs from the committed golden file"


@pytest.mark.parametrize(
    ("given", "typed"),
    [
        ({"target_ratio": 8}, {"target_ratio": 8.0}),
        ({"pipeline": "auto", "max_error": 1}, {"pipeline": "auto", "max_error": 1.0}),
    ],
)
def test_how_a_number_is_typed_does_not_change_the_archive(tmp_path, given, typed):
    """The API's 8 and the CLI's 8.0 are the same option: the manifest records both as 8."""
    import sparsify

    source = HERE.parent / "sample_models" / "digits_mlp.safetensors"
    sparsify.compress(source, tmp_path / "int.sparsify", **given)
    sparsify.compress(source, tmp_path / "float.sparsify", **typed)
    assert (tmp_path / "int.sparsify").read_bytes() == (tmp_path / "float.sparsify").read_bytes()
