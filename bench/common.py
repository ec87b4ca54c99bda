"""What the benchmark scripts share: progress messages, the machine record and the round-trip check."""

from __future__ import annotations

import filecmp
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from hdf5_tree import assert_hdf5_trees_equal

import sparsify

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SAMPLE_MODELS = [  # every sample model, as the benchmarks that run all of them list them
    "digits_mlp.safetensors",
    "digits_mlp_bf16.safetensors",
    "digits_mlp.npz",
    "digits_mlp.h5",
    "crepe-tiny/weights.h5",
]

HDF5_SUFFIXES = {".h5", ".hdf5", ".keras"}


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def machine(**extra: Any) -> dict[str, Any]:
    """The machine and library versions a run was measured on (plus ``extra`` fields)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zstandard": zstandard.__version__,
        "sparsify": sparsify.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **extra,
    }


def roundtrip(source: Path, restored: Path, failed: str = "round trip FAILED") -> str:
    """``byte-identical``, else (HDF5) ``tree-identical`` (tests/hdf5_tree.py), else ``<failed>: <why>``."""
    if filecmp.cmp(source, restored, shallow=False):
        return "byte-identical"
    if Path(source).suffix.lower() not in HDF5_SUFFIXES:
        return f"{failed}: bytes differ"
    try:
        assert_hdf5_trees_equal(source, restored)
    except AssertionError as error:
        return f"{failed}: {error}"
    return "tree-identical"
