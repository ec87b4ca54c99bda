"""Bit-exact round trips with keep, for every dtype and every format (hypothesis over shapes/dtypes)."""

from __future__ import annotations

import json
import struct
import zipfile

import h5py
import ml_dtypes
import numpy as np
import pytest
from checkers import check_roundtrip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from sparsify import dtypes

SAFETENSORS_NAMES = sorted(dtypes.SAFETENSORS_TYPES)
NUMPY_DTYPES = [
    "<f2",
    "<f4",
    "<f8",
    ">f4",
    "|i1",
    "<i2",
    "<i4",
    "<i8",
    "|u1",
    "<u2",
    "<u4",
    "<u8",
    "|b1",
    "<c8",
    "<c16",
]

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
slow = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def random_bytes(rng: np.random.Generator, nbytes: int) -> bytes:
    """Arbitrary bit patterns: NaN payloads, -0.0, subnormals and all."""
    return rng.integers(0, 256, size=nbytes, dtype=np.uint8).tobytes()


def write_raw_safetensors(path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata=None) -> None:
    """A safetensors file written by hand (the library cannot write every dtype from numpy)."""
    header, offset, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _elements_for(dtype: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Packed sub-byte types need element counts that fill whole bytes."""
    bits = dtypes.SAFETENSORS_TYPES[dtype].bits
    numel = int(np.prod(shape)) if shape else 1
    if (numel * bits) % 8:
        return (8,)
    return shape


@slow
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), pipeline=st.sampled_from(["keep", "keep+zstd"]))
def test_safetensors_every_dtype_bit_exact(tmp_path, shape, seed, pipeline):
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in SAFETENSORS_NAMES:
        shp = _elements_for(name, shape)
        tensors[f"t.{name}"] = (name, shp, random_bytes(rng, dtypes.nbytes_of(name, shp)))
    source = tmp_path / "all.safetensors"
    write_raw_safetensors(source, tensors, metadata={"format": "pt", "note": "every dtype"})
    report = check_roundtrip(source, tmp_path, pipeline, min_size=0)
    assert report["totals"]["lossless_tensors"] == len(tensors)


def test_safetensors_library_file_with_metadata(tmp_path):
    """A file written by the safetensors library itself (its key order, padding and metadata)."""
    rng = np.random.default_rng(0)
    arrays = {
        "a.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "b.weight": rng.standard_normal((16, 16)).astype(ml_dtypes.bfloat16),
        "c.f16": rng.standard_normal((7,)).astype(np.float16),
        "d.ids": np.arange(10, dtype=np.int64),
        "e.mask": rng.random(9) > 0.5,
        "f.f8": rng.standard_normal((4, 4)).astype(ml_dtypes.float8_e4m3fn),
        "g.scalar": np.array(3.5, dtype=np.float64),
        "h.empty": np.zeros((0, 3), dtype=np.float32),
    }
    source = tmp_path / "lib.safetensors"
    save_file(arrays, str(source), metadata={"format": "pt", "b": "2"})
    check_roundtrip(source, tmp_path, "keep+zstd")
    check_roundtrip(source, tmp_path, "threshold:sparsity=0.5", min_size=0)


@slow
@given(shape=shapes, seed=st.integers(0, 2**32 - 1), fortran=st.booleans())
def test_npz_every_dtype_byte_identical(tmp_path, shape, seed, fortran):
    rng = np.random.default_rng(seed)
    arrays = {}
    for i, name in enumerate(NUMPY_DTYPES):
        dtype = np.dtype(name)
        data = np.frombuffer(random_bytes(rng, int(np.prod(shape) if shape else 1) * dtype.itemsize), dtype=np.uint8)
        array = data.view(dtype).reshape(shape) if dtype.kind != "b" else (data % 2).astype(bool).reshape(shape)
        arrays[f"k{i}_{dtype.kind}"] = np.asfortranarray(array) if fortran else array
    source = tmp_path / "x.npz"
    np.savez(source, **arrays)
    check_roundtrip(source, tmp_path, "keep+zstd")


def test_npz_compressed_and_positional(tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "c.npz"
    np.savez_compressed(source, rng.standard_normal((40, 40)).astype(np.float32), np.arange(5), w=np.ones(3))
    check_roundtrip(source, tmp_path, "keep")
    with zipfile.ZipFile(source) as zf:
        assert [i.filename for i in zf.infolist()] == ["w.npy", "arr_0.npy", "arr_1.npy"]


@slow
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_hdf5_every_dtype_tree_identical(tmp_path, shape, seed):
    rng = np.random.default_rng(seed)
    source = tmp_path / "x.h5"
    with h5py.File(source, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["layer_names"] = np.array([b"dense", b"other"])
        group = f.create_group("model_weights/dense/dense")
        group.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        for i, name in enumerate(NUMPY_DTYPES):
            dtype = np.dtype(name)
            data = np.frombuffer(
                random_bytes(rng, int(np.prod(shape) if shape else 1) * dtype.itemsize), dtype=np.uint8
            )
            array = data.view(dtype).reshape(shape) if dtype.kind != "b" else (data % 2).astype(bool).reshape(shape)
            group.create_dataset(f"d{i}:0", data=array)
        if len(shape) and all(shape):
            f.create_dataset("chunked", data=rng.standard_normal(shape), chunks=True, compression="gzip", shuffle=True)
        bf16 = f.create_dataset(
            "layers/dense/vars/0", data=rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16).view("V2")
        )
        bf16.attrs["dtype"] = "bfloat16"
    check_roundtrip(source, tmp_path, "keep+zstd")


@pytest.mark.parametrize("pipeline", ["keep", "keep+zstd:level=19"])
def test_samples_lossless(sample, tmp_path, pipeline):
    report = check_roundtrip(sample, tmp_path, pipeline)
    assert report["totals"]["weighted_rel_error"] == 0.0
