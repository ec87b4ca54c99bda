"""zstd: entropy coding of a part's bytes with the zstandard library, optionally byte-grouped."""

from __future__ import annotations

import numpy as np
import zstandard

from sparsify.coders.bytegroup import group_bytes, ungroup_bytes
from sparsify.errors import CorruptArchiveError
from sparsify.methods.base import Coder
from sparsify.params import Param

PLAIN = "zstd"
GROUPED = "zstd+bytegroup"


class Zstd(Coder):
    """Compresses each part with zstd at ``level`` (single-threaded, so output is deterministic).

    With ``bytegroup`` (default) a part of multi-byte elements is also tried byte-grouped (byte k of
    every element together, :mod:`sparsify.coders.bytegroup`) before compression; the smaller of the
    two, or the raw bytes, is stored. The frame records its content size and a checksum; decoding
    refuses a frame whose size is not the part's declared size before allocating anything bigger.
    """

    name = "zstd"
    summary = "zstd entropy coding of every part, byte-grouped where that is smaller (raw where smallest)"
    params = (
        Param("level", int, "zstd compression level", default=3, low=1, high=22),
        Param(
            "bytegroup", bool, "also try the bytes grouped by plane (byte k of every element together)", default=True
        ),
    )
    example = "keep+zstd:level=9"

    def encode(self, data: np.ndarray, itemsize: int) -> list[tuple[str, bytes]]:
        compressor = zstandard.ZstdCompressor(level=self.config["level"], write_checksum=True, write_content_size=True)
        candidates = [(PLAIN, compressor.compress(memoryview(data)))]
        if self.config["bytegroup"] and itemsize > 1 and data.size % itemsize == 0:
            candidates.append((GROUPED, compressor.compress(memoryview(group_bytes(data, itemsize)))))
        return candidates

    def decode(self, codec: str, data: memoryview, size: int, itemsize: int) -> bytes:
        if codec not in (PLAIN, GROUPED):
            raise CorruptArchiveError(f"unknown zstd variant {codec!r}")
        try:
            params = zstandard.get_frame_parameters(data)
            if params.content_size != size:
                raise CorruptArchiveError(f"zstd frame holds {params.content_size} bytes, the part needs {size}")
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise CorruptArchiveError(f"zstd part cannot be decoded: {exc}") from None
        if len(out) != size:
            raise CorruptArchiveError(f"zstd part decoded to {len(out)} bytes, expected {size}")
        if codec == GROUPED:
            if itemsize < 1 or size % itemsize:
                raise CorruptArchiveError(f"byte-grouped part of {size} bytes does not hold {itemsize}-byte elements")
            return ungroup_bytes(np.frombuffer(out, dtype=np.uint8), itemsize).tobytes()
        return out
