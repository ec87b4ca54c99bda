"""zstd: entropy coding of a part's bytes with the zstandard library, optionally as byte planes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import zstandard

from sparsify.coders.bytegroup import ungroup_bytes
from sparsify.coders.frames import compressor as _compressor
from sparsify.coders.frames import entropy_compressor  # noqa: F401 (the coders' tuned compressor, here too)
from sparsify.coders.paired import base_of
from sparsify.coders.planes import (
    PAIRED,
    PAIRED_MATCHING,
    RAW,
    FrameStream,
    assemble2,
    choose_methods,
    coded_size2,
    decode_planes,
    decompress_exact,
    encode_planes2,
    entropy_bits,
    has_paired,
    iter_planes,
    to_planes,
    verify_coded,
)
from sparsify.errors import CorruptArchiveError
from sparsify.methods.base import Coder
from sparsify.params import Param

PLAIN = "zstd"
GROUPED = "zstd+bytegroup"  # written by earlier versions; still decoded
PLANES = "zstd+planes"  # written by format 2.x; still decoded
PLANES2 = "zstd+planes2"  # format 3.0: a compact header, raw planes first
PLANES3 = "zstd+planes3"  # format 3.1: planes2 with paired planes (sparsify.coders.paired)
_VERSIONS = {PLANES: 1, PLANES2: 2, PLANES3: 3}

# Parts of up to SAMPLE_CHUNKS * SAMPLE_RUN elements are coded every way in full; larger ones are
# planned on a sample: SAMPLE_CHUNKS runs of SAMPLE_RUN elements spread evenly over the part.
SAMPLE_CHUNKS = 16
SAMPLE_RUN = 1024
# Bytes per piece when a plain frame is decoded as a stream.
STREAM_BLOCK = 4 << 20
# On the sample, zstd must beat raw by this factor for a plane to be compressed at all.
KEEP = 0.98


class Zstd(Coder):
    """Compresses each part with zstd at ``level`` (single-threaded, so output is deterministic).

    With ``bytegroup`` (default) a part of multi-byte elements is also coded as byte planes
    (:mod:`sparsify.coders.planes`): elements rotated left by one bit (floats: sign next to the low
    mantissa, exponent in a byte of its own) or not, then each plane raw or zstd-coded. Small parts are
    coded every way and the smallest kept; for large ones the choice (plain or planes, rotation, each
    plane's coding) is made on an evenly spread sample, then only the chosen coding is run on the part.
    Frames record their content size (not a checksum of their own: the part's covers them); decoding
    refuses a frame whose size is not the expected one before allocating anything bigger.
    """

    name = "zstd"
    summary = "zstd entropy coding of every part, as byte planes where that is smaller (raw where smallest)"
    params = (
        Param("level", int, "zstd compression level", default=3, low=1, high=22),
        Param(
            "bytegroup", bool, "also try the bytes grouped by plane (byte k of every element together)", default=True
        ),
    )
    example = "keep+zstd:level=9"
    verified = frozenset({PLANES2, PLANES3})
    pair_planes = True  # planes may be paired (zstd+planes3, format 3.1); False writes only what 3.0 reads

    def encode(self, data: np.ndarray, itemsize: int) -> list[tuple[str, bytes]]:
        level = self.config["level"]
        plain = _compressor(level)
        if not (self.config["bytegroup"] and itemsize > 1 and data.size and data.size % itemsize == 0):
            return [(PLAIN, _plain(data, itemsize, plain))]
        compressors = [_compressor(None), plain]
        whole = data.size <= SAMPLE_CHUNKS * SAMPLE_RUN * itemsize
        sample = data if whole else _sample(data, itemsize)
        rotate = False
        if itemsize in (2, 4, 8):  # rotate unless that makes the planes' order-0 entropy higher
            rotate = entropy_bits(to_planes(sample, itemsize, True)) <= entropy_bits(to_planes(sample, itemsize, False))
        planes = to_planes(sample, itemsize, rotate)
        if whole:  # the sample is the part: code it every way, keep the smallest
            _, coded = choose_methods(planes, compressors, paired=self.pair_planes)
            verify_coded(coded, planes)
            codec = PLANES3 if any(kind == PAIRED for kind, _ in coded) else PLANES2
            return [(PLAIN, _plain(data, itemsize, plain)), (codec, assemble2(rotate, coded))]
        # On a sample the level-L compressor looks better than it is (it lacks the history in which it
        # finds costly chance matches), so at the default level planes use the tuned compressor only.
        # Packing is planned only for planes of one or two values: more need a slow histogram of the part.
        # A paired plane keeps the sample's window (the part's other values are escaped).
        chosen = compressors if level > 3 else compressors[:1]
        methods, coded = choose_methods(planes, chosen, KEEP, max_palette=2, paired=self.pair_planes)
        if all(m == RAW for m in methods) or len(plain.compress(memoryview(sample))) < coded_size2(coded):
            return [(PLAIN, plain.compress(memoryview(data)))]
        windows = {j: base_of(coded[j][1]) for j, m in enumerate(methods) if m in (PAIRED, PAIRED_MATCHING)}
        part = encode_planes2(data, itemsize, rotate, methods, chosen, max_palette=2, pair_with=windows)
        return [(PLANES3 if windows and has_paired(part, data.size, itemsize) else PLANES2, part)]

    def decode_blocks(self, codec: str, data: memoryview, size: int, itemsize: int) -> Iterator[np.ndarray]:
        """:meth:`decode` streamed: planes and plain frames a block at a time (see
        :func:`sparsify.coders.planes.iter_planes`); the old byte-grouped variant whole."""
        if codec in _VERSIONS:
            yield from iter_planes(data, size, itemsize, version=_VERSIONS[codec])
        elif codec == PLAIN:
            stream = FrameStream(zstandard.ZstdDecompressor(), data, size)
            for start in range(0, size, STREAM_BLOCK):
                yield stream.read(min(STREAM_BLOCK, size - start))
            stream.close()
        else:
            yield np.frombuffer(self.decode(codec, data, size, itemsize), dtype=np.uint8)

    def decode(self, codec: str, data: memoryview, size: int, itemsize: int) -> bytes | bytearray | memoryview:
        if codec in _VERSIONS:
            return decode_planes(data, size, itemsize, version=_VERSIONS[codec])
        if codec not in (PLAIN, GROUPED):
            raise CorruptArchiveError(f"unknown zstd variant {codec!r}")
        if codec == GROUPED and (itemsize < 1 or size % itemsize):
            raise CorruptArchiveError(f"byte-grouped part of {size} bytes does not hold {itemsize}-byte elements")
        out = decompress_exact(zstandard.ZstdDecompressor(), data, size)
        if codec == GROUPED:
            return ungroup_bytes(np.frombuffer(out, dtype=np.uint8), itemsize).tobytes()
        return out


def _plain(data: np.ndarray, itemsize: int, leveled: zstandard.ZstdCompressor) -> bytes:
    """One zstd frame of ``data``: the smaller of the level-L compressor and the tuned one of
    :func:`entropy_compressor` -- which codes near-i.i.d. symbols such as quantised weights, indices
    and codebook indices close to their entropy where level 3 loses about half a bit per symbol to
    chance matches, and runs several times faster. Large parts are decided on a sample."""
    compressors = (_compressor(None), leveled)
    if data.size <= SAMPLE_CHUNKS * SAMPLE_RUN * itemsize or data.size < SAMPLE_CHUNKS * itemsize:
        return min((c.compress(memoryview(data)) for c in compressors), key=len)
    sample = memoryview(_sample(data, itemsize))
    best = min(compressors, key=lambda c: len(c.compress(sample)))
    return best.compress(memoryview(data))


def _sample(data: np.ndarray, itemsize: int) -> np.ndarray:
    """SAMPLE_CHUNKS runs of SAMPLE_RUN consecutive elements, evenly spread over ``data`` (1-D uint8)."""
    elements = data.reshape(-1, itemsize)
    n = elements.shape[0]
    run = min(SAMPLE_RUN, n // SAMPLE_CHUNKS)
    step = (n - run) // (SAMPLE_CHUNKS - 1)
    return np.concatenate([elements[i * step : i * step + run] for i in range(SAMPLE_CHUNKS)]).reshape(-1)
