"""Hostile weight files: decompression bombs, storage in other files, inputs that change while read.

Each must end in a one-line InputError naming the file, before any large allocation, and without
opening any file but the input.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from sparsify.errors import InputError
from sparsify.io import open_weights

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
