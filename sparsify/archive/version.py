"""The archive format's name and version (docs/FORMAT.md).

A reader accepts every minor version of its major version, old and new, and refuses a newer major
version. A newer minor adds optional fields, methods, value coders or codecs: a reader that meets one
it does not know says so for that tensor (written by a newer sparsify), and reads everything else.

History: 1.0 -- first format. 2.0 -- the manifest zstd-compressed in an envelope (a 1.x reader could
not find it: hence a new major version); value coders (``values`` in stage records), the ``quant``
method, the ``csr-delta`` sparse layout, the ``zstd+planes`` codec, the manifest's ``plan``.
2.1 -- ``decoded_sha256`` in lossy tensors' records (what every decode must give, byte for byte); the
manifest validated by a schema (docs/manifest.schema.json); figures summed the same on every machine.
"""

FORMAT_NAME = "sparsify"
FORMAT_VERSION = "2.1"
METADATA_KEY = "sparsify"
MANIFEST_CODEC = "zstd+base64"  # how the manifest is packed in the metadata (format 2.0; 1.0: plain JSON)
MAX_MANIFEST_BYTES = 1 << 30  # a packed manifest may not claim to unpack to more than this
SOURCE_BLOB_PREFIX = "__sparsify__/source/"


def major(version: str) -> int:
    return int(version.split(".", 1)[0])
