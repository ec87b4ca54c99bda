"""Paired planes: a byte plane of few frequent values coded as nibble pairs (plane method 4, format 3.1).

A float tensor's exponent plane holds a dozen or two distinct bytes with a skewed distribution, and a
Huffman code (zstd's literals) spends a whole number of bits on each byte: 2-3 % above the plane's
entropy. Coded two bytes to a symbol, the same Huffman code loses about half as much per byte, and the
symbol's statistics include the pairs of neighbours (weights of one row share their scale). So each
byte ``v`` of the plane becomes an index ``v - base`` into a *window* of 15 consecutive values
``base ... base + 14`` (the window that holds most of the plane), index 15 standing for any other
byte ("escaped", stored aside in order); two indices make a byte (the first in the low nibble); the
bytes are one zstd frame.

Payload of a paired plane of ``n`` bytes (docs/FORMAT.md §5.3):

====================  ==========================================================================
``u8 base``           the window's first value, 0 to 240
``u8 c``              how the escaped bytes are stored: 0 raw, 1 one zstd frame
LEB128 ``e``          how many bytes are escaped
LEB128 ``L``          length of the frame of indices
``L`` bytes           one zstd frame of ``ceil(n / 2)`` bytes: byte ``i`` holds index ``2i`` in bits 0-3 and
                      index ``2i + 1`` in bits 4-7 (0 when ``n`` is odd and ``2i + 1 = n``)
the rest              the ``e`` escaped bytes in plane order: raw (``c = 0``) or one zstd frame (``c = 1``)
====================  ==========================================================================

Exactly ``e`` indices are 15. Both ways are a few element-wise passes over blocks of 16-bit words (no
table lookups, which numpy does slowly); the window depends only on the bytes it is chosen from, so
the coding is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import zstandard

from sparsify.coders import leb128
from sparsify.errors import CorruptArchiveError

PAIRED = 4
ESCAPE = 15
WINDOW = 15  # values an index names directly
MAX_BASE = 255 - WINDOW  # so that base + 15, the escape's stand-in while decoding, is a byte
RAW_ESCAPES, ZSTD_ESCAPES = 0, 1

# Plane bytes handled at a time (even): a block's temporaries stay in the CPU cache.
_BLOCK = 1 << 17

FrameReader = Callable[[memoryview, int], object]
"""``(frame, size)`` -> a reader of one zstd frame of ``size`` bytes with ``read(count)`` (uint8 arrays)
and ``close()``, such as :class:`sparsify.coders.planes.FrameStream`."""


def pair_base(plane: np.ndarray) -> tuple[int, int]:
    """The window for ``plane`` (1-D uint8, not empty) and how many of its bytes it holds: the first
    value of the 15 consecutive ones that hold the most (the smallest such value, at most 240)."""
    counts = np.bincount(plane, minlength=256).astype(np.int64)
    held = np.convolve(counts, np.ones(WINDOW, dtype=np.int64), mode="valid")[: MAX_BASE + 1]
    base = int(np.argmax(held))  # integer sums and the first maximum: the same everywhere
    return base, int(held[base])


def pair_indices(plane: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """(pair bytes, escaped bytes) of ``plane`` (1-D uint8) with the window at ``base``: the frame's
    content and the escapes of the layout above."""
    if not 0 <= base <= MAX_BASE:
        raise ValueError(f"a pair window starts at 0 to {MAX_BASE}, not {base}")
    n = plane.size
    pairs = np.empty(-(-n // 2), dtype=np.uint8)
    escaped = []
    for start in range(0, n, _BLOCK):
        block = plane[start : start + _BLOCK]
        indices = block - np.uint8(base)  # wraps below base: those are escaped too
        np.minimum(indices, ESCAPE, out=indices)
        if indices.size % 2:
            indices = np.append(indices, np.uint8(0))
        words = indices.view("<u2")  # index 2i in the low byte, 2i + 1 in the high one (both <= 15)
        folded = words >> 4
        folded |= words  # low byte: index 2i | index 2i + 1 << 4
        np.copyto(pairs[start // 2 : start // 2 + words.size], folded, casting="unsafe")  # keeps the low byte
        if indices.max() == ESCAPE:
            escaped.append(block[np.flatnonzero(indices[: block.size] == ESCAPE)])
    return pairs, np.concatenate(escaped) if escaped else np.empty(0, dtype=np.uint8)


def pair_plane(plane: np.ndarray, base: int, compressor: zstandard.ZstdCompressor) -> bytes:
    """The payload above for ``plane`` with the window at ``base`` (see :func:`pair_indices`)."""
    return pair_payload(*pair_indices(plane, base), base, compressor)


def pair_payload(pairs: np.ndarray, escaped: np.ndarray, base: int, compressor: zstandard.ZstdCompressor) -> bytes:
    """The payload above from :func:`pair_indices`' pair bytes and escaped bytes (frames made by ``compressor``)."""
    frame = compressor.compress(memoryview(pairs))
    rest, coding = escaped.tobytes(), RAW_ESCAPES
    if escaped.size > 64:
        coded = compressor.compress(memoryview(escaped))
        if len(coded) < escaped.size:
            rest, coding = coded, ZSTD_ESCAPES
    return b"".join((bytes((base, coding)), leb128.encode(escaped.size), leb128.encode(len(frame)), frame, rest))


def base_of(payload: bytes | memoryview) -> int:
    """The window a paired plane's payload was coded with (to code a whole part as its sample was)."""
    return payload[0]


class PairedStream:
    """A paired plane of ``n`` bytes decoded in pieces (``read``), checked as it goes: CorruptArchiveError
    on a malformed payload, a padding nibble that is not 0, or a wrong number of escapes."""

    def __init__(self, payload: memoryview, n: int, frame_reader: FrameReader) -> None:
        if len(payload) < 2:
            raise CorruptArchiveError("planes part: paired plane is too short")
        base, coding = payload[0], payload[1]
        if base > MAX_BASE:
            raise CorruptArchiveError(f"planes part: paired plane's window starts at {base}, past {MAX_BASE}")
        if coding not in (RAW_ESCAPES, ZSTD_ESCAPES):
            raise CorruptArchiveError(f"planes part: paired plane has unknown escape coding {coding}")
        escapes, offset = leb128.decode(payload, 2, "paired plane's escape count")
        length, offset = leb128.decode(payload, offset, "paired plane's frame length")
        rest = payload[offset + length :]
        if offset + length > len(payload) or (coding == RAW_ESCAPES and len(rest) != escapes):
            raise CorruptArchiveError("planes part: paired plane's lengths do not add up to its size")
        if escapes > n:
            raise CorruptArchiveError("planes part: paired plane escapes more bytes than it has")
        if coding == ZSTD_ESCAPES:
            stream = frame_reader(rest, escapes)
            try:
                self._escapes = stream.read(escapes)
            finally:
                stream.close()
        else:
            self._escapes = np.frombuffer(rest, dtype=np.uint8)
        self._frame = frame_reader(payload[offset : offset + length], -(-n // 2))
        self._base = base
        self._n = n
        self._done = 0  # plane bytes returned
        self._decoded = 0  # plane bytes decoded (one more than returned while a pair is split)
        self._used = 0  # escapes consumed
        self._carry = np.empty(0, dtype=np.uint8)  # the second byte of a pair split between reads
        self._scratch = np.empty(min(_BLOCK // 2, -(-n // 2)), dtype="<u2")

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` bytes of the plane."""
        if count > self._n - self._done:
            raise ValueError(f"reading {count} bytes of a paired plane with {self._n - self._done} left")
        out = np.empty(count + 1, dtype=np.uint8)  # one spare byte: the second of a split pair, or padding
        have = min(self._carry.size, count)
        out[:have] = self._carry[:have]
        self._carry = self._carry[have:]
        filled = have
        while filled < count:
            pairs = self._frame.read(min(_BLOCK // 2, -(-(count - filled) // 2)))
            self._decode(pairs, out[filled : filled + 2 * pairs.size])
            filled += 2 * pairs.size
        self._done += count
        if filled > count and self._done < self._n:
            self._carry = out[count : count + 1].copy()
        if self._done == self._n and self._used != self._escapes.size:
            raise CorruptArchiveError("planes part: paired plane stores escapes it does not use")
        return out[:count]

    def _decode(self, pairs: np.ndarray, out: np.ndarray) -> None:
        """The plane bytes of the next ``pairs`` into ``out`` (two a pair; an odd plane's padding
        last), checked."""
        final = self._decoded + out.size >= self._n
        if final and self._n % 2 and pairs[-1] >> 4:
            raise CorruptArchiveError("planes part: paired plane's padding nibble is not 0")
        words = out.view("<u2")
        np.copyto(words, pairs, casting="unsafe")
        shifted = np.left_shift(words, 4, out=self._scratch[: words.size])
        words |= shifted
        words &= 0x0F0F  # the two indices, one a byte (little-endian: the first in the low byte)
        words += np.uint16(self._base * 0x0101)  # no carry: index + base <= 255
        escape = np.uint8(self._base + ESCAPE)  # what an escaped index decodes to, and nothing else does
        found = np.count_nonzero(out == escape) if self._used < self._escapes.size or out.max() >= escape else 0
        if found:
            if self._used + found > self._escapes.size:
                raise CorruptArchiveError("planes part: paired plane has more escapes than it stores")
            out[np.flatnonzero(out == escape)] = self._escapes[self._used : self._used + found]
            self._used += found
        self._decoded += out.size

    def close(self) -> None:
        self._frame.close()


def unpair(payload: memoryview, n: int, frame_reader: FrameReader) -> np.ndarray:
    """The ``n`` bytes of a paired plane, whole."""
    stream = PairedStream(payload, n, frame_reader)
    try:
        return stream.read(n)
    finally:
        stream.close()
