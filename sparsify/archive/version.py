"""The archive format's name and version (docs/FORMAT.md).

A reader accepts every minor version of its major version, old and new (a newer minor only adds
optional fields), and refuses a newer major version.
"""

FORMAT_NAME = "sparsify"
FORMAT_VERSION = "1.0"
METADATA_KEY = "sparsify"
SOURCE_BLOB_PREFIX = "__sparsify__/source/"


def major(version: str) -> int:
    return int(version.split(".", 1)[0])
