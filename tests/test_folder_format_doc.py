"""docs/FORMAT.md §13 is enough to check a folder archive.

sparsify is used only to *make* folder archives (``sparsify.compress``). Everything else follows the
document, not the code: the index is read with ``json``, its checksum recomputed as §13.4 says, every
member and carried file checked by size and checksum (``xxhash``; ``hashlib`` for the SHA-256 of index
1.0), the names against §13.5, and each member's manifest read by the independent reader of
tests/test_format_doc.py (§1-§12). Folder archives made now (index 2.0) and the golden ones of
tests/golden/ (2.0, and 1.0 made by the release that wrote archive format 2.1) are checked alike.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import xxhash
from model_folders import make_hf_folder
from test_format_doc import Reader  # the reader written from FORMAT.md §1-§12

import sparsify  # only to create folder archives (and, for the golden ones, to check that it reads them)

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
GOLDEN = Path(__file__).resolve().parent / "golden"
INDEX = "sparsify.index.json"
CHECKSUM = re.compile(r"(xxh3:[0-9a-f]{16}|sha256:[0-9a-f]{64})")  # §13.3, §8.6
HEX64 = re.compile(r"[0-9a-f]{64}")  # index 1.0's bare SHA-256
RENAMED = {"sha256": "checksum", "archive_sha256": "archive_checksum"}  # §13.6: index 1.0 -> 2.0 names


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


def canonical(index: dict) -> bytes:
    """§13.4: the index without ``checksum``, sorted keys, compact, non-ASCII kept, UTF-8."""
    body = {k: v for k, v in index.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def checksum_of(data: bytes, algorithm: str = "xxh3") -> str:
    """§8.6: a checksum string."""
    if algorithm == "xxh3":
        return "xxh3:" + xxhash.xxh3_64_hexdigest(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def matches(data: bytes, expected: str) -> bool:
    assert CHECKSUM.fullmatch(expected), expected
    return checksum_of(data, expected.split(":")[0]) == expected


def index_checksum_holds(index: dict) -> bool:
    """§13.4: 2.0, a checksum string of the canonical JSON; 1.0, its bare hex SHA-256."""
    if index["format_version"].startswith("1."):
        return index["checksum"] == hashlib.sha256(canonical(index)).hexdigest()
    return matches(canonical(index), index["checksum"])


def read_index(folder: Path) -> dict:
    """§13.6: the index, its checksum checked as its version computes it, 1.0's entries in 2.0's names."""
    index = json.loads((folder / INDEX).read_bytes())
    assert index["format"] == "sparsify-model" and int(index["format_version"].split(".")[0]) <= 2
    assert index_checksum_holds(index)
    if index["format_version"].startswith("1."):
        for entry in index["weights"] + index["files"]:
            assert "checksum" not in entry and HEX64.fullmatch(entry["sha256"])
            for old, new in RENAMED.items():
                if old in entry:
                    entry[new] = "sha256:" + entry.pop(old)
    return index


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


def check_members_and_files(model: Path, out: Path, index: dict) -> None:
    """§13.3, §13.6 (verify): every member and carried file is the one the index lists, and so are the
    model's files; nothing else is written (§13.1)."""
    for w in index["weights"]:
        assert w["format"] in ("safetensors", "hdf5", "npz")
        assert all(type(w[k]) is int and w[k] >= 0 for k in ("size", "archive_bytes", "tensors"))
        assert CHECKSUM.fullmatch(w["checksum"]) and CHECKSUM.fullmatch(w["archive_checksum"])
        member = out / w["archive"]
        assert member.stat().st_size == w["archive_bytes"]
        assert matches(member.read_bytes(), w["archive_checksum"])
        manifest = Reader(member).manifest  # §4.0, §8.1: the member is an ordinary archive (§9.2 names)
        source = manifest["source"]
        assert source["checksum"] == w["checksum"] and source["size"] == w["size"] and source["format"] == w["format"]
        assert source["name"] == w["name"].rsplit("/", 1)[-1]  # §4.2: the base name
        assert len(manifest["tensors"]) == w["tensors"]
        assert manifest["plan"] == index["plan"] and manifest["options"] == index["options"]  # §13.2
        original = model / w["name"]  # the weight file the member was made from
        assert original.stat().st_size == w["size"] and matches(original.read_bytes(), w["checksum"])
    for f in index["files"]:
        carried = out / f["name"]
        assert type(f["size"]) is int and carried.stat().st_size == f["size"]
        assert matches(carried.read_bytes(), f["checksum"])
        assert (model / f["name"]).read_bytes() == carried.read_bytes()  # byte for byte
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {INDEX} | {w["archive"] for w in index["weights"]} | {f["name"] for f in index["files"]}
    present = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    assert present == {w["name"] for w in index["weights"]} | {f["name"] for f in index["files"]}


def test_index_and_checksum(made):
    _, out, index = made
    assert index["format"] == "sparsify-model"
    assert re.fullmatch(r"[0-9]+\.[0-9]+", index["format_version"]) and index["format_version"] == "2.0"
    assert re.fullmatch("xxh3:[0-9a-f]{16}", index["checksum"])  # §13.3: what the writer of 2.0 writes
    assert checksum_of(canonical(index)) == index["checksum"]
    changed = {**index, "files": [{**index["files"][0], "size": index["files"][0]["size"] + 1}, *index["files"][1:]]}
    assert checksum_of(canonical(changed)) != index["checksum"]  # an edit shows
    assert isinstance(index["weights"], list) and index["weights"] and isinstance(index["files"], list)
    for key in ("weights", "files"):
        names = [e["name"] for e in index[key]]
        assert names == sorted(names)  # §13.3: sorted by name
    for entry in index["weights"] + index["files"]:  # 2.0's names only
        assert not set(entry) & set(RENAMED) and entry["checksum"].startswith("xxh3:")
    assert read_index(out) == index


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
    check_members_and_files(model, out, index)
    plan = index["plan"]
    if plan is not None and plan.get("budget_bytes") is not None:  # §13.2: over the sum of the members
        assert plan["budget_bytes"] == sum(w["size"] for w in index["weights"]) / index["options"]["target"]["ratio"]
        assert plan["met"] and sum(w["archive_bytes"] for w in index["weights"]) <= plan["budget_bytes"]


def test_section_names_every_key(made):
    """§13 names, in backticks, every key the real index has (so the doc cannot fall behind), and the keys
    of index 1.0 it still reads."""
    _, _, index = made
    text = section()
    keys = set(index) | set(index["source"]) | {k for e in index["weights"] + index["files"] for k in e}
    keys |= set(RENAMED)
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/FORMAT.md §13 does not name {missing}"


@pytest.mark.parametrize(
    ("name", "version", "member_version"),
    [
        ("digits-folder.sparsify", "2.0", "3.3"),
        ("v3.2/digits-folder.sparsify", "2.0", "3.2"),
        ("v3.1/digits-folder.sparsify", "2.0", "3.1"),
        ("v3.0/digits-folder.sparsify", "2.0", "3.0"),
        ("v2.1/digits-folder.sparsify", "1.0", "2.1"),
    ],
)
def test_golden_folder_archives(name, version, member_version, tmp_path):
    """The golden folder archives: index 2.0 (members of format 3.3, 3.2, 3.1 and 3.0) and index 1.0 (bare hex
    SHA-256, its members of format 2.1) check as §13 says, by this reader and by sparsify, and rebuild
    their source."""
    out = GOLDEN / name
    raw = json.loads((out / INDEX).read_bytes())
    assert raw["format_version"] == version
    if version == "1.0":  # §13.3: 1.0's names and bare digests, and its own checksum a bare SHA-256
        assert HEX64.fullmatch(raw["checksum"]) and all("sha256" in e for e in raw["weights"] + raw["files"])
        assert all(HEX64.fullmatch(w["archive_sha256"]) for w in raw["weights"])
    else:
        assert re.fullmatch("xxh3:[0-9a-f]{16}", raw["checksum"])
    index = read_index(out)
    algorithm = "sha256" if version == "1.0" else "xxh3"
    assert all(e["checksum"].startswith(algorithm + ":") for e in index["weights"] + index["files"])
    for w in index["weights"]:
        assert Reader(out / w["archive"]).manifest["format_version"] == member_version
    check_members_and_files(GOLDEN / "digits-folder-source", out, index)
    assert sparsify.verify(out, against=GOLDEN / "digits-folder-source").ok
    rebuilt = sparsify.decompress(out, tmp_path / "rebuilt")  # lossless: the folder, byte for byte
    for f in (GOLDEN / "digits-folder-source").rglob("*"):
        if f.is_file():
            assert (rebuilt / f.relative_to(GOLDEN / "digits-folder-source")).read_bytes() == f.read_bytes()


@pytest.mark.parametrize("version", ["2.0", "1.0"])
def test_index_checksum_of_each_version(version, tmp_path):
    """§13.4, §13.6: an edited index is refused, by its own version's checksum; a 2.0 index may carry a
    sha256: checksum string, a 1.0 index only a bare hex one; a greater major version is refused first."""
    source = GOLDEN / ("digits-folder.sparsify" if version == "2.0" else "v2.1/digits-folder.sparsify")
    out = tmp_path / "copy.sparsify"
    shutil.copytree(source, out)
    index = json.loads((out / INDEX).read_bytes())

    def write(edited: dict) -> None:
        (out / INDEX).write_text(json.dumps(edited, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    edited = json.loads(json.dumps(index))
    edited["files"][0]["size"] += 1  # checksum left stale
    write(edited)
    with pytest.raises(sparsify.CorruptArchiveError, match="checksum mismatch"):
        sparsify.inspect(out)
    assert not index_checksum_holds(edited)
    other = {**index, "checksum": checksum_of(canonical(index), "sha256")}  # a sha256: string
    write(other)
    if version == "2.0":  # accepted in 2.0, as a checksum string of either algorithm
        assert index_checksum_holds(other)
        assert sparsify.inspect(out)["source"]["name"] == index["source"]["name"]
    else:  # 1.0 knows only the bare hex digest
        with pytest.raises(sparsify.CorruptArchiveError, match="checksum mismatch"):
            sparsify.inspect(out)
    newer = {**index, "format_version": "3.0", "checksum": "not a checksum"}
    write(newer)
    with pytest.raises(sparsify.CorruptArchiveError, match="newer than this sparsify"):
        sparsify.inspect(out)
