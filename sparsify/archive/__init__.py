"""The .sparsify archive: a safetensors container with a versioned JSON manifest (docs/FORMAT.md).

``Archive`` (the reader) and ``ArchiveWriter`` load on first use: reading a manifest needs neither the
encoders nor the methods.
"""

from sparsify.archive.version import FORMAT_NAME, FORMAT_VERSION

__all__ = ["Archive", "ArchiveWriter", "FORMAT_NAME", "FORMAT_VERSION"]


def __getattr__(name: str):
    if name == "Archive":
        from sparsify.archive.reader import Archive

        return Archive
    if name == "ArchiveWriter":
        from sparsify.archive.writer import ArchiveWriter

        return ArchiveWriter
    raise AttributeError(f"module 'sparsify.archive' has no attribute {name!r}")
