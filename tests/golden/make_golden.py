"""Regenerate the golden archives (only after an intended format change; bump FORMAT_VERSION if a
reader of the old format could not read the new one).

    .venv/bin/python tests/golden/make_golden.py
"""

from pathlib import Path

import sparsify

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[1] / "sample_models"

GOLDEN = {
    "digits_mlp.keep.sparsify": ("digits_mlp.safetensors", "keep+zstd"),
    "digits_mlp.threshold.sparsify": ("digits_mlp.safetensors", "threshold:sparsity=0.9+zstd"),
    "digits_mlp_bf16.threshold.sparsify": ("digits_mlp_bf16.safetensors", "threshold:max_error=0.1"),
}

if __name__ == "__main__":
    for archive, (source, pipeline) in GOLDEN.items():
        sparsify.compress(SAMPLES / source, HERE / archive, pipeline=pipeline, force=True)
        print(f"wrote {archive}")
