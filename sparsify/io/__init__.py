"""Weight-file formats: detection by content, one reader/writer module per format."""

from __future__ import annotations

from pathlib import Path

from sparsify.errors import InputError, UsageError
from sparsify.io.base import SourceMeta, TensorInfo, WeightReader, WeightWriter

FORMATS = ("safetensors", "hdf5", "npz")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")


def detect_format(path: Path) -> str:
    """The format of a weight file, told by its first bytes (not its extension).

    HDF5's signature may also sit at offset 512, 1024, ... (a user block); safetensors starts with a
    little-endian u64 header length followed by ``{``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if head.startswith(_ZIP_SIGNATURES):
                return "npz"
            if head.startswith(_HDF5_SIGNATURE):
                return "hdf5"
            if len(head) >= 9 and head[8:9] == b"{":
                return "safetensors"
            size = path.stat().st_size
            offset = 512
            while offset + 8 <= size:
                f.seek(offset)
                if f.read(8) == _HDF5_SIGNATURE:
                    return "hdf5"
                offset *= 2
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory, not a weight file") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    raise InputError(f"{path}: not a safetensors, HDF5 or npz file (unrecognised content)")


def reader_class(fmt: str) -> type[WeightReader]:
    if fmt == "safetensors":
        from sparsify.io.safetensors_file import SafetensorsReader

        return SafetensorsReader
    if fmt == "hdf5":
        from sparsify.io.hdf5_file import HDF5Reader

        return HDF5Reader
    if fmt == "npz":
        from sparsify.io.npz_file import NpzReader

        return NpzReader
    raise UsageError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def writer_class(fmt: str) -> type[WeightWriter]:
    if fmt == "safetensors":
        from sparsify.io.safetensors_file import SafetensorsWriter

        return SafetensorsWriter
    if fmt == "hdf5":
        from sparsify.io.hdf5_file import HDF5Writer

        return HDF5Writer
    if fmt == "npz":
        from sparsify.io.npz_file import NpzWriter

        return NpzWriter
    raise UsageError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def open_weights(path: Path) -> WeightReader:
    """A reader for ``path``, chosen by its content."""
    return reader_class(detect_format(path))(Path(path))


EXTENSIONS = {"safetensors": ".safetensors", "hdf5": ".h5", "npz": ".npz"}

__all__ = [
    "FORMATS",
    "EXTENSIONS",
    "SourceMeta",
    "TensorInfo",
    "WeightReader",
    "WeightWriter",
    "detect_format",
    "open_weights",
    "reader_class",
    "writer_class",
]
