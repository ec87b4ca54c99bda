"""Read tensors out of an archive one at a time, like safetensors' ``safe_open``.

>>> import sparsify
>>> with sparsify.open("model.sparsify") as f:  # doctest: +SKIP
...     weight = f.get_tensor("fc1.weight")  # decodes this tensor only
>>> tensors = sparsify.load("model.sparsify")  # doctest: +SKIP

``open`` takes an archive or a folder archive. Opening reads the manifest (of a folder archive: the
index; each member archive's manifest only once a tensor or name of it is needed). ``get_tensor``
reads only that tensor's stored parts, checks every part's SHA-256 and the decoded tensor against the
checksum its record gives, and returns it in its original dtype and shape.

Memory: one tensor at a time -- its stored parts and its decoding, nothing else is cached (each call
decodes again). The peak of a ``get_tensor`` call is about twice the tensor's bytes for a lossless
tensor; a lossy one is rebuilt in float64, about 17-26 bytes per element at the peak (svd, threshold,
int4 quant of a float32 matrix, measured), whatever its own dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparsify import dtypes
from sparsify.archive import Archive
from sparsify.archive.folder import open_member, read_index
from sparsify.errors import UsageError

__all__ = ["open", "load", "LazyArchive"]

FRAMEWORKS = ("np", "pt")

# ml_dtypes types, which torch.from_numpy refuses: viewed as a signed int of the same width, then as
# torch's type of that name
_TORCH_VIEWS = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}


class LazyArchive:
    """An open archive or folder archive whose tensors decode on request; a context manager.

    Tensor names are listed in file order (a folder archive: shard by shard, in the index's order). A
    folder archive's index does not name the tensors, so its member archives are opened (manifest
    only, each once, kept open until ``close``) in the index's order until one holds the name asked
    for: ``get_tensor`` of a tensor in shard k reads the manifests of shards 1..k; ``keys()`` reads
    them all. A name in two shards is listed once, and ``get_tensor`` returns the first shard's.
    """

    def __init__(self, path: str | Path, framework: str = "np") -> None:
        self._convert = _converter(framework)
        self.path = Path(path)
        if self.path.is_dir():
            self._weights: list[dict[str, Any] | None] = read_index(self.path)["weights"]
            self._members: list[Archive | None] = [None] * len(self._weights)
        else:
            self._weights, self._members = [None], [Archive(self.path)]
        self._where: dict[str, tuple[Archive, dict[str, Any]]] = {}  # the names of the members scanned
        self._scanned = 0
        self._closed = False

    # -- names ----------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every tensor's name, in file order (shard order, then file order)."""
        self._scan(None)
        return list(self._where)

    def metadata(self) -> dict[str, str] | None:
        """The source file's safetensors ``__metadata__``, or None where it had none (or was HDF5 or
        npz). A folder archive: that of the first weight file (in the index's order) that has one."""
        for position in range(len(self._members)):
            found = self._member(position).manifest["source"]["summary"].get("metadata")
            if found:
                return dict(found)
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    # -- tensors --------------------------------------------------------------------------------

    def get_tensor(self, name: str) -> Any:
        """The tensor ``name``, decoded and checked (CorruptArchiveError if its bytes are damaged):
        a numpy array (``framework="np"``; packed sub-byte dtypes F4/F6 as their uint8 bytes) or a
        torch tensor (``"pt"``), of the original dtype and shape. KeyError if there is none."""
        found = self._find(name)
        if found is None:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        archive, record = found
        return self._convert(archive.decode(record), record["dtype"], name)

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every archive file opened; the object is unusable afterwards."""
        self._closed = True
        for member in self._members:
            if member is not None:
                member.close()
        self._where.clear()

    def __enter__(self) -> LazyArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- members, opened in the index's order as names are needed -------------------------------

    def _member(self, position: int) -> Archive:
        if self._closed:
            raise ValueError(f"{self.path}: the archive is closed")
        member = self._members[position]
        if member is None:
            member = self._members[position] = open_member(self.path, self._weights[position])
        return member

    def _scan(self, name: str | None) -> None:
        """Open members in order until one holds ``name`` (None: all of them)."""
        if self._closed:
            raise ValueError(f"{self.path}: the archive is closed")
        while (name is None or name not in self._where) and self._scanned < len(self._members):
            member = self._member(self._scanned)
            for record in member.tensors:
                self._where.setdefault(record["name"], (member, record))
            self._scanned += 1

    def _find(self, name: str) -> tuple[Archive, dict[str, Any]] | None:
        self._scan(name)
        return self._where.get(name)


def open(path: str | Path, framework: str = "np") -> LazyArchive:
    """Open an archive (``model.sparsify``) or a folder archive (``DIR.sparsify/``) to read its
    tensors one at a time: ``keys()``, ``metadata()``, ``get_tensor(name)``; use it in a ``with``
    block or ``close()`` it. ``framework``: ``"np"`` (numpy arrays) or ``"pt"`` (torch tensors, where
    torch is installed). InputError if ``path`` is not an archive, CorruptArchiveError if damaged."""
    return LazyArchive(path, framework)


def load(path: str | Path, framework: str = "np") -> dict[str, Any]:
    """Every tensor of an archive or folder archive, name -> array (or torch tensor), in file order.
    Memory: all the decoded tensors, plus one tensor's decoding at a time."""
    with LazyArchive(path, framework) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _converter(framework: str) -> Callable[[np.ndarray, str, str], Any]:
    if framework == "np":
        return lambda array, dtype, name: array
    if framework != "pt":
        raise UsageError(f"unknown framework {framework!r}; valid: {', '.join(map(repr, FRAMEWORKS))}")
    try:
        import torch
    except ImportError:
        raise UsageError("framework='pt' needs torch (pip install torch); framework='np' gives numpy arrays") from None
    return lambda array, dtype, name: _as_torch(torch, array, dtype, name)


def _as_torch(torch, array: np.ndarray, dtype: str, name: str):
    """A decoded numpy array as a torch tensor of the same type (no copy where the array allows)."""
    if dtypes.numpy_of(dtype) is None:
        raise UsageError(f"tensor {name!r} is {dtype}, packed sub-byte values torch cannot hold; use framework='np'")
    view = _TORCH_VIEWS.get(dtype)
    if view is not None:
        target = getattr(torch, view, None)
        if target is None:
            raise UsageError(f"tensor {name!r} is {dtype}, and this torch has no torch.{view}")
        signed = np.dtype(f"i{array.dtype.itemsize}")
        return torch.from_numpy(_for_torch(array.view(signed))).view(target)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(_for_torch(array))
    except TypeError:
        raise UsageError(f"tensor {name!r} is {dtype}, which torch has no type for; use framework='np'") from None


def _for_torch(array: np.ndarray) -> np.ndarray:
    # torch shares the array's memory and warns on read-only buffers (a decoded part may be one)
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()
