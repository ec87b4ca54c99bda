"""zstd: entropy coding of a part's bytes with the zstandard library."""

from __future__ import annotations

import zstandard

from sparsify.errors import CorruptArchiveError
from sparsify.methods.base import Coder
from sparsify.params import Param


class Zstd(Coder):
    """Compresses each part with zstd at ``level`` (single-threaded, so output is deterministic).

    The frame records its content size and a checksum; decoding refuses a frame whose size is not
    the part's declared size before allocating anything bigger.
    """

    name = "zstd"
    summary = "zstd entropy coding of every part (kept raw where that is smaller)"
    params = (Param("level", int, "zstd compression level", default=3, low=1, high=22),)
    example = "keep+zstd:level=9"

    def encode(self, data: memoryview) -> bytes:
        compressor = zstandard.ZstdCompressor(level=self.config["level"], write_checksum=True, write_content_size=True)
        return compressor.compress(data)

    def decode(self, data: memoryview, size: int) -> bytes:
        try:
            params = zstandard.get_frame_parameters(data)
            if params.content_size != size:
                raise CorruptArchiveError(f"zstd frame holds {params.content_size} bytes, the part needs {size}")
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise CorruptArchiveError(f"zstd part cannot be decoded: {exc}") from None
        if len(out) != size:
            raise CorruptArchiveError(f"zstd part decoded to {len(out)} bytes, expected {size}")
        return out
