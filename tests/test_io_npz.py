"""NpzReader / NpzWriter: byte-identical rebuilds, lazy pickle-free reading, refusals, conversion."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsify.errors import InputError
from sparsify.io import SourceMeta, detect_format, reader_class, writer_class
from sparsify.io.npz_file import NpzReader, NpzWriter

DTYPES = ["<f2", "<f4", "<f8", "i1", "<i2", "<i4", "<i8", "u1", "<u2", "<u4", "<u8", "?", "<c8", "<c16", ">f4", "|V2"]


def write_npz(path, arrays: dict, version=None):
    """The sample-model script's deterministic np.savez equivalent (optionally a fixed .npy version)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False, version=version)


def sample(dtype, shape, seed=0) -> np.ndarray:
    """Random bytes viewed as ``dtype`` (every bit pattern, NaNs included)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.random.default_rng(seed).integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
    if dtype.kind == "b":
        raw &= 1
    return raw.view(dtype).reshape(shape)


def rebuild(src: Path, dst: Path) -> None:
    """Read ``src`` and write it back as npz, same format, tensor by tensor."""
    with NpzReader(src) as reader:
        infos, meta = reader.tensors(), reader.source_meta()
        json.dumps(meta.summary), json.dumps(meta.rebuild)  # both must be JSON-able
        with NpzWriter(dst, infos, meta, same_format=True) as writer:
            for info in infos:
                writer.write(info.name, reader.read(info.name))


def assert_identical_rebuild(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "rebuilt.npz"
    rebuild(src, dst)
    assert dst.read_bytes() == src.read_bytes()


def assert_reads_like_numpy(path: Path) -> None:
    with NpzReader(path) as reader, np.load(path, allow_pickle=False) as expected:
        assert [t.name for t in reader.tensors()] == expected.files
        for info in reader.tensors():
            got, want = reader.read(info.name), expected[info.name]
            assert got.shape == want.shape == info.shape
            assert got.tobytes("A") == want.tobytes("A")


MIXED = {
    "embed.weight": sample("<f4", (5, 3)),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 3), "<f8"),
    "cube": sample("<i2", (2, 3, 4)),
    "fortran": np.asfortranarray(sample("<f8", (3, 4))),
    "big_endian": sample(">f4", (4,)),
    "void": sample("|V2", (3,)),
    "record": np.array([(1, 2.5), (3, -1.0)], dtype=[("a", "<i4"), ("b", "<f4")]),
    "text": np.array(["ab", "cde"]),
    "when": np.array([0, 86400], "<M8[s]"),
    "nothing": np.zeros(3, "V0"),
}


@pytest.mark.parametrize(
    "save",
    [
        pytest.param(lambda p: np.savez(p, **MIXED), id="savez-keywords"),
        pytest.param(lambda p: np.savez(p, *MIXED.values()), id="savez-positional"),
        pytest.param(lambda p: np.savez(p, *list(MIXED.values())[:2], **MIXED), id="savez-both"),
        pytest.param(lambda p: np.savez_compressed(p, **MIXED), id="savez_compressed"),
        pytest.param(lambda p: write_npz(p, MIXED), id="reference-writer"),
        pytest.param(lambda p: write_npz(p, MIXED, version=(2, 0)), id="npy-2.0"),
        pytest.param(lambda p: write_npz(p, MIXED, version=(3, 0)), id="npy-3.0"),
    ],
)
def test_rebuild_is_byte_identical(save, tmp_path):
    src = tmp_path / "src.npz"
    save(src)
    assert detect_format(src) == "npz"
    assert_reads_like_numpy(src)
    assert_identical_rebuild(src, tmp_path)


def test_rebuild_keeps_zip_fields_written_by_zipfile(tmp_path):
    src = tmp_path / "src.npz"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.comment = b"archive comment"
        zf.writestr("now.npy", _npy_bytes(np.arange(5.0)))  # today's timestamp, no zip64
        info = zipfile.ZipInfo("custom.npy", date_time=(2021, 6, 30, 12, 34, 56))
        info.compress_type = zipfile.ZIP_LZMA
        info.external_attr = 0o644 << 16
        info.comment = b"a member comment"
        info.extra = b"\xfe\xca\x04\x00abcd"
        with zf.open(info, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, sample("<f4", (4, 4)))
        zf.writestr(zipfile.ZipInfo("bz.npy"), _npy_bytes(np.ones(3, ">i4")), zipfile.ZIP_BZIP2)
    assert_reads_like_numpy(src)
    assert_identical_rebuild(src, tmp_path)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0, 3), (7,), (2, 3, 4)])
def test_every_dtype_and_shape_round_trips(dtype, shape, tmp_path):
    src = tmp_path / "src.npz"
    np.savez(src, x=sample(dtype, shape), y=np.asfortranarray(sample(dtype, shape + (2,), seed=1)))
    assert_reads_like_numpy(src)
    assert_identical_rebuild(src, tmp_path)


def test_tensor_infos_name_dtypes_in_zip_order(tmp_path):
    src = tmp_path / "src.npz"
    write_npz(src, {"z": np.zeros(2, "<f4"), "a": np.zeros((1, 2), ">f4"), "m": np.zeros(3, "|V2")})
    with NpzReader(src) as reader:
        assert [(t.name, t.dtype, t.shape, t.layout) for t in reader.tensors()] == [
            ("z", "F32", (2,), "first"),
            ("a", ">f4", (1, 2), "first"),
            ("m", "|V2", (3,), "first"),
        ]
        assert reader.source_meta().summary == {"keys": ["z", "a", "m"], "compressed": False}


def test_fortran_array_reads_with_its_values(tmp_path):
    src = tmp_path / "src.npz"
    array = np.asfortranarray(np.arange(12, dtype="<f8").reshape(3, 4))
    np.savez(src, a=array)
    with NpzReader(src) as reader:
        got = reader.read("a")
    np.testing.assert_array_equal(got, array)
    assert got.flags.f_contiguous and got.flags.writeable


def test_summary_marks_compressed(tmp_path):
    src = tmp_path / "src.npz"
    np.savez_compressed(src, b=np.ones(3), a=np.zeros(2))
    with NpzReader(src) as reader:
        assert reader.source_meta().summary == {"keys": ["b", "a"], "compressed": True}


SAVERS = {
    "savez": lambda path, arrays: np.savez(path, **arrays),
    "savez_compressed": lambda path, arrays: np.savez_compressed(path, **arrays),
    "reference": write_npz,
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=4),
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3).map(tuple), min_size=4, max_size=4),
    fortran=st.lists(st.booleans(), min_size=4, max_size=4),
    writer=st.sampled_from(["savez", "savez_compressed", "reference"]),
)
def test_property_rebuild_is_byte_identical(tmp_path, dtypes, shapes, fortran, writer):
    arrays = {}
    for i, dtype in enumerate(dtypes):
        array = sample(dtype, shapes[i], seed=i)
        arrays[f"t{i}"] = np.asfortranarray(array) if fortran[i] else array
    src = tmp_path / "prop.npz"
    SAVERS[writer](src, arrays)
    assert_reads_like_numpy(src)
    assert_identical_rebuild(src, tmp_path)


def test_reading_one_key_opens_only_its_member(tmp_path, monkeypatch):
    src = tmp_path / "src.npz"
    write_npz(src, {"a": np.arange(4.0), "b": np.arange(1000.0)})
    data = bytearray(src.read_bytes())
    b_data = data.rindex(np.arange(1000.0).tobytes())
    data[b_data + 100] ^= 0xFF  # corrupt b's array data; its CRC no longer matches
    src.write_bytes(bytes(data))

    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda zf, m, *a, **k: opened.append(m) or real_open(zf, m, *a, **k))
    with NpzReader(src) as reader:
        opened.clear()
        np.testing.assert_array_equal(reader.read("a"), np.arange(4.0))
        assert [getattr(m, "filename", m) for m in opened] == ["a.npy"]
        with pytest.raises(InputError, match="'b'.*CRC"):
            reader.read("b")


def one_line_error(path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        with NpzReader(path) as reader:
            for t in reader.tensors():
                reader.read(t.name)
    assert "\n" not in str(info.value)


def test_refuses_object_arrays(tmp_path):
    src = tmp_path / "objects.npz"
    np.savez(src, fine=np.ones(2), x=np.array([1, "two", None], dtype=object))
    one_line_error(src, r"array 'x' holds Python objects \(pickled\); sparsify refuses to unpickle")


def test_refuses_non_npy_members(tmp_path):
    src = tmp_path / "extra.npz"
    write_npz(src, {"a": np.ones(2)})
    with zipfile.ZipFile(src, "a") as zf:
        zf.writestr("README.txt", "hello")
    one_line_error(src, "'README.txt' is not a .npy array")


def test_refuses_truncated_files(tmp_path):
    whole = tmp_path / "whole.npz"
    np.savez(whole, a=np.arange(100.0), b=np.arange(50.0))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    one_line_error(cut, "not a readable npz file")


def test_refuses_non_zip_files(tmp_path):
    src = tmp_path / "text.npz"
    src.write_bytes(b"this is not a zip archive at all\n" * 10)
    one_line_error(src, "not a readable npz file")


def test_refuses_bad_npy_headers(tmp_path):
    src = tmp_path / "bad.npz"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("a.npy", b"\x93NUMPX\x01\x00garbage")
    one_line_error(src, "array 'a': not a readable npz file")


def test_refuses_members_shorter_than_their_header_says(tmp_path):
    src = tmp_path / "short.npz"
    array = np.arange(10.0)
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("a.npy", _npy_bytes(array))
        zf.writestr("b.npy", _npy_bytes(array)[:-8])
    one_line_error(src, r"array 'b': member holds 200 bytes but its .npy header needs 208 \(truncated")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def test_conversion_writes_a_plain_savez_file(tmp_path):
    arrays = {"w": sample("<f4", (3, 2)), "dense/kernel:0": np.asfortranarray(sample("<f8", (2, 3)))}
    expected = tmp_path / "expected.npz"
    write_npz(expected, arrays)
    out = tmp_path / "out.npz"
    with writer_class("npz")(out, [], _foreign_meta(), same_format=False) as writer:
        for name, array in arrays.items():
            writer.write(name, array)
    assert out.read_bytes() == expected.read_bytes()


def test_conversion_stores_bfloat16_as_raw_void(tmp_path):
    array = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    out = tmp_path / "out.npz"
    with NpzWriter(out, [], _foreign_meta(), same_format=False) as writer:
        writer.write("bf", array)
    with reader_class("npz")(out) as reader:
        assert reader.tensors()[0].dtype == "|V2"
        assert reader.read("bf").tobytes() == array.tobytes()


def test_rebuild_accepts_bfloat16_for_recorded_void(tmp_path):
    src = tmp_path / "src.npz"
    array = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    np.savez(src, bf=array)
    out = tmp_path / "out.npz"
    with NpzReader(src) as reader:
        with NpzWriter(out, reader.tensors(), reader.source_meta(), same_format=True) as writer:
            writer.write("bf", array)
    assert out.read_bytes() == src.read_bytes()


def test_rebuild_refuses_a_different_shape(tmp_path):
    src = tmp_path / "src.npz"
    np.savez(src, a=np.zeros((2, 3), "<f4"))
    with NpzReader(src) as reader:
        writer = NpzWriter(tmp_path / "out.npz", reader.tensors(), reader.source_meta(), same_format=True)
        with pytest.raises(InputError, match="'a' is <f4 \\(3, 2\\)"):
            writer.write("a", np.zeros((3, 2), "<f4"))
        writer.abort()


def test_abort_does_not_raise(tmp_path):
    writer = NpzWriter(tmp_path / "out.npz", [], _foreign_meta(), same_format=False)
    writer.write("a", np.ones(3))
    writer.abort()
    writer.abort()


def _foreign_meta() -> SourceMeta:
    """What a reader of another format might hand over; a conversion uses none of it."""
    return SourceMeta(summary={"metadata": {"format": "pt"}})
