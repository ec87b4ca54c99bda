"""The folder archive of a model folder: one archive per weight file, the carried files, and an index.

``DIR.sparsify/`` mirrors the model folder ``DIR``: each weight file ``NAME`` (``model-00001-of-00004
.safetensors``, ``text_encoder/model.safetensors``) becomes the archive ``NAME.sparsify`` -- a
complete archive of its own -- and every other file is copied as it is. ``sparsify.index.json``
lists them all with sizes and checksums (XXH3-64 in index format 2.0, SHA-256 in 1.0), the options and
the plan chosen for the whole model, and the gate; its own checksum covers everything else in it
(docs/FORMAT.md §13).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from sparsify.archive.reader import Archive
from sparsify.checksum import PATTERN as CHECKSUM_PATTERN
from sparsify.checksum import checksum, matches
from sparsify.errors import CorruptArchiveError, InputError

INDEX_NAME = "sparsify.index.json"
INDEX_FORMAT = "sparsify-model"
INDEX_VERSION = "2.0"
ARCHIVE_SUFFIX = ".sparsify"
MAX_INDEX_BYTES = 256 << 20

_CHECKSUM = re.compile(CHECKSUM_PATTERN)
# Index format 1.0 named its SHA-256 digests after the algorithm; 2.0 has self-describing checksums.
_RENAMED = {"sha256": "checksum", "archive_sha256": "archive_checksum"}


def archive_name(weight_name: str) -> str:
    """Where a weight file's archive sits in the folder archive."""
    return weight_name + ARCHIVE_SUFFIX


def is_folder_archive(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / INDEX_NAME).is_file()


def _canonical(index: dict[str, Any]) -> bytes:
    """The index without its ``checksum``, as canonical JSON (sorted keys, compact, UTF-8)."""
    body = {k: v for k, v in index.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def index_checksum(index: dict[str, Any]) -> str:
    """The index's own checksum: XXH3-64 of :func:`_canonical` (``"xxh3:..."``)."""
    return checksum(_canonical(index))


def index_text(index: dict[str, Any]) -> bytes:
    """The index file's bytes, its checksum added (readable JSON, keys in the order given)."""
    index = {**index, "checksum": index_checksum(index)}
    return (json.dumps(index, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def read_index(folder: Path) -> dict[str, Any]:
    """The validated index of the folder archive ``folder``; CorruptArchiveError on any defect."""
    path = Path(folder) / INDEX_NAME
    what = str(path)
    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            raise CorruptArchiveError(f"{what}: larger than {MAX_INDEX_BYTES} bytes")
        index = json.loads(path.read_bytes(), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise InputError(f"{folder}: a folder without {INDEX_NAME}; not a sparsify folder archive") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise CorruptArchiveError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise CorruptArchiveError(f"{what}: does not declare format {INDEX_FORMAT!r}")
    version = index.get("format_version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]+\.[0-9]+", version):
        raise CorruptArchiveError(f"{what}: invalid format_version {version!r}")
    if int(version.split(".")[0]) > int(INDEX_VERSION.split(".")[0]):
        raise CorruptArchiveError(
            f"{what}: folder archive format {version} is newer than this sparsify reads "
            f"({INDEX_VERSION.split('.')[0]}.x); upgrade sparsify"
        )
    if not _checksum_holds(index):
        raise CorruptArchiveError(f"{what}: checksum mismatch (the index was changed or damaged)")
    if version.startswith("1."):
        _upgrade(index)
    _check_index(index, what)
    return index


def _checksum_holds(index: dict[str, Any]) -> bool:
    """Whether the index's ``checksum`` is that of the rest: in 1.0 the bare hex SHA-256, in 2.0 a
    checksum string."""
    expected = index.get("checksum")
    if not isinstance(expected, str):
        return False
    if str(index.get("format_version")).startswith("1."):
        return expected == hashlib.sha256(_canonical(index)).hexdigest()
    return bool(_CHECKSUM.fullmatch(expected)) and matches(_canonical(index), expected)


def _upgrade(index: dict[str, Any]) -> None:
    """A 1.0 index in 2.0's field names, in place: ``"sha256": "<hex>"`` becomes ``"checksum":
    "sha256:<hex>"`` (and ``archive_sha256`` likewise), so one reader serves both."""
    for entry in [*(index.get("weights") or []), *(index.get("files") or [])]:
        if isinstance(entry, dict):
            for old, new in _RENAMED.items():
                if old in entry:
                    value = entry.pop(old)
                    entry[new] = f"sha256:{value}" if isinstance(value, str) else value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (a repeated key could hide one value behind another)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key is repeated in an object")
    return result


def _check_index(index: dict[str, Any], what: str) -> None:
    source = index.get("source")
    name = source.get("name") if isinstance(source, dict) else None
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise CorruptArchiveError(f"{what}: source name {name!r} is not one plain file name")
    for key in ("options", "plan", "gate"):
        if index.get(key) is not None and not isinstance(index[key], dict):
            raise CorruptArchiveError(f"{what}: {key!r} must be an object or null")
    weights, files = index.get("weights"), index.get("files")
    if not isinstance(weights, list) or not weights or not isinstance(files, list):
        raise CorruptArchiveError(f"{what}: 'weights' (a non-empty list) and 'files' (a list) are required")
    carried = [f.get("name") if isinstance(f, dict) else None for f in files]
    for key in ("archive", "name"):  # the folder archive's files, and the rebuilt folder's
        check_names([w.get(key) if isinstance(w, dict) else None for w in weights] + carried, CorruptArchiveError, what)
    seen: set[str] = {INDEX_NAME}
    for entry in weights:
        _check_entry(
            entry,
            ("name", "format", "size", "checksum", "tensors", "archive", "archive_bytes", "archive_checksum"),
            what,
        )
        if entry["format"] not in ("safetensors", "hdf5", "npz"):
            raise CorruptArchiveError(f"{what}: weight file {entry['name']!r} has unknown format {entry['format']!r}")
        if entry["archive"] != archive_name(entry["name"]):
            raise CorruptArchiveError(f"{what}: weight file {entry['name']!r} has archive {entry['archive']!r}")
        for key in ("name", "archive"):
            _check_name(entry[key], seen, what)
    for entry in files:
        _check_entry(entry, ("name", "size", "checksum"), what)
        _check_name(entry["name"], seen, what)


def _check_entry(entry: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(entry, dict) or any(k not in entry for k in keys):
        raise CorruptArchiveError(f"{what}: an entry lacks one of {', '.join(keys)}")
    for key in keys:
        value = entry[key]
        if key in ("size", "archive_bytes", "tensors"):
            if type(value) is not int or value < 0:
                raise CorruptArchiveError(f"{what}: {key} of {entry.get('name')!r} is not a size")
        elif key in ("checksum", "archive_checksum"):
            if not isinstance(value, str) or not _CHECKSUM.fullmatch(value):
                raise CorruptArchiveError(f"{what}: {key} of {entry.get('name')!r} is not a checksum")
        elif not isinstance(value, str):
            raise CorruptArchiveError(f"{what}: {key} of an entry is not a string")


def check_names(names: list[Any], error: type[Exception], what: str) -> None:
    """The names a folder archive writes (its members and carried files) must each be a path that
    stays inside it, be unique, not be the index, and not be a folder of another: ``error`` otherwise."""
    seen: set[str] = {INDEX_NAME}
    for name in names:
        if not isinstance(name, str):
            raise error(f"{what}: a file name is not a string")
        try:
            _check_name(name, seen, what)
        except CorruptArchiveError as exc:
            raise error(str(exc)) from None
    for name in seen:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in seen:
                raise error(f"{what}: {'/'.join(parts[:depth])!r} is a file and a folder of {name!r}")


def _check_name(name: str, seen: set[str], what: str) -> None:
    """A relative ``/``-separated path that stays inside the folder, and not listed twice."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
        or re.match(r"^[A-Za-z]:", name)
    ):
        raise CorruptArchiveError(f"{what}: file name {name!r} does not stay inside the folder")
    if name in seen:
        raise CorruptArchiveError(f"{what}: file name {name!r} listed twice")
    seen.add(name)


def open_member(folder: Path, weight: dict[str, Any]) -> Archive:
    """One weight file's archive in a folder archive, checked against the index (its size, and the
    checksum of the file it was made from)."""
    path = folder / weight["archive"]
    if not path.is_file():
        raise CorruptArchiveError(f"{folder}: {weight['archive']} is missing")
    opened = Archive(path)
    source = opened.manifest["source"]
    listed = (weight["archive_bytes"], weight["checksum"], weight["format"])
    if (opened.size, source["checksum"], source["format"]) != listed:
        opened.close()
        raise CorruptArchiveError(f"{path}: not the archive the index lists (size, source checksum or format differ)")
    return opened
