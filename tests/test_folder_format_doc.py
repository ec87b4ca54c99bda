"""docs/FORMAT.md §13 is enough to check a folder archive.

sparsify is used only to *make* folder archives (``sparsify.compress``). Everything else follows the
document, not the code: the index is read with ``json``, its checksum recomputed as §13.4 says, every
member and carried file checked by size and SHA-256 (``hashlib``), the names against §13.5, and each
member's manifest read by the independent reader of tests/test_format_doc.py (§1-§12).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from model_folders import make_hf_folder
from test_format_doc import Reader  # the reader written from FORMAT.md §1-§12

import sparsify  # only to create folder archives

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
INDEX = "sparsify.index.json"
HEX64 = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module", params=[{}, {"target_ratio": 4.0}], ids=["lossless", "target"])
def made(request, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(model folder, folder archive, its index), lossless or with a whole-model target."""
    root = tmp_path_factory.mktemp("folder")
    model = make_hf_folder(root / "tiny-bert")
    out = root / "tiny-bert.sparsify"
    sparsify.compress(model, out, jobs=1, **request.param)
    return model, out, json.loads((out / INDEX).read_bytes())


def section() -> str:
    """The text of §13."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n## 13. Folder archives")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def canonical_checksum(index: dict) -> str:
    """§13.4: SHA-256 of the index without ``checksum``, sorted keys, compact, non-ASCII kept, UTF-8."""
    body = {k: v for k, v in index.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def name_ok(name) -> bool:
    """§13.5: relative, ``/``-separated, no empty/``.``/``..`` part, no backslash or NUL, no drive letter."""
    return (
        isinstance(name, str)
        and name != ""
        and all(part not in ("", ".", "..") for part in name.split("/"))
        and "\\" not in name
        and "\x00" not in name
        and re.match(r"[A-Za-z]:", name) is None
    )


def test_index_and_checksum(made):
    _, _, index = made
    assert index["format"] == "sparsify-model"
    assert re.fullmatch(r"[0-9]+\.[0-9]+", index["format_version"]) and index["format_version"].startswith("1.")
    assert HEX64.fullmatch(index["checksum"])
    assert canonical_checksum(index) == index["checksum"]
    changed = {**index, "files": [{**index["files"][0], "size": index["files"][0]["size"] + 1}, *index["files"][1:]]}
    assert canonical_checksum(changed) != index["checksum"]  # an edit shows
    assert isinstance(index["weights"], list) and index["weights"] and isinstance(index["files"], list)
    for key in ("weights", "files"):
        names = [e["name"] for e in index[key]]
        assert names == sorted(names)  # §13.3: sorted by name


def test_names(made):
    _, _, index = made
    names = [w[k] for w in index["weights"] for k in ("name", "archive")] + [f["name"] for f in index["files"]]
    assert all(name_ok(n) for n in names)
    assert len(set(names)) == len(names) and INDEX not in names
    assert all(w["archive"] == w["name"] + ".sparsify" for w in index["weights"])
    for bad in ("", "/etc/x", "a//b", "a/./b", "../x", "a/..", "a\\b", "a\x00b", "C:x", "c:/x", "a/"):
        assert not name_ok(bad), bad


def test_members_and_carried_files(made):
    model, out, index = made
    for w in index["weights"]:
        assert w["format"] in ("safetensors", "hdf5", "npz")
        assert all(type(w[k]) is int and w[k] >= 0 for k in ("size", "archive_bytes", "tensors"))
        assert HEX64.fullmatch(w["sha256"]) and HEX64.fullmatch(w["archive_sha256"])
        member = out / w["archive"]
        assert member.stat().st_size == w["archive_bytes"]
        assert file_sha256(member) == w["archive_sha256"]
        manifest = Reader(member).manifest  # §4.0, §8.1: the member is an ordinary archive
        source = manifest["source"]
        assert source["sha256"] == w["sha256"] and source["size"] == w["size"] and source["format"] == w["format"]
        assert source["name"] == w["name"].rsplit("/", 1)[-1]  # §4.2: the base name
        assert len(manifest["tensors"]) == w["tensors"]
        assert manifest["plan"] == index["plan"] and manifest["options"] == index["options"]  # §13.2
        original = model / w["name"]  # the weight file the member was made from
        assert original.stat().st_size == w["size"] and file_sha256(original) == w["sha256"]
    for f in index["files"]:
        carried = out / f["name"]
        assert type(f["size"]) is int and carried.stat().st_size == f["size"] and file_sha256(carried) == f["sha256"]
        assert (model / f["name"]).read_bytes() == carried.read_bytes()  # byte for byte
    # §13.1: nothing else is written; every file of the model is a weight file or carried
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {INDEX} | {w["archive"] for w in index["weights"]} | {f["name"] for f in index["files"]}
    present = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    assert present == {w["name"] for w in index["weights"]} | {f["name"] for f in index["files"]}
    plan = index["plan"]
    if plan is not None and plan.get("budget_bytes") is not None:  # §13.2: over the sum of the members
        assert plan["budget_bytes"] == sum(w["size"] for w in index["weights"]) / index["options"]["target"]["ratio"]
        assert plan["met"] and sum(w["archive_bytes"] for w in index["weights"]) <= plan["budget_bytes"]


def test_section_names_every_key(made):
    """§13 names, in backticks, every key the real index has (so the doc cannot fall behind)."""
    _, _, index = made
    text = section()
    keys = set(index) | set(index["source"]) | {k for e in index["weights"] + index["files"] for k in e}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/FORMAT.md §13 does not name {missing}"
