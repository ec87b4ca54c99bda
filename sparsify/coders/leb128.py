"""LEB128 unsigned integers, as the byte-planes headers write lengths (docs/FORMAT.md §5.3)."""

from __future__ import annotations

from sparsify.errors import CorruptArchiveError


def encode(value: int) -> bytes:
    """``value`` (>= 0) in its shortest LEB128 form: 7 bits a byte, least significant first, the high
    bit set on all but the last byte."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode(data: memoryview, offset: int, what: str) -> tuple[int, int]:
    """(value, next offset) of the LEB128 integer at ``offset``; CorruptArchiveError naming ``what``
    if it runs past the data or past 63 bits."""
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 56:
            raise CorruptArchiveError(f"planes part: {what} runs past the header")
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if not byte & 0x80:
            return value, offset
