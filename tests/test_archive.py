"""The archive: golden files decoded forever, determinism, safe opening of damaged and hostile files."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard
from checkers import read_tensors, relative_error
from conftest import DIGITS_TENSORS, SAMPLE_FILES
from golden.make_golden import FOLDERS, GOLDEN, OLDER, OLDER_FOLDERS
from safetensors import safe_open

import sparsify
from sparsify import container
from sparsify.archive import FORMAT_VERSION, Archive
from sparsify.archive.reader import unpack_manifest
from sparsify.archive.writer import manifest_text
from sparsify.errors import CorruptArchiveError, InputError

GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(GOLDEN) + sorted(OLDER))
def test_golden_archives_decode_to_their_recorded_errors(name, tmp_path):
    """Archives of this and every earlier format version stay readable, with the errors they recorded."""
    source = GOLDEN_DIR.parents[1] / "sample_models" / (GOLDEN[name][0] if name in GOLDEN else OLDER[name])
    restored = sparsify.decompress(GOLDEN_DIR / name, tmp_path / "restored.safetensors")
    originals, decoded = read_tensors(source), read_tensors(restored)
    for row in sparsify.inspect(GOLDEN_DIR / name)["tensors"]:
        a, b = originals[row["name"]], decoded[row["name"]]
        if row["exact"]:
            assert a.tobytes() == b.tobytes()
        else:
            assert relative_error(a, b) == pytest.approx(row["rel_error"], rel=1e-9)


@pytest.mark.parametrize("name", sorted(FOLDERS) + sorted(OLDER_FOLDERS))
def test_golden_folder_archives_rebuild_their_folder(name, tmp_path):
    """Folder archives of every index format (1.0: SHA-256, 2.0: checksum strings) rebuild the model
    folder byte for byte, and verify against it."""
    source = GOLDEN_DIR / {**FOLDERS, **OLDER_FOLDERS}[name]
    restored = sparsify.decompress(GOLDEN_DIR / name, tmp_path / "restored")
    expected = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert sorted(p.relative_to(restored) for p in restored.rglob("*") if p.is_file()) == expected
    for relative in expected:
        assert (restored / relative).read_bytes() == (source / relative).read_bytes(), relative
    assert not sparsify.verify(GOLDEN_DIR / name, against=source).problems


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_folder_format_unchanged(name, tmp_path):
    """Compressing the folder today gives the committed folder archive, file for file."""
    out = tmp_path / name
    sparsify.compress(GOLDEN_DIR / FOLDERS[name], out, jobs=1)
    golden = GOLDEN_DIR / name
    names = sorted(p.relative_to(golden) for p in golden.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == names
    for relative in names:
        assert (out / relative).read_bytes() == (golden / relative).read_bytes(), f"{relative} changed; see make_golden"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_format_unchanged(name, tmp_path):
    """Compressing today gives the committed bytes; if not, the format changed: regenerate with
    tests/golden/make_golden.py (and bump FORMAT_VERSION if old readers cannot read the new files)."""
    source_name, options = GOLDEN[name]
    out = tmp_path / name
    sparsify.compress(GOLDEN_DIR.parents[1] / "sample_models" / source_name, out, **options)
    assert out.read_bytes() == (GOLDEN_DIR / name).read_bytes(), "archive format changed; see the docstring"


def test_archive_is_a_valid_safetensors_file():
    path = GOLDEN_DIR / "digits_mlp.threshold.sparsify"
    with safe_open(str(path), framework="np") as f:
        keys = list(f.keys())
        assert "fc1.weight/0.threshold.values" in keys
        envelope = json.loads(f.metadata()["sparsify"])
    assert envelope["format"] == "sparsify" and envelope["format_version"] == FORMAT_VERSION
    assert envelope["manifest_codec"] == "zstd+dict+base64"
    assert unpack_manifest(envelope, "test")["format_version"] == FORMAT_VERSION


def test_a_large_manifest_is_packed_at_the_lower_level(tmp_path):
    """§4.0: a manifest of more than 64 KiB of JSON is one level-9 frame (level 15 below), and reads back."""
    from safetensors.numpy import save_file

    from sparsify.archive.dictionary import manifest_dictionary

    rng = np.random.default_rng(0)
    tensors = {f"layer{i}.norm": rng.standard_normal(8).astype(np.float32) for i in range(160)}
    source, out = tmp_path / "many.safetensors", tmp_path / "many.sparsify"
    save_file(tensors, str(source))
    sparsify.compress(source, out, jobs=1)
    (n,) = struct.unpack("<Q", out.read_bytes()[:8])
    envelope = json.loads(json.loads(out.read_bytes()[8 : 8 + n])["__metadata__"]["sparsify"])
    manifest = unpack_manifest(envelope, "test")
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    assert len(text) > 1 << 16
    frame = base64.b64decode(envelope["manifest"])
    dictionary = manifest_dictionary()
    packed = {
        level: zstandard.ZstdCompressor(level=level, write_checksum=True, dict_data=dictionary).compress(text)
        for level in (9, 15)
    }
    assert frame == packed[9] != packed[15]
    sparsify.decompress(out, tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == source.read_bytes()


def rewrite_envelope(data: bytes, edit) -> bytes:
    """The archive with the envelope of its manifest edited."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    envelope = json.loads(header["__metadata__"]["sparsify"])
    edit(envelope)
    header["__metadata__"]["sparsify"] = json.dumps(envelope)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda e: e.update(manifest="not base64!"), "packed manifest cannot be read"),
        (lambda e: e.update(manifest=base64.b64encode(b"garbage").decode()), "packed manifest cannot be read"),
        (lambda e: e.update(manifest_codec="brotli"), "cannot read"),
        (lambda e: e.pop("manifest"), "packed manifest cannot be read"),
        (
            lambda e: e.update(manifest=base64.b64encode(zstandard.ZstdCompressor().compress(b"[1, 2]")).decode()),
            "does not declare format",
        ),
    ],
)
def test_damaged_manifest_envelope_is_a_clear_error(tmp_path, edit, message):
    path = tmp_path / "bad.sparsify"
    path.write_bytes(rewrite_envelope(golden_bytes(), edit))
    with pytest.raises(CorruptArchiveError, match=message):
        sparsify.inspect(path)


def test_inspect_reads_no_part(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("inspect read a part")

    monkeypatch.setattr(container, "read_bytes", forbidden)
    report = sparsify.inspect(GOLDEN_DIR / "digits_mlp.threshold.sparsify")
    assert [r["name"] for r in report["tensors"]] == DIGITS_TENSORS


def test_deterministic_across_formats(tmp_path):
    for key, path in SAMPLE_FILES.items():
        a, b = tmp_path / f"{key}-a.sparsify", tmp_path / f"{key}-b.sparsify"
        sparsify.compress(path, a, pipeline="threshold:sparsity=0.5+zstd")
        sparsify.compress(path, b, pipeline="threshold:sparsity=0.5+zstd")
        assert a.read_bytes() == b.read_bytes(), key


# -- damaged and hostile archives: each a CorruptArchiveError/InputError with a clear message ------


def golden_bytes() -> bytes:
    return (GOLDEN_DIR / "digits_mlp.threshold.sparsify").read_bytes()


def rewrite_manifest(data: bytes, edit) -> bytes:
    """The archive with its manifest edited (header re-encoded, offsets unchanged)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    manifest = unpack_manifest(json.loads(header["__metadata__"]["sparsify"]), "test")
    edit(manifest)
    header["__metadata__"]["sparsify"] = manifest_text(manifest)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _set(path, value):
    def edit(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _drop_last_part(manifest):
    """The last part of tensor 1 forgotten by the manifest (stage and sizes made consistent)."""
    tensor = manifest["tensors"][1]
    dropped = tensor["parts"].pop()
    tensor["stored_bytes"] -= dropped["nbytes"]
    tensor["stages"][-1]["parts"].remove(dropped["name"].split(".", 2)[2])


CASES = {
    "truncated": (lambda d: d[: len(d) // 2], "truncated"),
    "trailing bytes": (lambda d: d + b"\0" * 5, "trailing bytes"),
    "flipped data byte": (flip_last_byte, "checksum mismatch in part"),
    "huge header length": (lambda d: struct.pack("<Q", 2**62) + d[8:], "exceeds the 100000000-byte limit"),
    "header not json": (
        lambda d: d[:8] + b"{" + b"x" * (struct.unpack("<Q", d[:8])[0] - 1) + d[8 + struct.unpack("<Q", d[:8])[0] :],
        "not valid UTF-8 JSON",
    ),
    "newer major version": (
        lambda d: rewrite_manifest(d, _set(["format_version"], "4.0")),
        "archive format 4.0 is newer than this sparsify reads (3.x); upgrade sparsify",
    ),
    "bad version": (lambda d: rewrite_manifest(d, _set(["format_version"], "one")), "invalid format_version 'one'"),
    "not sparsify": (lambda d: rewrite_manifest(d, _set(["format"], "other")), "does not declare format 'sparsify'"),
    "wrong checksum": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][1]["parts"][0].update(checksum="xxh3:" + "0" * 16)),
        "checksum mismatch",
    ),
    "missing part": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][1]["parts"][0].update(key="nope")),
        "tensors[1].parts[0].key is 'nope', expected 'fc1.weight/0.threshold.mask'",
    ),
    "bad shape": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][1].update(shape=[-1, 3])),
        "tensors[1].shape[0]: Expected int >= 0",
    ),
    "unknown method": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][1]["stages"][0].update(method="magic")),
        "unknown method 'magic'",
    ),
    "unknown codec": (
        lambda d: rewrite_manifest(
            d, lambda m: [p.update(codec="lz9") for p in m["tensors"][1]["parts"] if p["codec"]]
        ),
        "unknown codec 'lz9'",
    ),
    "bad stage config": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][1]["stages"][0]["config"].update(sparsity=7)),
        "tensors[1].stages[0].config: threshold: sparsity=7 is out of range",
    ),
    "inconsistent view": (lambda d: rewrite_manifest(d, lambda m: m["tensors"][1]["view"].update(rows=7)), "bad view"),
    "string for a number": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][1]["metrics"].update(sq_norm="155.4")),
        "tensors[1].metrics.sq_norm: Expected float | null, got str",
    ),
    "edited lossless checksum": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][0].update(checksum="xxh3:" + "0" * 16)),
        "tensor 'fc1.bias': decodes to bytes that differ from the original's checksum",
    ),
    "edited decoded checksum": (
        lambda d: rewrite_manifest(d, lambda m: m["tensors"][1].update(decoded_checksum="xxh3:" + "1" * 16)),
        "tensor 'fc1.weight': decodes to bytes that differ from the recorded checksum",
    ),
    "stray container entry": (
        lambda d: rewrite_manifest(d, _drop_last_part),
        "belongs to no part",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_archive_is_a_clear_error(case, tmp_path):
    damage, message = CASES[case]
    path = tmp_path / "bad.sparsify"
    path.write_bytes(damage(golden_bytes()))
    with pytest.raises(InputError) as excinfo:
        with Archive(path) as archive:
            for tensor in archive.tensors:
                archive.decode(tensor)
    assert message in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_hostile_csr_with_valid_checksums_is_refused(tmp_path):
    """Indices out of range but checksums recomputed: validation, not luck, stops it."""
    from sparsify.methods.threshold import Threshold
    from sparsify.sparse import pack, unpack

    parts = pack(np.eye(40, dtype=bool), np.ones(40, np.float32))
    parts["indices"] = parts["indices"] + 10
    with pytest.raises(CorruptArchiveError, match="inconsistent CSR parts"):
        unpack(parts, (40, 40))
    assert Threshold(sparsity=0.5)  # the method decodes through the same validated unpack


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a sparsify archive"),
        (b"hello world, not an archive at all", "not a sparsify archive"),
        (b"PK\x03\x04" + b"\0" * 40, "not a sparsify archive"),
    ],
)
def test_not_an_archive(tmp_path, content, message):
    path = tmp_path / "x.sparsify"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        Archive(path)


def test_plain_safetensors_is_not_an_archive():
    with pytest.raises(InputError, match="a safetensors file, not a sparsify archive"):
        Archive(SAMPLE_FILES["fp32"])


@pytest.mark.parametrize(
    "header, message",
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "spans 4 bytes, its dtype and shape need 8"),
        ({"t": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, "unsupported dtype 'Q7'"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, "starts at 8, expected 0"),
        ({"t": {"dtype": "F32", "shape": [2]}}, "must have exactly dtype, shape and data_offsets"),
        ({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "invalid shape"),
        (
            {"__metadata__": {"a": 1}, "t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            "must map strings to strings",
        ),
    ],
)
def test_container_validation(tmp_path, header, message):
    raw = json.dumps(header).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    with pytest.raises(InputError, match=message):
        with open(path, "rb") as f:
            container.read_layout(f, path.stat().st_size, InputError, str(path))


def test_duplicate_keys_refused(tmp_path):
    raw = b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    path = tmp_path / "d.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0")
    with pytest.raises(InputError, match="duplicate key 't'"):
        with open(path, "rb") as f:
            container.read_layout(f, path.stat().st_size, InputError, str(path))
