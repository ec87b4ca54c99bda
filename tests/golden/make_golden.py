"""Regenerate the golden archives of the current format (only after an intended format change; bump
FORMAT_VERSION, and move the old files to ``v<old version>/`` so they stay decoded forever).

    .venv/bin/python tests/golden/make_golden.py
"""

from pathlib import Path

import sparsify

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[1] / "sample_models"

# archive name -> (source under sample_models/, keyword arguments of sparsify.compress)
GOLDEN = {
    "digits_mlp.keep.sparsify": ("digits_mlp.safetensors", {"pipeline": "keep+zstd"}),
    "digits_mlp.threshold.sparsify": ("digits_mlp.safetensors", {"pipeline": "threshold:sparsity=0.9+zstd"}),
    "digits_mlp_bf16.threshold.sparsify": ("digits_mlp_bf16.safetensors", {"pipeline": "threshold:max_error=0.1"}),
    "digits_mlp.int8.sparsify": ("digits_mlp.safetensors", {"pipeline": "threshold:sparsity=0.7+int8+zstd"}),
    "digits_mlp.quant4.sparsify": ("digits_mlp.safetensors", {"pipeline": "quant:bits=4,group=128+zstd"}),
    "digits_mlp_bf16.ratio8.sparsify": ("digits_mlp_bf16.safetensors", {"target_ratio": 8}),
    # 3.2: quant weighted=true, the steps per column from an importance file
    "digits_mlp.weighted.sparsify": (
        "digits_mlp.safetensors",
        {"target_ratio": 10, "importance": HERE / "digits_mlp.importance.safetensors"},
    ),
    # 3.3: quant feedback=true, the rounding errors fed forward by the input moments of an importance file
    "digits_mlp.feedback.sparsify": (
        "digits_mlp.safetensors",
        {"target_ratio": 10, "importance": HERE / "digits_mlp.inputs.safetensors"},
    ),
}
BEFORE_3_3 = [name for name in GOLDEN if name != "digits_mlp.feedback.sparsify"]
BEFORE_3_2 = [name for name in BEFORE_3_3 if name != "digits_mlp.weighted.sparsify"]

# Archives of earlier format versions, decoded by every test run: name -> source.
OLDER = {
    "v1.0/digits_mlp.keep.sparsify": "digits_mlp.safetensors",
    "v1.0/digits_mlp.threshold.sparsify": "digits_mlp.safetensors",
    "v1.0/digits_mlp_bf16.threshold.sparsify": "digits_mlp_bf16.safetensors",
    **{f"v2.0/{name}": GOLDEN[name][0] for name in BEFORE_3_2},
    **{f"v2.1/{name}": GOLDEN[name][0] for name in BEFORE_3_2},
    **{f"v3.0/{name}": GOLDEN[name][0] for name in BEFORE_3_2},
    **{f"v3.1/{name}": GOLDEN[name][0] for name in BEFORE_3_2},
    **{f"v3.2/{name}": GOLDEN[name][0] for name in BEFORE_3_3},
}

# Folder archives (a model folder: weights, config, a file in a sub-folder) -> their source folder here.
FOLDERS = {"digits-folder.sparsify": "digits-folder-source"}
OLDER_FOLDERS = {
    "v2.1/digits-folder.sparsify": "digits-folder-source",  # index format 1.0, archives 2.1
    "v3.0/digits-folder.sparsify": "digits-folder-source",  # index format 2.0, archives 3.0
    "v3.1/digits-folder.sparsify": "digits-folder-source",  # index format 2.0, archives 3.1
    "v3.2/digits-folder.sparsify": "digits-folder-source",  # index format 2.0, archives 3.2
}


def importance_file(path: Path) -> None:
    """The golden importance file: a seeded log-normal importance per input channel of the digits
    MLP's three weights (what an activation recorder would give, but reproducible from here)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(32)
    widths = {"fc1.weight": 64, "fc2.weight": 256, "fc3.weight": 128}
    save_file({name: rng.lognormal(0.0, 1.5, width).astype(np.float32) for name, width in widths.items()}, str(path))


def inputs_file(path: Path) -> None:
    """The golden input-moments file: for each of the digits MLP's weights, E[x xᵀ] (``NAME:inputs``)
    of seeded inputs that share a few common factors, as a layer's inputs do (products summed by
    :func:`sparsify.reproducible.matmul`: the same file on every machine)."""
    import numpy as np
    from safetensors.numpy import save_file

    from sparsify.reproducible import matmul

    rng = np.random.default_rng(33)
    entries = {}
    for name, width in {"fc1.weight": 64, "fc2.weight": 256, "fc3.weight": 128}.items():
        x = matmul(rng.standard_normal((512, 6)), rng.standard_normal((6, width))) + 0.5 * rng.standard_normal(
            (512, width)
        )
        h = matmul(x.T, x) / x.shape[0]
        entries[name + ":inputs"] = ((h + h.T) / 2).astype(np.float32)
    save_file(entries, str(path))


if __name__ == "__main__":
    importance_file(HERE / "digits_mlp.importance.safetensors")
    inputs_file(HERE / "digits_mlp.inputs.safetensors")
    for archive, (source, options) in GOLDEN.items():
        sparsify.compress(SAMPLES / source, HERE / archive, force=True, **options)
        print(f"wrote {archive}")
    for archive, source in FOLDERS.items():
        sparsify.compress(HERE / source, HERE / archive, force=True, jobs=1)
        print(f"wrote {archive}")
