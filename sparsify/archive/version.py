"""The archive format's name and version (docs/FORMAT.md).

A reader accepts every minor version of its major version, old and new, and refuses a newer major
version. A newer minor adds optional fields, methods, value coders or codecs: a reader that meets one
it does not know says so for that tensor (written by a newer sparsify), and reads everything else.

History: 1.0 -- first format. 2.0 -- the manifest zstd-compressed in an envelope (a 1.x reader could
not find it: hence a new major version); value coders (``values`` in stage records), the ``quant``
method, the ``csr-delta`` sparse layout, the ``zstd+planes`` codec, the manifest's ``plan``.
2.1 -- ``decoded_sha256`` in lossy tensors' records (what every decode must give, byte for byte); the
manifest validated by a schema (docs/manifest.schema.json); figures summed the same on every machine.
3.0 -- XXH3-64 checksums as self-describing strings (``"checksum": "xxh3:..."``; 2.x's ``sha256`` fields
are read as ``"sha256:..."`` checksums); the manifest compressed with a dictionary (``zstd+dict+base64``);
small text source blobs in the manifest (``source.inline``); the ``zstd+planes2`` codec; zstd frames
without their own checksum. A 2.x reader cannot check 3.0's checksums: hence a new major version.
3.1 -- the ``zstd+planes3`` codec (byte planes that may be paired, sparsify.coders.paired); a 3.0
reader refuses the tensors that use it and reads the others.
3.2 -- ``quant``'s ``weighted`` parameter (steps per row and column set by an importance file, parts
``row_shift`` and ``column_shift``, the codes stored in shift order and zigzag-coded); a 3.1 reader
refuses the tensors that use it (an unknown parameter) and reads the others.
3.3 -- ``quant``'s ``feedback`` parameter (codes chosen with error feedback by the input moments of an
importance file, GPTQ; the parts and their decoding are 3.2's uniform or weighted quantiser's); a 3.2
reader refuses the tensors that use it (an unknown parameter) and reads the others.
"""

FORMAT_NAME = "sparsify"
FORMAT_VERSION = "3.3"
METADATA_KEY = "sparsify"
MANIFEST_CODEC = "zstd+dict+base64"  # how the manifest is packed (3.0: with archive/manifest-3.0.dict)
# The zstd level of the manifest's frame: as small as 19 (within 0.6 %) at half its time. Manifests of
# more than MANIFEST_LARGE_TEXT bytes of JSON (models of a hundred tensors and more) take
# MANIFEST_LARGE_LEVEL instead: 13 % bigger frames at a tenth of the time (132 KB of JSON: 14 ms at 15,
# 1.5 ms at 9), a few KB on a file of tens of MB.
MANIFEST_LEVEL = 15
MANIFEST_LARGE_LEVEL = 9
MANIFEST_LARGE_TEXT = 1 << 16
MANIFEST_CODECS = ("zstd+base64", MANIFEST_CODEC)  # every packing a reader knows (2.x; 1.0: plain JSON)
MAX_MANIFEST_BYTES = 1 << 30  # a packed manifest may not claim to unpack to more than this
SOURCE_BLOB_PREFIX = "__sparsify__/source/"


def major(version: str) -> int:
    return int(version.split(".", 1)[0])
