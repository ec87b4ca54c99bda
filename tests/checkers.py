"""Shared checkers, so that each method's and format's tests are a few lines.

* :func:`check_roundtrip` -- compress a file, decompress it, and compare with the original: bytes for
  lossless safetensors/npz, the HDF5 tree for HDF5, or the recorded errors for lossy pipelines.
* :func:`check_max_error` -- every tensor's error, re-measured from the decoded archive, within bound.
* :func:`check_deterministic` -- two runs give byte-identical archives.
* :func:`check_config_roundtrip` -- a pipeline's canonical text parses back to the same pipeline.
* :func:`read_tensors` / :func:`input_unchanged` -- helpers for comparisons and the no-modify rule;
  :func:`file_checksum` -- a file's checksum string as the format records it (docs/FORMAT.md §8.6),
  computed here with ``xxhash``, not by sparsify.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xxhash

import sparsify
from sparsify.errors import UsageError
from sparsify.io import detect_format, open_weights
from sparsify.metrics import tensor_metrics
from sparsify.pipeline import parse_pipeline


def file_checksum(path: Path) -> str:
    """``"xxh3:<16 hex digits>"``: the XXH3-64 of the file's bytes, as an archive records a source file."""
    return "xxh3:" + xxhash.xxh3_64_hexdigest(Path(path).read_bytes())


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a weight file, by name, through sparsify's readers."""
    with open_weights(path) as reader:
        return {info.name: reader.read(info.name) for info in reader.tensors()}


@contextlib.contextmanager
def input_unchanged(*paths: Path) -> Iterator[None]:
    """Assert that the files' bytes and mtimes are the same after the block."""
    before = [(file_checksum(p), Path(p).stat().st_mtime_ns) for p in paths]
    yield
    after = [(file_checksum(p), Path(p).stat().st_mtime_ns) for p in paths]
    assert before == after, "an input file was modified"


def assert_same_file(original: Path, restored: Path) -> None:
    """Byte-identical for safetensors/npz, tree-identical for HDF5."""
    if detect_format(original) == "hdf5":
        from hdf5_tree import assert_hdf5_trees_equal

        assert_hdf5_trees_equal(original, restored)
    else:
        assert Path(restored).read_bytes() == Path(original).read_bytes(), f"{restored} differs from {original}"


def check_roundtrip(source: Path, tmp: Path, pipeline: str = "keep", **options) -> dict:
    """Compress ``source`` with ``pipeline``, decompress, compare; returns the compress report.

    Lossless pipelines must give the original file back exactly; lossy ones must decode to tensors
    whose errors equal the report's (measured independently here). Either way the report names the
    source by its size and checksum.
    """
    archive = tmp / (Path(source).name + ".sparsify")
    restored = tmp / ("restored-" + Path(source).name)
    with input_unchanged(source):
        report = sparsify.compress(source, archive, pipeline=pipeline, force=True, **options)
        sparsify.decompress(archive, restored, force=True)
    assert (
        report["source"]["checksum"] == file_checksum(source)
        and report["source"]["size"] == Path(source).stat().st_size
    )
    if report["totals"]["lossless_tensors"] == report["totals"]["tensors"]:
        assert_same_file(source, restored)
    originals, decoded = read_tensors(source), read_tensors(restored)
    assert list(decoded) == list(originals)
    for row in report["tensors"]:
        a, b = originals[row["name"]], decoded[row["name"]]
        assert a.dtype == b.dtype and a.shape == b.shape
        if row["exact"]:
            assert a.tobytes() == b.tobytes(), row["name"]
        elif a.dtype.kind not in "OSUVc":
            measured = tensor_metrics(a, b)["rel_error"]
            assert np.isclose(measured, row["rel_error"], rtol=1e-9, atol=1e-15), (
                row["name"],
                measured,
                row["rel_error"],
            )
    return report


def check_max_error(report: dict, bound: float) -> None:
    """Every tensor's rel. error (measured from the archive) is within ``bound``."""
    for row in report["tensors"]:
        assert row["rel_error"] <= bound, (row["name"], row["rel_error"], bound)


def check_deterministic(source: Path, tmp: Path, pipeline: str) -> None:
    """Two compressions of the same input with the same options are byte-identical."""
    a, b = tmp / "a.sparsify", tmp / "b.sparsify"
    sparsify.compress(source, a, pipeline=pipeline, force=True)
    sparsify.compress(source, b, pipeline=pipeline, force=True)
    assert a.read_bytes() == b.read_bytes()


def check_config_roundtrip(text: str) -> None:
    """The canonical text of a pipeline parses to an equal pipeline with the same text."""
    pipeline = parse_pipeline(text)
    again = parse_pipeline(str(pipeline))
    assert again == pipeline and str(again) == str(pipeline)


def check_encode_decode(
    method, target: np.ndarray, *, float_dtype=np.float32, reference_sq=None, seed=0, step_shifts=None, feedback=None
):
    """A method's contract on one matrix: ``decode(parts)`` is exactly the ``approximation`` that
    ``encode`` returned, parts are plain numeric arrays, ``resolved`` is JSON-able. Returns the output.
    ``step_shifts``: the context's (a weighted quantiser's row and column shifts); ``feedback``: its
    factor of the input moments (:func:`sparsify.feedback.feedback_factor`).
    """
    import json

    from sparsify.methods.base import EncodeContext

    target = np.asarray(target, dtype=np.float64)
    ctx = EncodeContext(
        value_dtype=np.dtype(float_dtype),
        float_dtype=np.dtype(float_dtype),
        reference_sq=float(np.sum(target**2)) if reference_sq is None else reference_sq,
        seed=seed,
        step_shifts=step_shifts,
        feedback=feedback,
    )
    out = method.encode(target, ctx)
    assert out.approximation.shape == target.shape and out.approximation.dtype == np.float64
    for name, part in out.parts.items():
        assert isinstance(part, np.ndarray) and part.dtype.kind in "biuf" or part.dtype.name == "bfloat16", name
    json.dumps(out.resolved)
    decoded = method.decode(out.parts, out.resolved, target.shape)
    assert np.array_equal(decoded, out.approximation), "decode(parts) differs from the approximation encode gave"
    return out


def relative_error(target: np.ndarray, approximation: np.ndarray) -> float:
    """||target - approximation||_F / ||target||_F in float64."""
    target = np.asarray(target, dtype=np.float64)
    return float(np.linalg.norm(target - approximation) / np.linalg.norm(target))


def check_usage_error(text: str, message: str) -> None:
    """Parsing pipeline ``text`` is a UsageError whose message matches the regex ``message``."""
    with pytest.raises(UsageError, match=message):
        parse_pipeline(text)


def decompress_with_cli(archive: Path, restored: Path) -> dict[str, np.ndarray]:
    """``sparsify decompress ARCHIVE -o RESTORED`` as a real subprocess (which checks every decoded
    checksum the encoder recorded), asserted to succeed; the restored safetensors file's tensors."""
    import subprocess
    import sys

    from safetensors.numpy import load_file

    command = [sys.executable, "-m", "sparsify", "decompress", str(archive), "-o", str(restored)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return load_file(str(restored))
