"""What ``compress`` takes: a model, which is one weight file or a folder of them.

A folder (a Hugging Face checkpoint, a diffusers pipeline, a Keras export...) holds *weight files*
(``.safetensors``, ``.npz``, ``.h5``/``.hdf5``; sharded safetensors beside their
``*.safetensors.index.json``), which are compressed, and other files (config, tokenizer, README, the
shard index itself), which are carried byte for byte. Every file is named by its path relative to
the folder, with ``/`` separators, and the lists are sorted, so a model reads the same on every
machine. Symbolic links to files are followed (the Hugging Face cache links snapshots to blobs);
links to folders, ``.git`` and ``.cache`` (``huggingface-cli download --local-dir`` bookkeeping) are
not.

``DIR/NAME.safetensors.index.json`` is the folder with the shards that index lists as its weights;
every other file of the folder is carried.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sparsify.errors import InputError
from sparsify.io import detect_format

WEIGHT_SUFFIXES = (".safetensors", ".npz", ".h5", ".hdf5")
"""File names that mark a folder's weight files (their content must then be of that format)."""

SHARD_INDEX_SUFFIX = ".safetensors.index.json"
_SKIPPED_FOLDERS = (".git", ".cache")
MAX_INDEX_BYTES = 64 << 20


@dataclass(frozen=True)
class WeightFile:
    """A weight file of the model: ``path`` on disk, ``name`` relative to the model's folder."""

    path: Path
    name: str
    format: str


@dataclass(frozen=True)
class Model:
    """A model to compress.

    root:     the folder, or None when the model is one file.
    weights:  its weight files, sorted by name (one for a single file).
    carried:  the other files of the folder (relative names, sorted), carried byte for byte.
    index:    the name of the safetensors shard index the model was given by, if any.
    """

    source: Path
    root: Path | None
    weights: tuple[WeightFile, ...]
    carried: tuple[str, ...] = ()
    index: str | None = None

    @property
    def is_folder(self) -> bool:
        return self.root is not None

    def carried_path(self, name: str) -> Path:
        assert self.root is not None
        return self.root / name


def open_model(source: str | Path) -> Model:
    """The model at ``source``: a weight file, a folder, or a folder's ``*.safetensors.index.json``.

    InputError when it does not exist, holds no weight file, or its index names shards it lacks.
    """
    source = Path(source)
    if source.is_dir():
        names = _folder_files(source)
        weights = [n for n in names if n.lower().endswith(WEIGHT_SUFFIXES)]
        if not weights:
            raise InputError(
                f"{source}: a folder without weight files ({', '.join(WEIGHT_SUFFIXES)}); nothing to compress"
            )
        for index in (n for n in names if n.endswith(SHARD_INDEX_SUFFIX)):
            _check_index(source, index, set(names))
        return _model(source, source, weights, names, None)
    if source.name.endswith(SHARD_INDEX_SUFFIX):
        root = source.parent
        names = _folder_files(root)
        index = source.name
        if index not in names:
            raise InputError(f"{source}: no such file")
        shards = _check_index(root, index, set(names))
        return _model(source, root, sorted(shards), names, index)
    fmt = detect_format(source)
    return Model(source, None, (WeightFile(source, source.name, fmt),))


def _model(source: Path, root: Path, weights: list[str], names: list[str], index: str | None) -> Model:
    files = []
    for name in weights:
        path = root / name
        try:
            fmt = detect_format(path)
        except InputError as exc:
            raise InputError(f"{exc} (a weight file of the folder {root}, by its name)") from None
        files.append(WeightFile(path, name, fmt))
    chosen = set(weights)
    return Model(source, root, tuple(files), tuple(n for n in names if n not in chosen), index)


def _folder_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (links to files included), relative, ``/``-separated, sorted."""
    found = []
    try:
        for folder, subfolders, files in os.walk(root, onerror=_raise, followlinks=False):
            subfolders[:] = sorted(d for d in subfolders if d not in _SKIPPED_FOLDERS)
            relative = Path(folder).relative_to(root)
            for name in files:
                path = Path(folder) / name
                if path.is_file():  # follows a link; skips sockets, fifos and dangling links
                    found.append((relative / name).as_posix())
    except OSError as exc:
        raise InputError(f"{root}: cannot list: {exc.strerror or exc}") from None
    return sorted(found)


def _raise(exc: OSError) -> None:
    raise exc


def _check_index(root: Path, index: str, present: set[str]) -> list[str]:
    """The shard names a safetensors index lists (relative to the folder); InputError if it cannot be
    read or names a shard the folder lacks."""
    path = root / index
    try:
        if path.stat().st_size > MAX_INDEX_BYTES:
            raise InputError(f"{path}: larger than {MAX_INDEX_BYTES} bytes; not a shard index")
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not a valid shard index (JSON: {exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{path}: not a valid shard index (no 'weight_map' of tensor -> file)")
    base = Path(index).parent
    shards = []
    for shard in dict.fromkeys(weight_map.values()):
        name = (base / shard).as_posix()
        if name not in present:
            raise InputError(f"{path}: lists shard {shard!r}, which the folder does not have")
        shards.append(name)
    return shards
