"""The contract every weight-file format implements: a lazy reader and a streaming writer.

A reader lists the tensors of a file in file order and reads them one at a time. Besides the tensors it
gives a :class:`SourceMeta`: everything, apart from tensor data, that the writer of the same format
needs to rebuild the file exactly (byte-identical for safetensors and numpy-written npz, tree-identical
for HDF5), plus a JSON summary for people (metadata, groups, attributes, key order).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sparsify.errors import InputError


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a weight file.

    name:   the key that finds it in its file (safetensors key, npz key, HDF5 dataset path).
    dtype:  a sparsify dtype name (see :mod:`sparsify.dtypes`).
    shape:  its shape, () for a scalar.
    layout: which axis holds the output channels, for the matrix view: ``"first"`` (PyTorch-style
            ``(out, in, ...)``) or ``"last"`` (Keras kernels ``(..., in, out)``).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    layout: str = "first"

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class SourceMeta:
    """What a file holds besides tensor data.

    summary: JSON-able, for people and for ``inspect`` (safetensors ``__metadata__``, npz key order,
             HDF5 groups and attributes).
    rebuild: JSON-able, what the same-format writer needs (small).
    blobs:   named byte strings the same-format writer needs (original header, HDF5 skeleton...).
    """

    summary: dict[str, Any] = field(default_factory=dict)
    rebuild: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


class WeightReader(ABC):
    """Opens a weight file lazily; use as a context manager.

    The file's identity (size, modification time, inode, device) is noted when the reader is made,
    before the file is opened, so that :meth:`check_unchanged` can tell a file changed meanwhile.
    """

    format: ClassVar[str]

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp = _stamp(self.path)

    @property
    def stamp(self) -> tuple[int, int, int, int] | None:
        """``(size, mtime_ns, inode, device)`` of the file when the reader was made (None: no such file)."""
        return self._stamp

    def check_unchanged(self) -> None:
        """Raise InputError if the file is no longer the one opened (its size, mtime, inode or device differ).

        Each ``read`` calls it before returning data; call it once more after the last ``read`` so that a
        change during that read cannot go unnoticed. A change within the file system's timestamp
        granularity that keeps the size is beyond what this can see.
        """
        if _stamp(self.path) != self._stamp:
            raise InputError(f"{self.path}: changed while it was being read")

    @abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """The tensors in file order (the order the writer writes them back)."""

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """One tensor as a new array of ``dtypes.numpy_of(info.dtype)`` and ``info.shape``.

        Packed sub-byte types (``numpy_of`` is None) come as a 1-D uint8 array of the packed bytes.
        """

    @abstractmethod
    def source_meta(self) -> SourceMeta:
        """Everything but tensor data; see :class:`SourceMeta`."""

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> WeightReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """``(st_size, st_mtime_ns, st_ino, st_dev)`` of ``path``, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class WeightWriter(ABC):
    """Writes a weight file tensor by tensor, in the order given; use as a context manager.

    ``meta`` is the :class:`SourceMeta` of the file being rebuilt when it had this writer's format
    (``same_format=True``): the writer then reproduces it exactly. Otherwise (a conversion) ``meta``
    may be from another format and only its ``summary`` is a hint; the writer writes a plain file.
    """

    format: ClassVar[str]

    def __init__(self, path: Path, tensors: list[TensorInfo], meta: SourceMeta, same_format: bool) -> None:
        self.path = Path(path)
        self.infos = list(tensors)
        self.meta = meta
        self.same_format = same_format

    @abstractmethod
    def write(self, name: str, array: np.ndarray) -> None:
        """Write one tensor (dtype and shape as its TensorInfo; packed types as uint8 bytes)."""

    @abstractmethod
    def finish(self) -> None:
        """Complete the file (flush, close); called once after the last ``write``."""

    def abort(self) -> None:
        """Release resources after a failure; the caller deletes the partial file."""

    @property
    def rebuilds_bytes(self) -> bool:
        """True when the file written from bit-exact tensors is byte for byte the source file (so the
        source's checksum can check it); False where only its content is the same."""
        return False

    def __enter__(self) -> WeightWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
