"""Hostile weight files: decompression bombs, storage in other files, inputs that change while read.

Each must end in a one-line InputError naming the file, before any large allocation, and without
opening any file but the input.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from sparsify.errors import CorruptArchiveError, InputError
from sparsify.io import open_weights
from sparsify.io.base import SourceMeta, TensorInfo
from sparsify.io.hdf5_file import HDF5Writer, _skeleton
from sparsify.io.npz_file import NpzWriter

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
_CENTRAL = b"PK\x01\x02"


def read_all(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a weight file, and its source meta built, as the compressor does."""
    with open_weights(path) as reader:
        arrays = {t.name: reader.read(t.name) for t in reader.tensors()}
        reader.source_meta()
    return arrays


def refused(path: Path, *fragments: str) -> str:
    """The message of the one-line InputError reading ``path`` gives; it must hold every fragment."""
    with pytest.raises(InputError) as info:
        read_all(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def npy_header(descr: str, shape: tuple) -> bytes:
    """A version 1.0 ``.npy`` header claiming ``descr`` and ``shape``, with no data."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def one_member_npz(path: Path, content: bytes, method: int) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("a.npy", content)
    return path


def set_declared_size(path: Path, size: int) -> None:
    """Rewrite the uncompressed size the (only) central-directory entry declares."""
    data = bytearray(path.read_bytes())
    data[data.index(_CENTRAL) + 24 : data.index(_CENTRAL) + 28] = struct.pack("<L", size)
    path.write_bytes(bytes(data))


def test_npz_stored_member_declaring_more_than_it_holds(tmp_path):
    src = one_member_npz(tmp_path / "bomb.npz", npy_bytes(np.arange(10.0)), zipfile.ZIP_STORED)
    set_declared_size(src, 2**32 - 1)
    refused(src, "array 'a': stored member declares 4294967295 bytes but holds 208")


def test_npz_deflate_ratio_bomb(tmp_path):
    src = one_member_npz(tmp_path / "bomb.npz", npy_bytes(np.zeros(1000)), zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(src) as zf:
        compressed = zf.getinfo("a.npy").compress_size
    set_declared_size(src, 1032 * compressed + 2000)
    refused(src, "deflated bytes, more than deflate can expand to (a zip bomb?)", f"from {compressed} deflated")


def test_npy_shape_overflow(tmp_path):
    src = one_member_npz(tmp_path / "overflow.npz", npy_header("<f8", (2**40, 2**40)), zipfile.ZIP_STORED)
    refused(src, "array 'a'", "overflows a 64-bit size")


def test_npz_stream_longer_than_declared(tmp_path):
    content = npy_bytes(np.arange(10.0))
    src = one_member_npz(tmp_path / "long.npz", content + b"\0" * 5000, zipfile.ZIP_DEFLATED)
    set_declared_size(src, len(content))
    refused(src, "array 'a': member decompresses to more than the 208 bytes its zip header declares")


def test_npz_stream_shorter_than_declared(tmp_path):
    content = npy_header("<f8", (12,)) + np.arange(10.0).tobytes()
    src = one_member_npz(tmp_path / "short.npz", content, zipfile.ZIP_DEFLATED)
    set_declared_size(src, len(content) + 16)
    refused(src, "array 'a'", "member ends after 80 of 96 bytes")


def test_hdf5_huge_declared_shape_on_a_tiny_chunked_dataset(tmp_path):
    src = tmp_path / "huge.h5"
    with h5py.File(src, "w") as f:
        ds = f.create_dataset("w", shape=(10**6, 10**6), dtype="f4", chunks=(10, 10), compression="gzip")
        ds[:10, :10] = 1.0
    refused(src, "dataset 'w' declares 4000000000000 bytes of data", "(a decompression bomb?)")


def test_hdf5_huge_declared_shape_contiguous(tmp_path):
    src = tmp_path / "huge.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("w", shape=(10**6, 10**6), dtype="f4")
    refused(src, "dataset 'w' declares 4000000000000 bytes of data but the file has only")


def test_hdf5_chunk_that_inflates_beyond_its_size(tmp_path):
    src = tmp_path / "chunk.h5"
    with h5py.File(src, "w") as f:
        ds = f.create_dataset("w", shape=(10,), dtype="f4", chunks=(10,), compression="gzip")
        ds.id.write_direct_chunk((0,), zlib.compress(bytes(10**7), 9))
    refused(src, "dataset 'w' has a compressed chunk of", "more than its 40 bytes uncompressed can need")


def external_link_file(path: Path, target: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["w"] = np.arange(6.0).reshape(2, 3)
        f["ext"] = h5py.ExternalLink(str(target), "/secret")
        f["g/ext_group"] = h5py.ExternalLink(str(target), "/")
    return path


def test_hdf5_external_link_is_kept_never_followed(tmp_path):
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f["secret"] = np.ones(4)
    src = external_link_file(tmp_path / "src.h5", target)
    assert list(read_all(src)) == ["w"]  # what a file without the links gives
    target.write_bytes(b"not HDF5: following the link would fail")
    with open_weights(src) as reader:
        assert [t.name for t in reader.tensors()] == ["w"]
        skeleton = reader.source_meta().blobs["skeleton"]
    with h5py.File(io.BytesIO(skeleton), "r") as f:
        assert f.get("ext", getlink=True).filename == str(target)


def test_hdf5_soft_links_to_nothing_and_cycles(tmp_path):
    src = tmp_path / "links.h5"
    with h5py.File(src, "w") as f:
        f["g/w"] = np.arange(3.0)
        f["dangling"] = h5py.SoftLink("/no/such/object")
        f["g/back_to_root"] = f["/"]
    assert list(read_all(src)) == ["g/w"]


def test_hdf5_external_storage_refused(tmp_path):
    (tmp_path / "raw.bin").write_bytes(np.arange(10.0).tobytes())
    src = tmp_path / "external.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("w", shape=(10,), dtype="f8", external=[("raw.bin", 0, 80)])
    refused(src, "dataset 'w' keeps its data in external raw files; sparsify does not follow them")


def test_hdf5_virtual_dataset_refused(tmp_path):
    with h5py.File(tmp_path / "source.h5", "w") as f:
        f["d"] = np.arange(10.0)
    layout = h5py.VirtualLayout(shape=(10,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(tmp_path / "source.h5"), "d", shape=(10,))
    src = tmp_path / "virtual.h5"
    with h5py.File(src, "w") as f:
        f.create_virtual_dataset("v", layout)
    refused(src, "dataset 'v' is a virtual dataset (its data lives in other files); sparsify does not follow it")


SAMPLE_FILES = ["digits_mlp.safetensors", "digits_mlp.npz", "digits_mlp.h5"]


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_file_truncated_after_open(name, tmp_path):
    src = Path(shutil.copy(SAMPLES / name, tmp_path / name))
    with open_weights(src) as reader:
        os.truncate(src, src.stat().st_size // 2)
        with pytest.raises(InputError, match=f"^{src}: changed while it was being read$"):
            for t in reader.tensors():
                reader.read(t.name)


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_file_modified_after_open(name, tmp_path):
    src = Path(shutil.copy(SAMPLES / name, tmp_path / name))
    with open_weights(src) as reader:
        first = reader.tensors()[0].name
        before = src.stat()
        with open(src, "r+b") as f:  # same size, one byte changed near the end (tensor data)
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))
        os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # beyond timestamp granularity
        with pytest.raises(InputError, match=f"^{src}: changed while it was being read$"):
            reader.read(first)


def test_check_unchanged_after_the_last_read(tmp_path):
    src = Path(shutil.copy(SAMPLES / "digits_mlp.safetensors", tmp_path / "w.safetensors"))
    with open_weights(src) as reader:
        for t in reader.tensors():
            reader.read(t.name)
        reader.check_unchanged()
        src.write_bytes(src.read_bytes() + b"\0")
        with pytest.raises(InputError, match="changed while it was being read"):
            reader.check_unchanged()


# ---- damaged members and damaged rebuild data (fuzz reproducers in tests/fuzz_cases/) --------------------


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA], ids=["deflate", "lzma"])
def test_npz_damaged_compressed_member(tmp_path, method):
    src = one_member_npz(tmp_path / "damaged.npz", npy_bytes(np.arange(100.0)), method)
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("a.npy")
    data = bytearray(src.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 4 : start + 24] = bytes(range(20))  # the compressed stream, not the zip headers
    src.write_bytes(bytes(data))
    refused(src, "array 'a'")


def npz_rebuild(tmp_path: Path) -> tuple[list, SourceMeta]:
    """The tensors and source meta of a small npz file, as an archive carries them (rebuild JSON-decoded)."""
    src = tmp_path / "src.npz"
    np.savez(src, a=np.arange(6, dtype="<f4").reshape(2, 3), b=np.arange(3, dtype="<i8"))
    with open_weights(src) as reader:
        infos, meta = reader.tensors(), reader.source_meta()
    return infos, SourceMeta(meta.summary, json.loads(json.dumps(meta.rebuild)), meta.blobs)


NON_ASCII_HEADER = base64.b64encode(npy_header("<f4", (2, 3))).decode() + "é"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("date_time", [1979, 1, 1, 0, 0, 0], "member 0: date_time [1979, 1, 1, 0, 0, 0] is not a zip timestamp"),
        ("date_time", [1980, 65535, 1, 0, 0, 0], "member 0: date_time [1980, 65535, 1, 0, 0, 0] is not a zip"),
        ("date_time", [1980, 1, 1], "member 0: date_time [1980, 1, 1] is not a zip timestamp"),
        ("create_system", 256, "member 0: create_system 256 is not an integer in 0-255"),
        ("external_attr", 2**64, "member 0: external_attr 18446744073709551616 is not an integer in 0-4294967295"),
        ("internal_attr", -1, "member 0: internal_attr -1 is not an integer in 0-65535"),
        ("compress_type", 99, "member 0: compress_type 99 is not one of 0, 8, 12, 14"),
        ("extra", "x", "member 0: extra 'x' is not base64"),
        ("comment", "<U3", "member 0: comment '<U3' is not base64"),
        ("extra", base64.b64encode(bytes(70000)).decode(), "member 0: extra of 70000 bytes, more than a zip header"),
        ("npy_header", "fp32", "member 0: npy_header is not a .npy header: EOF"),
        ("npy_header", NON_ASCII_HEADER, "member 0: npy_header 'k05VTVBZ"),
        ("npy_header", base64.b64encode(npy_header("<f8", (2, 3))).decode(), "holds F64 (2, 3), the archive's tensor"),
        ("filename", "b.npy", "member 0: 'b.npy' where the archive's tensor is 'a'"),
        ("filename", "a.txt", "member 0: filename 'a.txt' is not a '<key>.npy' name"),
    ],
)
def test_npz_writer_refuses_a_damaged_rebuild_record(tmp_path, field, value, fragment):
    infos, meta = npz_rebuild(tmp_path)
    meta.rebuild["members"][0][field] = value
    out = tmp_path / "out.npz"
    with pytest.raises(CorruptArchiveError) as info:
        NpzWriter(out, infos, meta, same_format=True)
    message = str(info.value)
    assert message.startswith("npz rebuild record, member 0: ") and "\n" not in message
    assert fragment in message
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda r: r.pop("comment"), "npz rebuild record: comment None is not base64"),
        (lambda r: r.update(members={}), "npz rebuild record: no list of members"),
        (lambda r: r["members"].pop(), "npz rebuild record: 1 members for the archive's 2 tensors"),
        (lambda r: r["members"][1].pop("zip64"), "member 1: no field 'zip64'"),
        (lambda r: r["members"].reverse(), "member 0: 'b.npy' where the archive's tensor is 'a'"),
    ],
)
def test_npz_writer_refuses_a_damaged_rebuild_list(tmp_path, edit, fragment):
    infos, meta = npz_rebuild(tmp_path)
    edit(meta.rebuild)
    with pytest.raises(CorruptArchiveError, match=re.escape(fragment)):
        NpzWriter(tmp_path / "out.npz", infos, meta, same_format=True)


def hdf5_rebuild(tmp_path: Path) -> tuple[list, SourceMeta]:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["g/w"] = np.arange(77.0).reshape(7, 11)
    with open_weights(src) as reader:
        return reader.tensors(), reader.source_meta()


def damaged_dataspace(skeleton: bytes) -> bytes:
    """The skeleton with the second dimension of its (7, 11) dataspace beyond its maximum (HDF5: KeyError)."""
    dims = struct.pack("<QQ", 7, 11)
    at = skeleton.index(dims)
    return skeleton[:at] + struct.pack("<QQ", 7, 2**50) + skeleton[at + len(dims) :]


def external_skeleton(tmp_path: Path) -> bytes:
    """A skeleton whose dataset keeps its data in a raw file elsewhere (which filling it would write)."""
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("g/w", shape=(7, 11), dtype="<f8", external=[(str(tmp_path / "victim.bin"), 0, 616)])
    with h5py.File(tmp_path / "ext.h5", "r") as f:
        return _skeleton(f, b"")


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda tmp, m: m.blobs.update(skeleton=damaged_dataspace(m.blobs["skeleton"])), "skeleton is damaged: "),
        (lambda tmp, m: m.blobs.update(skeleton=b"\x89HDF\r\n\x1a\n" + bytes(100)), "not a readable HDF5 file"),
        (lambda tmp, m: m.blobs.pop("skeleton"), "the archive carries no HDF5 skeleton"),
        (lambda tmp, m: m.rebuild.update(track_times="g"), "no list of paths as track_times"),
        (lambda tmp, m: m.blobs.update(skeleton=external_skeleton(tmp)), "dataset 'g/w' keep its data in other files"),
    ],
    ids=["dataspace", "not-hdf5", "no-skeleton", "track-times", "external-storage"],
)
def test_hdf5_writer_refuses_a_damaged_skeleton(tmp_path, damage, fragment):
    infos, meta = hdf5_rebuild(tmp_path)
    damage(tmp_path, meta)
    out = tmp_path / "out.h5"
    with pytest.raises(CorruptArchiveError) as info:
        HDF5Writer(out, infos, meta, same_format=True)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []  # nor its staging copy
    assert not (tmp_path / "victim.bin").exists()


def test_hdf5_writer_refuses_a_skeleton_other_than_the_tensors(tmp_path):
    infos, meta = hdf5_rebuild(tmp_path)
    (w,) = infos
    for tensors, fragment in [
        ([TensorInfo(w.name, w.dtype, (11, 7), w.layout)], "has dataset 'g/w' as F64 (7, 11), the archive's tensor"),
        ([w, TensorInfo("g/v", "F32", (3,))], "has no dataset for tensor 'g/v'"),
        ([], "has a dataset 'g/w' but no tensor for it"),
    ]:
        with pytest.raises(CorruptArchiveError, match=re.escape(fragment)):
            HDF5Writer(tmp_path / "out.h5", tensors, meta, same_format=True)
