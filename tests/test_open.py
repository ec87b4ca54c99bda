"""sparsify.open / sparsify.load: safe_open-style lazy reading of archives and folder archives."""

from __future__ import annotations

import builtins
import shutil
import sys
import types

import numpy as np
import pytest
from conftest import DIGITS_TENSORS, SAMPLE_FILES
from fuzzing import safetensors_seeds
from model_folders import load_like_from_pretrained, make_hf_folder
from safetensors import safe_open
from safetensors.numpy import load_file

import sparsify
import sparsify.lazy
from sparsify.archive import Archive
from sparsify.io import open_weights

PIPELINES = {"lossless": None, "int4": "quant:bits=4,group=128+zstd"}


def same(got: np.ndarray, want: np.ndarray) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def digits(request, tmp_path_factory):
    """The digits MLP's archive and what decompress makes of it."""
    tmp = tmp_path_factory.mktemp(request.param)
    out = tmp / "digits.sparsify"
    sparsify.compress(SAMPLE_FILES["fp32"], out, pipeline=PIPELINES[request.param], jobs=1)
    return out, load_file(str(sparsify.decompress(out, tmp / "restored.safetensors")))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return make_hf_folder(tmp_path_factory.mktemp("hf") / "m")


@pytest.fixture(scope="module", params=["lossless", "ratio8"])
def folder(request, hf, tmp_path_factory):
    """A folder archive of the 3-shard model and the tensors decompress gives back."""
    tmp = tmp_path_factory.mktemp(request.param)
    out = tmp / "m.sparsify"
    sparsify.compress(hf, out, jobs=1, target_ratio=8 if request.param == "ratio8" else None)
    return out, load_like_from_pretrained(sparsify.decompress(out, tmp / "r"))


def test_a_tensor_decodes_as_decompress_writes_it(digits):
    out, restored = digits
    with sparsify.open(out) as f, safe_open(str(SAMPLE_FILES["fp32"]), framework="np") as source:
        assert f.keys() == DIGITS_TENSORS == list(f) and len(f) == 6
        assert f.metadata() == source.metadata()
        assert all(same(f.get_tensor(n), restored[n]) for n in restored)
        assert "fc1.weight" in f and "nope" not in f


def test_every_dtype_decodes_like_decompress(tmp_path):
    (tmp_path / "d.safetensors").write_bytes(safetensors_seeds()["dtypes"])
    out = tmp_path / "d.sparsify"
    sparsify.compress(tmp_path / "d.safetensors", out, jobs=1)
    loaded = sparsify.load(out)
    with open_weights(sparsify.decompress(out, tmp_path / "r.safetensors")) as restored:  # F4/F6 too
        assert list(loaded) == [i.name for i in restored.tensors()]
        assert all(same(loaded[i.name], restored.read(i.name)) for i in restored.tensors())
    assert loaded["packed.F4"].dtype == np.uint8 and loaded["packed.F4"].nbytes == 3


def test_load_of_a_folder_archive_is_what_from_pretrained_finds(folder):
    out, restored = folder
    loaded = sparsify.load(out)
    assert loaded.keys() == restored.keys()
    assert all(same(loaded[n], restored[n]) for n in restored)
    assert loaded["embeddings.LayerNorm.bias"].dtype == restored["embeddings.LayerNorm.bias"].dtype
    with sparsify.open(out) as f:
        assert f.metadata() == {"format": "pt"}


def test_a_folder_archive_opens_only_the_shards_it_needs(folder, monkeypatch):
    out, restored = folder
    opened = []
    real = sparsify.lazy.open_member
    monkeypatch.setattr(sparsify.lazy, "open_member", lambda d, w: opened.append(w["name"]) or real(d, w))
    first = Archive(out / "model-00001-of-00003.safetensors.sparsify").tensors[0]["name"]
    with sparsify.open(out) as f:
        assert opened == []
        assert same(f.get_tensor(first), restored[first])
        assert opened == ["model-00001-of-00003.safetensors"]
        f.keys()
        assert len(opened) == 3


def test_a_damaged_part_fails_that_tensor_only(digits, tmp_path):
    out, restored = digits
    damaged = shutil.copy(out, tmp_path / "damaged.sparsify")
    with Archive(damaged) as archive:
        key = next(t for t in archive.tensors if t["name"] == "fc2.weight")["parts"][0]["key"]
        at = archive.layout.data_start + archive.layout.entry(key).begin
    data = bytearray(damaged.read_bytes())
    data[at] ^= 0xFF
    damaged.write_bytes(data)
    with sparsify.open(damaged) as f:
        with pytest.raises(sparsify.CorruptArchiveError, match="checksum mismatch"):
            f.get_tensor("fc2.weight")
        assert same(f.get_tensor("fc1.weight"), restored["fc1.weight"])


def test_unknown_names_and_frameworks(digits):
    with sparsify.open(digits[0]) as f, pytest.raises(KeyError, match="no tensor 'nope'"):
        f.get_tensor("nope")
    with pytest.raises(sparsify.UsageError, match="unknown framework 'tf'"):
        sparsify.open(digits[0], framework="tf")
    with pytest.raises(sparsify.InputError, match="not a sparsify archive"):
        sparsify.open(SAMPLE_FILES["npz"])


def test_the_context_manager_closes_the_files(folder):
    with sparsify.open(folder[0]) as f:
        f.keys()
        members = [m for m in f._members if m is not None]
    assert len(members) == 3 and all(m._file.closed for m in members)
    with pytest.raises(ValueError, match="closed"):
        f.get_tensor("embeddings.LayerNorm.bias")


def test_pt_gives_torch_tensors_equal_to_the_numpy_ones(folder):
    torch = pytest.importorskip("torch")
    arrays = sparsify.load(folder[0])
    tensors = sparsify.load(folder[0], framework="pt")
    bf16 = [n for n, a in arrays.items() if a.dtype.name == "bfloat16"]
    assert bf16 and all(tensors[n].dtype == torch.bfloat16 for n in bf16)
    for name, array in arrays.items():
        bits = np.dtype(f"i{array.itemsize}")
        assert np.array_equal(tensors[name].view(getattr(torch, bits.name)).numpy(), array.view(bits)), name


def test_pt_without_torch_is_a_usage_error(digits, monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(sparsify.UsageError, match="framework='pt' needs torch"):
        sparsify.open(digits[0], framework="pt")


def test_pt_conversion_views_ml_dtypes_through_ints(monkeypatch):
    """With a stand-in torch (the real one is optional): bf16 reaches torch as int16 bits, viewed as
    torch.bfloat16; packed sub-byte tensors are refused."""
    fake = types.SimpleNamespace(
        bfloat16="torch.bfloat16", from_numpy=lambda a: types.SimpleNamespace(array=a, view=lambda dtype: (a, dtype))
    )
    monkeypatch.setitem(sys.modules, "torch", fake)
    convert = sparsify.lazy._converter("pt")
    bits, dtype = convert(np.ones(3, dtype="bfloat16"), "BF16", "x")
    assert dtype == "torch.bfloat16" and bits.dtype == np.int16 and bits.tolist() == [0x3F80] * 3
    assert convert(np.arange(3, dtype=">f4"), ">f4", "y").array.dtype == np.dtype("=f4")
    with pytest.raises(sparsify.UsageError, match="packed sub-byte"):
        convert(np.zeros(3, np.uint8), "F4", "z")
