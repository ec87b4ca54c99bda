"""Shared fixtures: sample model paths and a helper that writes weight files in every format."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SAMPLES = ROOT / "sample_models"
sys.path.insert(0, str(TESTS))

DIGITS_TENSORS = ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]
"""The digits MLP's tensors, in file order."""

SAMPLE_FILES = {
    "fp32": SAMPLES / "digits_mlp.safetensors",
    "bf16": SAMPLES / "digits_mlp_bf16.safetensors",
    "npz": SAMPLES / "digits_mlp.npz",
    "keras": SAMPLES / "digits_mlp.h5",
    "crepe": SAMPLES / "crepe-tiny" / "weights.h5",
}


@pytest.fixture(params=sorted(SAMPLE_FILES), ids=sorted(SAMPLE_FILES))
def sample(request) -> Path:
    """Each committed sample model in turn."""
    return SAMPLE_FILES[request.param]


@pytest.fixture
def fp32_model() -> Path:
    return SAMPLE_FILES["fp32"]
