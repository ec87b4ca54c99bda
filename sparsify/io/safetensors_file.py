"""safetensors weight files: every dtype of the format, read lazily, rebuilt byte for byte.

Reading goes through :mod:`sparsify.container` (strict validation, raw bytes viewed through ml_dtypes),
so BF16 and F8 tensors are never upcast. The rebuild keeps the original JSON header verbatim (key
order, padding and ``__metadata__`` included) and writes the tensors back at their offsets.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from sparsify import container, dtypes
from sparsify.errors import CorruptArchiveError, InputError, UsageError
from sparsify.io.base import SourceMeta, TensorInfo, WeightReader, WeightWriter


class SafetensorsReader(WeightReader):
    """A safetensors file opened lazily: the header is parsed at once, tensors read on demand."""

    format = "safetensors"

    def __init__(self, path) -> None:
        super().__init__(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        try:
            size = os.fstat(self._file.fileno()).st_size  # the size of what was opened, before trusting the header
            self._layout = container.read_layout(self._file, size, InputError, str(self.path))
        except (OSError, struct.error) as exc:  # struct.error: the file shrank below 8 bytes meanwhile
            self._file.close()
            raise InputError(f"{self.path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        except BaseException:
            self._file.close()
            raise

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(e.name, e.dtype, e.shape, "first") for e in self._layout.entries]

    def read(self, name: str) -> np.ndarray:
        """One tensor, read with plain reads (no memory map, so a file cut meanwhile cannot fault)."""
        entry = self._layout.entry(name)
        try:
            raw = container.read_bytes(self._file, self._layout, entry)
        except OSError as exc:
            self.check_unchanged()
            raise InputError(f"{self.path}: cannot read tensor {name!r}: {exc.strerror or exc}") from None
        self.check_unchanged()
        return container.as_array(raw, entry.dtype, entry.shape)

    def source_meta(self) -> SourceMeta:
        return SourceMeta(
            summary={"metadata": dict(self._layout.metadata)},
            rebuild={},
            blobs={"header": self._layout.header},
        )

    def close(self) -> None:
        self._file.close()


class SafetensorsWriter(WeightWriter):
    """Writes a safetensors file tensor by tensor.

    Rebuilding a safetensors source reuses its header bytes verbatim, so the file comes back
    byte-identical when the tensors do. Converting another format writes a fresh header (tensors in the
    given order, the source's ``__metadata__`` only if it came from safetensors) and refuses tensors
    whose element type safetensors cannot name (complex128, strings, big-endian...).
    """

    format = "safetensors"

    def __init__(self, path, tensors, meta, same_format) -> None:
        super().__init__(path, tensors, meta, same_format)
        if same_format:
            header = meta.blobs["header"]
            _, self._entries = container.parse_header(header, CorruptArchiveError, "archive's source header")
            carried = [(e.name, e.dtype, list(e.shape)) for e in self._entries]
            listed = [(i.name, i.dtype, list(i.shape)) for i in self.infos]
            if carried != listed:
                got, want = next(
                    ((a, b) for a, b in zip(listed, carried, strict=False) if a != b), (len(listed), len(carried))
                )
                raise CorruptArchiveError(
                    f"the archive's tensors differ from the source header it carries: {got} where the header has {want}"
                )
        else:
            header = self._fresh_header()
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(header)))
        self._file.write(header)
        self._next = 0

    def _fresh_header(self) -> bytes:
        entries, position = [], 0
        for info in self.infos:
            if info.dtype not in dtypes.SAFETENSORS_TYPES:
                raise UsageError(
                    f"cannot write tensor {info.name!r} to safetensors: element type {info.dtype} has no "
                    "safetensors name; choose --format npz or hdf5"
                )
            size = dtypes.nbytes_of(info.dtype, info.shape)
            entries.append(container.Entry(info.name, info.dtype, info.shape, position, position + size))
            position += size
        self._entries = entries
        return container.encode_header(entries, self.meta.summary.get("metadata") or None)

    def write(self, name: str, array: np.ndarray) -> None:
        entry = self._entries[self._next]
        if entry.name != name:
            raise ValueError(f"expected tensor {entry.name!r} next, got {name!r}")
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if data.size != entry.nbytes:
            raise ValueError(f"tensor {name!r}: {data.size} bytes, header says {entry.nbytes}")
        self._file.write(data)
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self._entries):
            self._file.close()
            raise ValueError(f"only {self._next} of {len(self._entries)} tensors were written")
        self._file.flush()
        self._file.close()

    def abort(self) -> None:
        self._file.close()

    @property
    def rebuilds_bytes(self) -> bool:
        return self.same_format  # the source's header verbatim, then the tensors
