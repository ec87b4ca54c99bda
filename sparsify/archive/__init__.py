"""The .sparsify archive: a safetensors container with a versioned JSON manifest (docs/FORMAT.md)."""

from sparsify.archive.reader import Archive
from sparsify.archive.version import FORMAT_NAME, FORMAT_VERSION
from sparsify.archive.writer import ArchiveWriter

__all__ = ["Archive", "ArchiveWriter", "FORMAT_NAME", "FORMAT_VERSION"]
