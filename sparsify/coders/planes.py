"""Byte planes: a part of ``k``-byte elements stored as ``k`` separately coded planes.

The elements are optionally *rotated* first: each one, read as a little-endian ``8k``-bit word, is
rotated left by one bit, so that for IEEE floats (bf16, fp32, fp64) the top byte holds the pure
exponent and the sign moves to the bottom byte next to the low mantissa bits. The (rotated) elements
are then byte-grouped (plane ``j`` holds byte ``j`` of every element) and each plane is stored either
raw, as one zstd frame, or - when it holds at most 16 distinct byte values - as a palette and
bit-packed indices (raw or in a zstd frame), whichever the encoder found smallest. Slowly varying
planes (exponents, the high bytes of small integers) compress well; the low mantissa planes are close
to random and are stored as they are, without spending zstd time on them; a plane of a few values
(a sign bit beside always-zero mantissa bits) packs to 1, 2 or 4 bits a byte.

Coded layout (all integers little-endian), documented in docs/FORMAT.md §5:

====================  ==========================================================================
``u8 flags``          bit 0: elements were rotated left by one bit; the other bits are 0
``u8 k``              number of planes, equal to the element size
``k x (u8, u64)``     per plane: method and its stored length in bytes
payloads              the ``k`` planes' stored bytes, in plane order, back to back
====================  ==========================================================================

Methods: 0 raw (``n`` bytes); 1 one zstd frame of the plane; 2 packed: ``u8 b`` (1, 2 or 4),
``u8 d`` (palette size, ``1 <= d <= 2**b``), ``d`` palette bytes, then the ``ceil(n * b / 8)`` bytes
of indices into the palette, ``8 / b`` per byte, element ``i`` in bits ``b * (i % (8 / b))`` and up
(least significant first), unused bits 0; 3 like 2 but the index bytes are one zstd frame.

Every decoded plane holds ``n = size / k`` bytes. Everything is vectorised numpy and deterministic.

Version 2 (``zstd+planes2``, format 3.0, :func:`encode_planes2`) has the same planes and methods and
a compact header that orders the payloads freely:

====================  ==========================================================================
``u8 flags``          as above
``u8 k``              as above
``k x (u8, u8, var)`` per payload: its plane ``j``, its method, its stored length (LEB128)
payloads              back to back, in the order of the entries (every plane exactly once)
====================  ==========================================================================

For a part it plans on a sample (a large one) the writer puts the raw planes first, so that they are
written into the part as they are split from the elements (one pass, no copy); small parts keep plane
order. It leaves the zstd frames without their own checksum (the part's
checksum covers them).

>>> coded = encode_planes(np.arange(8, dtype=np.uint8), 2, rotate=False, methods=[RAW, RAW])
>>> bytes(coded[:2]), decode_planes(memoryview(coded), 8, 2) == bytes(range(8))
(b'\\x00\\x02', True)
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

import numpy as np
import zstandard

from sparsify.coders import frames, leb128
from sparsify.coders.paired import PAIRED, PairedStream, pair_base, pair_indices, pair_payload, pair_plane, unpair
from sparsify.errors import CorruptArchiveError
from sparsify.reproducible import log2

RAW = 0
ZSTD = 1
PACKED = 2
PACKED_ZSTD = 3
# Plane methods an encoder chooses (not stored): RAW, PACKED, PAIRED, PAIRED_MATCHING (paired, its
# index frame made with zstd level 1, whose matches pay on some planes: neighbouring pairs repeat), or
# COMPRESSOR + i for ``compressors[i]``.
COMPRESSOR = 16
PAIRED_MATCHING = 32
_MATCHING_LEVEL = 1
ROTATED = 1  # flags bit 0
MAX_PALETTE = 16

_ENTRY = struct.Struct("<BQ")
_WORDS = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}  # little-endian words, as stored


def header_size(k: int) -> int:
    """Bytes of the plane header for ``k`` planes."""
    return 2 + _ENTRY.size * k


def rotate_left(data: np.ndarray, itemsize: int) -> np.ndarray:
    """``data`` (1-D uint8, ``itemsize`` in 2, 4, 8) with every element rotated left by one bit."""
    words = data.view(_WORDS[itemsize])
    rotated = words << 1
    rotated |= words >> (8 * itemsize - 1)
    return rotated.view(np.uint8)


def entropy_bits(planes: np.ndarray) -> float:
    """Sum over the ``(k, m)`` planes of each plane's order-0 entropy in bits per byte:
    ``(m log2 m - sum_v c_v log2 c_v) / m`` over the plane's byte counts ``c_v``, the terms looked up in
    a table (fast for the many small parts) of values that do not depend on the CPU."""
    k, m = planes.shape
    if m == 0:
        return 0.0
    table = _count_log2_count(m)
    total = 0.0
    for plane in planes:
        total += float(np.add.reduce(table[np.bincount(plane, minlength=256)]))
    return (k * float(table[m]) - total) / m


_COUNT_LOG2: list[np.ndarray] = [np.zeros(1)]


def _count_log2_count(limit: int) -> np.ndarray:
    """``c log2 c`` for the counts ``c = 0 .. limit`` (0 for 0), with :func:`sparsify.reproducible.log2`
    (not np.log2: the choices made with it must not depend on the CPU); grown as needed, kept."""
    table = _COUNT_LOG2[0]
    if table.size <= limit:
        counts = np.arange(1, max(limit + 1, 2 * table.size), dtype=np.float64)
        table = np.concatenate(([0.0], counts * log2(counts)))
        _COUNT_LOG2[0] = table
    return table


# Elements per block of the blocked rotations and transposes: a block's planes stay in the CPU cache,
# which makes them several times faster than whole-array numpy passes.
_BLOCK = 1 << 16


def to_planes(data: np.ndarray, itemsize: int, rotate: bool) -> np.ndarray:
    """The ``(k, n)`` byte planes of ``data`` (1-D uint8 of ``n`` elements), rotated first if asked.

    Rotation and transpose run block by block, so the temporaries stay in the CPU cache."""
    n = data.size // itemsize
    planes = np.empty((itemsize, n), dtype=np.uint8)
    for start in range(0, n, _BLOCK):
        block = data[start * itemsize : (start + _BLOCK) * itemsize]
        if rotate:
            block = rotate_left(block, itemsize)
        planes[:, start : start + _BLOCK] = block.reshape(-1, itemsize).T
    return planes


def plane_of(data: np.ndarray, itemsize: int, rotate: bool, j: int) -> np.ndarray:
    """Plane ``j`` of :func:`to_planes` alone (``n`` bytes), block by block: coding one plane at a
    time holds one plane, not all ``k``."""
    n = data.size // itemsize
    plane = np.empty(n, dtype=np.uint8)
    grid = data.reshape(-1, itemsize)
    for start in range(0, n, _BLOCK):
        if rotate:
            block = rotate_left(data[start * itemsize : (start + _BLOCK) * itemsize], itemsize)
            plane[start : start + _BLOCK] = block.reshape(-1, itemsize)[:, j]
        else:
            plane[start : start + _BLOCK] = grid[start : start + _BLOCK, j]
    return plane


def encode_planes(
    data: np.ndarray,
    itemsize: int,
    rotate: bool,
    methods: Sequence[int],
    compressors: Sequence[zstandard.ZstdCompressor] = (),
    max_palette: int = MAX_PALETTE,
) -> memoryview:
    """``data`` coded as version 1 planes (what format 2.x wrote; sparsify now writes
    :func:`encode_planes2`, and keeps this to make version 1 parts for the reader's tests);
    ``methods[j]`` is ``RAW``, ``PACKED`` or ``COMPRESSOR + i`` for ``compressors[i]``, for plane j.

    A plane whose coding is not smaller than the plane itself is stored raw instead; a plane that was
    to be packed but holds more values than the sample did is compressed with ``compressors[0]``.
    Planes are made and coded one at a time: memory holds the coded planes and one raw plane.
    """
    coded = [
        code_plane(plane_of(data, itemsize, rotate, j), method, compressors, max_palette)
        for j, method in enumerate(methods)
    ]
    return assemble(rotate, coded)


def assemble(rotate: bool, coded: list[tuple[int, bytes | memoryview] | None]) -> memoryview:
    """The planes header and payloads for ``coded`` = per plane (kind, stored bytes).

    ``coded`` is emptied as it is copied, so each plane's bytes are freed once they are in place
    (the output's pages are touched only as they are written)."""
    head = bytes((ROTATED if rotate else 0, len(coded)))
    entries = b"".join(_ENTRY.pack(kind, len(stored)) for kind, stored in coded)
    out = np.empty(len(head) + len(entries) + sum(len(stored) for _, stored in coded), dtype=np.uint8)
    out[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    position = len(head) + len(entries)
    out[len(head) : position] = np.frombuffer(entries, dtype=np.uint8)
    for j in range(len(coded)):
        stored = np.frombuffer(coded[j][1], dtype=np.uint8)
        coded[j] = None
        out[position : position + stored.size] = stored
        position += stored.size
        del stored
    return out.data


def code_plane(
    plane: np.ndarray,
    method: int,
    compressors: Sequence[zstandard.ZstdCompressor],
    max_palette: int = MAX_PALETTE,
    pair_with: int | None = None,
) -> tuple[int, bytes | memoryview]:
    """(kind, stored bytes) of one plane coded by ``method`` (see :func:`encode_planes`; ``PAIRED``:
    :mod:`sparsify.coders.paired` with the window at ``pair_with``, by default the plane's own;
    ``PAIRED_MATCHING``: the same with its frames made at zstd level 1), or raw if not smaller."""
    if method in (PAIRED, PAIRED_MATCHING):
        base, held = (pair_with, plane.size) if pair_with is not None else pair_base(plane) if plane.size else (0, 0)
        if 2 * held > plane.size:  # else the escapes alone would take half the plane
            coder = compressors[0] if method == PAIRED else frames.compressor(_MATCHING_LEVEL)
            coded = pair_plane(plane, base, coder)
            if len(coded) < plane.size:
                return PAIRED, coded
        return RAW, memoryview(plane)
    if method == PACKED:
        packed = pack(plane, max_palette)
        if packed is not None:
            return _packed_coding(plane, packed, compressors)
        method = COMPRESSOR
    if method != RAW:
        coded = compressors[method - COMPRESSOR].compress(memoryview(plane))
        if len(coded) < plane.size:
            return ZSTD, coded
    return RAW, memoryview(plane)


def _packed_coding(
    plane: np.ndarray, packed: tuple[bytes, np.ndarray], compressors: Sequence[zstandard.ZstdCompressor]
) -> tuple[int, bytes | memoryview]:
    """(kind, stored bytes) of a plane from its :func:`pack` result: the index bytes raw or in a
    zstd frame, whichever is smaller, or the plane raw if packing does not make it smaller."""
    head, indices = packed
    kind, stored = PACKED, indices
    if indices.size > 64:
        coded = compressors[0].compress(memoryview(indices))
        if len(coded) < indices.size:
            kind, stored = PACKED_ZSTD, coded
    if len(head) + len(stored) < plane.size:
        return kind, head + bytes(stored)
    return RAW, memoryview(plane)


# Bytes of a plane compared (or bit-packed) at a time: a multiple of 8, so that packing block by
# block gives the bytes of packing the whole plane, and no temporary is the size of the plane.
_PACK_BLOCK = 1 << 22


def _other_value(plane: np.ndarray, first) -> np.uint8 | None:
    """The first byte of ``plane`` that is not ``first`` (None: there is none)."""
    for i in range(0, plane.size, _PACK_BLOCK):
        differs = np.flatnonzero(plane[i : i + _PACK_BLOCK] != first)
        if differs.size:
            return plane[i + differs[0]]
    return None


def _only(plane: np.ndarray, first, second) -> bool:
    """Whether every byte of ``plane`` is ``first`` or ``second``."""
    for i in range(0, plane.size, _PACK_BLOCK):
        block = plane[i : i + _PACK_BLOCK]
        if not np.all((block == first) | (block == second)):
            return False
    return True


# Planes up to this many bytes have their values counted at once (a histogram is cheaper than the
# comparisons there); larger ones are compared, and counted only where more than two values may pack.
_COUNT_MAX = 1 << 16


def palette_of(plane: np.ndarray, max_palette: int = MAX_PALETTE) -> np.ndarray | None:
    """The distinct bytes of a non-empty ``plane``, ascending, or None if there are more than ``max_palette``.

    One or two values of a large plane take two fast comparisons; more take a histogram (slower:
    small planes, or ``max_palette`` above 2)."""
    if plane.size > _COUNT_MAX:
        first = plane[0]
        second = _other_value(plane, first)
        if second is None:
            return np.array([first], dtype=np.uint8)
        if _only(plane, first, second):
            return np.array(sorted((first, second)), dtype=np.uint8)
        if max_palette <= 2:
            return None
    palette = np.flatnonzero(np.bincount(plane, minlength=256)).astype(np.uint8)
    return palette if palette.size <= max_palette else None


def pack(plane: np.ndarray, max_palette: int = MAX_PALETTE) -> tuple[bytes, np.ndarray] | None:
    """(b, d, palette header; packed index bytes) of ``plane`` if it has at most ``max_palette`` values."""
    if plane.size == 0:
        return None
    palette = palette_of(plane, max_palette)
    if palette is None:
        return None
    if palette.size == 2:
        bits = [
            np.packbits(plane[i : i + _PACK_BLOCK] == palette[1], bitorder="little")
            for i in range(0, plane.size, _PACK_BLOCK)
        ]
        return bytes((1, 2)) + palette.tobytes(), np.concatenate(bits)
    if palette.size == 1:
        indices = np.zeros(plane.size, dtype=np.uint8)
    else:
        lut = np.zeros(256, dtype=np.uint8)
        lut[palette] = np.arange(palette.size, dtype=np.uint8)
        indices = lut[plane]
    b = 1 if palette.size <= 2 else 2 if palette.size <= 4 else 4
    per = 8 // b
    padded = np.zeros(-(-plane.size // per) * per, dtype=np.uint8)
    padded[: plane.size] = indices
    grouped = padded.reshape(-1, per)
    out = grouped[:, 0].copy()
    for i in range(1, per):
        out |= grouped[:, i] << (b * i)
    return bytes((b, palette.size)) + palette.tobytes(), out


def unpack(payload: memoryview, kind: int, n: int, decompressor: zstandard.ZstdDecompressor) -> np.ndarray:
    """The ``n`` bytes of a packed plane (method 2 or 3); CorruptArchiveError if malformed."""
    if len(payload) < 2:
        raise CorruptArchiveError("planes part: packed plane is too short")
    b, d = payload[0], payload[1]
    if b not in (1, 2, 4) or not 1 <= d <= 1 << b or len(payload) < 2 + d:
        raise CorruptArchiveError(f"planes part: bad packed plane header (bits {b}, palette {d})")
    palette = np.frombuffer(payload[2 : 2 + d], dtype=np.uint8)
    per = 8 // b
    m = -(-n // per)
    body = payload[2 + d :]
    if kind == PACKED_ZSTD:
        body = memoryview(decompress_exact(decompressor, body, m))
    elif len(body) != m:
        raise CorruptArchiveError(f"planes part: packed plane has {len(body)} index bytes, expected {m}")
    packed = np.frombuffer(body, dtype=np.uint8)
    if b == 1:
        indices = np.unpackbits(packed, count=n, bitorder="little")
    else:
        mask = (1 << b) - 1
        indices = ((packed[:, None] >> (b * np.arange(per, dtype=np.uint8))) & mask).reshape(-1)[:n]
    if n and int(indices.max()) >= d:
        raise CorruptArchiveError("planes part: packed index outside the palette")
    if b == 1:  # palette[0] + index * (palette[1] - palette[0]), modulo 256
        indices *= np.uint8(palette[-1] - palette[0])
        indices += palette[0]
        return indices
    return palette[indices]


def choose_methods(
    planes: np.ndarray,
    compressors: Sequence[zstandard.ZstdCompressor],
    keep: float = 1.0,
    max_palette: int = MAX_PALETTE,
    paired: bool = False,
) -> tuple[list[int], list[tuple[int, bytes | memoryview]]]:
    """Per plane of these ``(k, m)`` planes the best method (raw, packed, each compressor, and with
    ``paired`` the nibble pairs of :mod:`sparsify.coders.paired`) and its coding.

    A coding is preferred to raw only when it is below ``keep`` times the plane size. Each method is
    the one that made its coding (packing is proposed only for a plane that packs), so that an encoder
    that planned on a sample repeats only that one on the whole part.
    """
    methods, coded = [], []
    for plane in planes:
        best, best_coding = RAW, (RAW, memoryview(plane))
        packed = pack(plane, max_palette) if plane.size else None
        options = [(PACKED, _packed_coding(plane, packed, compressors))] if packed is not None else []
        options += [(COMPRESSOR + i, code_plane(plane, COMPRESSOR + i, compressors)) for i in range(len(compressors))]
        if paired and compressors:
            options += _paired_options(plane, compressors[0])
        for method, coding in options:
            if coding[0] != RAW and len(coding[1]) < min(len(best_coding[1]), keep * plane.size):
                best, best_coding = method, coding
        methods.append(best)
        coded.append(best_coding)
    return methods, coded


def _paired_options(plane: np.ndarray, entropy: zstandard.ZstdCompressor) -> list[tuple[int, tuple[int, bytes]]]:
    """(method, coding) of ``plane`` paired (:func:`code_plane`'s ``PAIRED`` and ``PAIRED_MATCHING``),
    the window and the indices found once for both; none where the window holds half the plane or less."""
    if not plane.size:
        return []
    base, held = pair_base(plane)
    if 2 * held <= plane.size:
        return []
    pairs, escaped = pair_indices(plane, base)
    options = []
    for method, coder in ((PAIRED, entropy), (PAIRED_MATCHING, frames.compressor(_MATCHING_LEVEL))):
        coded = pair_payload(pairs, escaped, base, coder)
        if len(coded) < plane.size:
            options.append((method, (PAIRED, coded)))
    return options


def coded_size(coded: Sequence[tuple[int, bytes | memoryview]]) -> int:
    """Bytes that :func:`assemble` makes of ``coded``."""
    return header_size(len(coded)) + sum(len(stored) for _, stored in coded)


def _parse_version(data: memoryview, size: int, itemsize: int, version: int):
    """:func:`_parse` (version 1, ``zstd+planes``), :func:`parse_planes2` (2, ``zstd+planes2``) or the
    same with paired planes allowed (3, ``zstd+planes3``)."""
    if version == 1:
        return _parse(data, size, itemsize)
    return parse_planes2(data, size, itemsize, paired=version == 3)


def _frame_stream(frame: memoryview, size: int) -> FrameStream:
    return FrameStream(zstandard.ZstdDecompressor(), frame, size)


def decode_planes(data: memoryview, size: int, itemsize: int, version: int = 1) -> memoryview:
    """The ``size`` raw bytes of a planes-coded part of ``version`` 1, 2 or 3 (a writable buffer: no
    final copy); CorruptArchiveError on anything malformed."""
    flags, segments, n = _parse_version(data, size, itemsize, version)
    decompressor = zstandard.ZstdDecompressor()
    planes = []  # raw planes are read in place
    for kind, stored in segments:
        if kind == RAW:
            planes.append(np.frombuffer(stored, dtype=np.uint8))
        elif kind == ZSTD:
            planes.append(np.frombuffer(decompress_exact(decompressor, stored, n), dtype=np.uint8))
        elif kind == PAIRED:
            planes.append(unpair(stored, n, _frame_stream))
        else:
            planes.append(unpack(stored, kind, n, decompressor))
    result = np.empty(size, dtype=np.uint8)  # not bytearray(size): zero-filling it costs as much as the join
    _interleave(planes, result, bool(flags & ROTATED))
    return result.data


def iter_planes(
    data: memoryview, size: int, itemsize: int, block: int = 1 << 20, version: int = 1
) -> Iterator[np.ndarray]:
    """The raw bytes of a planes-coded part in order, ``block`` elements at a time (1-D uint8 arrays
    of ``block * itemsize`` bytes, the last one shorter): zstd planes are decompressed as a stream, so
    memory holds a block of each plane, not the part (packed planes, which are small, are unpacked
    whole). The same bytes as :func:`decode_planes`, and the same checks."""
    flags, segments, n = _parse_version(data, size, itemsize, version)
    decompressor = zstandard.ZstdDecompressor()
    sources = []
    for kind, stored in segments:
        if kind == RAW:
            sources.append(np.frombuffer(stored, dtype=np.uint8))
        elif kind == ZSTD:  # a decompressor each: frames read in turn must not share one's state
            sources.append(_frame_stream(stored, n))
        elif kind == PAIRED:
            sources.append(PairedStream(stored, n, _frame_stream))
        else:
            sources.append(unpack(stored, kind, n, decompressor))
    streams = (FrameStream, PairedStream)
    for start in range(0, n, block):
        stop = min(start + block, n)
        planes = [s.read(stop - start) if isinstance(s, streams) else s[start:stop] for s in sources]
        out = np.empty((stop - start) * itemsize, dtype=np.uint8)
        _interleave(planes, out, bool(flags & ROTATED))
        yield out
    for source in sources:
        if isinstance(source, streams):
            source.close()


class FrameStream:
    """One zstd frame that must hold exactly ``size`` bytes, read in pieces (CorruptArchiveError if it
    declares or holds another size, or fails its checksum)."""

    def __init__(self, decompressor: zstandard.ZstdDecompressor, frame: memoryview, size: int) -> None:
        _check_frame(frame, size)
        self._reader = decompressor.stream_reader(frame, read_across_frames=False)
        self._left = size

    def read(self, count: int) -> np.ndarray:
        buffer = np.empty(count, dtype=np.uint8)
        filled = 0
        try:
            while filled < count:
                got = self._reader.readinto(memoryview(buffer)[filled:])
                if not got:
                    raise CorruptArchiveError("zstd frame ends before the bytes it declares")
                filled += got
            self._left -= count
            if self._left == 0 and self._reader.read(1):
                raise CorruptArchiveError("zstd frame holds more bytes than it declares")
        except zstandard.ZstdError as exc:
            raise CorruptArchiveError(f"zstd part cannot be decoded: {exc}") from None
        return buffer

    def close(self) -> None:
        self._reader.close()


def _parse(data: memoryview, size: int, itemsize: int) -> tuple[int, list[tuple[int, memoryview]], int]:
    """A planes part's flags, its planes' (method, stored bytes) and elements, every plane checked
    before anything is allocated; CorruptArchiveError on anything malformed."""
    flags, k, n = _parse_head(data, size, itemsize)
    head = header_size(k)
    if len(data) < head:
        raise CorruptArchiveError("planes part is too short for its header")
    entries = [_ENTRY.unpack_from(data, 2 + _ENTRY.size * j) for j in range(k)]
    if sum(length for _, length in entries) != len(data) - head:
        raise CorruptArchiveError("planes part: plane lengths do not add up to the stored size")
    segments, offset = [], head
    for j, (kind, length) in enumerate(entries):
        segments.append((kind, _checked_segment(data[offset : offset + length], kind, n, j)))
        offset += length
    return flags, segments, n


def _parse_head(data: memoryview, size: int, itemsize: int) -> tuple[int, int, int]:
    """(flags, k, n) from the first two bytes of a planes part of either version, checked."""
    if len(data) < 2:
        raise CorruptArchiveError("planes part is too short for its header")
    flags, k = data[0], data[1]
    if flags & ~ROTATED:
        raise CorruptArchiveError(f"planes part has unknown flags {flags:#x}")
    if k != itemsize or k < 2:
        raise CorruptArchiveError(f"planes part has {k} planes, its elements have {itemsize} bytes")
    if flags & ROTATED and k not in _WORDS:
        raise CorruptArchiveError(f"planes part rotates {k}-byte elements")
    if size % k:
        raise CorruptArchiveError(f"planes part of {size} bytes does not hold {k}-byte elements")
    return flags, k, size // k


def _checked_segment(stored: memoryview, kind: int, n: int, j: int, paired: bool = False) -> memoryview:
    """Plane ``j``'s stored bytes, if their method (``PAIRED`` only where ``paired``) and length can
    hold its ``n`` bytes."""
    length = len(stored)
    if kind == PAIRED and paired:
        if -(-n // 2) > max_frame_output(length):
            raise CorruptArchiveError(f"planes part: paired plane {j} of {length} bytes cannot hold {n} bytes")
        return stored
    if kind == RAW and length != n:
        raise CorruptArchiveError(f"planes part: raw plane {j} has {length} bytes, expected {n}")
    if kind == ZSTD and n > max_frame_output(length):
        raise CorruptArchiveError(f"planes part: zstd plane {j} of {length} bytes cannot hold {n} bytes")
    if kind in (PACKED, PACKED_ZSTD) and -(-n // 8) > max_frame_output(length):
        raise CorruptArchiveError(f"planes part: packed plane {j} of {length} bytes cannot hold {n} bytes")
    if kind not in (RAW, ZSTD, PACKED, PACKED_ZSTD):
        raise CorruptArchiveError(f"planes part: plane {j} has unknown method {kind}")
    return stored


def _interleave(planes: list[np.ndarray], out: np.ndarray, rotated: bool) -> None:
    """Write the ``k`` planes (each ``n`` bytes) into ``out`` (``n * k`` bytes) as little-endian
    elements, undoing the rotation if asked; block by block, so each block stays in the CPU cache.
    Elements of 2, 4 or 8 bytes are assembled as words (shift and or), which is faster than ``k``
    strided byte writes and lets the rotation happen in the same pass."""
    k, n = len(planes), planes[0].size if planes else 0
    word = _WORDS.get(k)
    if word is None:
        grid = out.reshape(n, k)
        for start in range(0, n, _BLOCK):
            for j, plane in enumerate(planes):
                grid[start : start + _BLOCK, j] = plane[start : start + _BLOCK]
        return
    words = out.view(word)
    bits = 8 * k
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = words[start:stop]
        np.copyto(block, planes[0][start:stop], casting="unsafe")
        for j in range(1, k):
            block |= planes[j][start:stop].astype(word) << word.type(8 * j)
        if rotated:
            low = block << word.type(bits - 1)
            block >>= word.type(1)
            block |= low


def max_frame_output(length: int) -> int:
    """An upper bound of the bytes a zstd frame of ``length`` bytes can decode to (every block takes at
    least 3 bytes and yields at most 128 KiB)."""
    return (length // 3 + 1) * zstandard.BLOCKSIZE_MAX


def decompress_exact(decompressor: zstandard.ZstdDecompressor, frame: memoryview, size: int) -> bytes:
    """One zstd frame that must declare and hold exactly ``size`` bytes; CorruptArchiveError otherwise."""
    _check_frame(frame, size)
    try:
        out = decompressor.decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CorruptArchiveError(f"zstd part cannot be decoded: {exc}") from None
    if len(out) != size:
        raise CorruptArchiveError(f"zstd part decoded to {len(out)} bytes, expected {size}")
    return out


def _check_frame(frame: memoryview, size: int) -> None:
    """CorruptArchiveError unless the zstd frame can hold and declares exactly ``size`` bytes."""
    if size > max_frame_output(len(frame)):
        raise CorruptArchiveError(f"zstd frame of {len(frame)} bytes cannot hold {size} bytes")
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise CorruptArchiveError(f"zstd part cannot be decoded: {exc}") from None
    if params.content_size != size:
        raise CorruptArchiveError(f"zstd frame holds {params.content_size} bytes, the part needs {size}")


# -- version 2 (zstd+planes2, format 3.0) ---------------------------------------------------------


def header_size2(lengths: Sequence[int]) -> int:
    """Bytes of a version 2 header whose payloads have these lengths."""
    return 2 + sum(2 + len(leb128.encode(length)) for length in lengths)


def _split_block(words: np.ndarray, j: int, k: int, rotate: bool, out: np.ndarray, scratch: np.ndarray) -> None:
    """Plane ``j`` of a block of little-endian ``8k``-bit ``words`` (rotated left by one bit first if
    asked) into ``out``: one shift and one narrowing copy, no rotated temporary of the block."""
    bits = 8 * k
    work = scratch[: words.size]
    if not rotate:
        np.right_shift(words, 8 * j, out=work)
    elif j == 0:  # the low byte of the rotated word: the element's low 7 bits, then its top bit
        np.left_shift(words, 1, out=work)
        work |= words >> (bits - 1)
    else:  # byte j of (w << 1 | w >> (bits - 1)) is bits 8j - 1 ... 8j + 6 of w
        np.right_shift(words, 8 * j - 1, out=work)
    np.copyto(out, work, casting="unsafe")  # keeps the low byte


def split_planes(data: np.ndarray, itemsize: int, rotate: bool, targets: Sequence[np.ndarray | None]) -> None:
    """Write plane ``j`` of ``data`` (1-D uint8 of ``n`` elements of ``itemsize`` bytes, rotated left
    by one bit first if asked) into ``targets[j]`` (``n`` bytes; None: not wanted), in one pass over
    ``data`` block by block, so that each block is read from memory once."""
    n = data.size // itemsize
    word = _WORDS.get(itemsize)
    wanted = [(j, target) for j, target in enumerate(targets) if target is not None]
    if word is None:  # no word type (3, 16 bytes): strided copies, never rotated
        grid = data.reshape(n, itemsize)
        for start in range(0, n, _BLOCK):
            for j, target in wanted:
                target[start : start + _BLOCK] = grid[start : start + _BLOCK, j]
        return
    words = data.view(word)
    scratch = np.empty(min(n, _BLOCK), dtype=word)
    for start in range(0, n, _BLOCK):
        block = words[start : start + _BLOCK]
        for j, target in wanted:
            _split_block(block, j, itemsize, rotate, target[start : start + _BLOCK], scratch)


def encode_planes2(
    data: np.ndarray,
    itemsize: int,
    rotate: bool,
    methods: Sequence[int],
    compressors: Sequence[zstandard.ZstdCompressor],
    max_palette: int = MAX_PALETTE,
    pair_with: dict[int, int] | None = None,
) -> memoryview:
    """``data`` coded as version 2 planes; ``methods[j]`` as for :func:`encode_planes`, or ``PAIRED``
    (then ``zstd+planes3``) with the window at ``pair_with[j]`` (by default the plane's own).

    One pass splits the elements: raw planes go straight to their place in the output, the others to
    a plane of their own, which is then coded -- and decoded again and compared, so that the part is
    known to hold the data without decoding it whole (raw planes are the split itself). A plane whose
    coding is not smaller than the plane is stored raw after the coded ones."""
    n = data.size // itemsize
    k = len(methods)
    early_raw = [j for j in range(k) if methods[j] == RAW]
    reserve = header_size2([n] * k)  # an upper bound: every length is at most n
    out = np.empty(reserve + k * n, dtype=np.uint8)
    targets: list[np.ndarray | None] = [None] * k
    for slot, j in enumerate(early_raw):
        targets[j] = out[reserve + slot * n : reserve + (slot + 1) * n]
    coded_planes = {j: np.empty(n, dtype=np.uint8) for j in range(k) if methods[j] != RAW}
    for j, plane in coded_planes.items():
        targets[j] = plane
    split_planes(data, itemsize, rotate, targets)
    entries = [(j, RAW, n) for j in early_raw]
    position = reserve + len(early_raw) * n
    decompressor = zstandard.ZstdDecompressor()
    for j in sorted(coded_planes):
        plane = coded_planes.pop(j)
        kind, stored = code_plane(plane, methods[j], compressors, max_palette, (pair_with or {}).get(j))
        size = len(stored)
        out[position : position + size] = np.frombuffer(stored, dtype=np.uint8)
        del stored  # checked in place: memory holds the part, this plane and a block
        if kind != RAW:
            _check_coded(kind, out.data[position : position + size], plane, decompressor)
        entries.append((j, kind, size))
        position += size
        del plane
    head = bytes((ROTATED if rotate else 0, k)) + b"".join(
        bytes((j, kind)) + leb128.encode(length) for j, kind, length in entries
    )
    start = reserve - len(head)
    out[start:reserve] = np.frombuffer(head, dtype=np.uint8)
    return out.data[start:position]


# Bytes of a zstd plane decoded at a time when the encoder checks it.
_CHECK_BLOCK = 1 << 22


def _check_coded(kind: int, stored: bytes | memoryview, plane: np.ndarray, decompressor) -> None:
    """The coded plane decodes to ``plane`` (a zstd frame block by block, so that the check holds no
    second plane); AssertionError (a defect of this code) otherwise."""
    if kind == ZSTD:
        stream = FrameStream(decompressor, memoryview(stored), plane.size)
        for start in range(0, plane.size, _CHECK_BLOCK):
            piece = stream.read(min(_CHECK_BLOCK, plane.size - start))
            if not np.array_equal(piece, plane[start : start + piece.size]):
                raise AssertionError("a coded byte plane does not decode to the plane")
        stream.close()
        return
    if kind == PAIRED:
        decoded = unpair(memoryview(stored), plane.size, _frame_stream)
    else:
        decoded = unpack(memoryview(stored), kind, plane.size, decompressor)
    if not np.array_equal(decoded, plane):
        raise AssertionError("a coded byte plane does not decode to the plane")


def parse_planes2(
    data: memoryview, size: int, itemsize: int, paired: bool = False
) -> tuple[int, list[tuple[int, memoryview]], int]:
    """:func:`_parse` for version 2: flags, per plane in plane order (method, stored bytes), elements;
    with ``paired`` (``zstd+planes3``) paired planes are allowed."""
    flags, k, n = _parse_head(data, size, itemsize)
    offset, entries, seen = 2, [], set()
    for _ in range(k):
        if offset + 2 > len(data):
            raise CorruptArchiveError("planes part is too short for its header")
        j, kind = data[offset], data[offset + 1]
        length, offset = leb128.decode(data, offset + 2, "plane length")
        if j >= k or j in seen:
            raise CorruptArchiveError(f"planes part: plane {j} is listed twice or does not exist")
        seen.add(j)
        entries.append((j, kind, length))
    if sum(length for _, _, length in entries) != len(data) - offset:
        raise CorruptArchiveError("planes part: plane lengths do not add up to the stored size")
    segments: list[tuple[int, memoryview] | None] = [None] * k
    for j, kind, length in entries:
        segments[j] = (kind, _checked_segment(data[offset : offset + length], kind, n, j, paired))
        offset += length
    return flags, segments, n


def has_paired(coded: memoryview, size: int, itemsize: int) -> bool:
    """Whether a version 2 part holds a paired plane (so that it is a ``zstd+planes3`` part)."""
    return any(kind == PAIRED for kind, _ in parse_planes2(coded, size, itemsize, paired=True)[1])


def assemble2(rotate: bool, coded: list[tuple[int, bytes | memoryview]]) -> memoryview:
    """A version 2 part of ``coded`` = per plane (kind, stored bytes), payloads in plane order."""
    head = bytes((ROTATED if rotate else 0, len(coded))) + b"".join(
        bytes((j, kind)) + leb128.encode(len(stored)) for j, (kind, stored) in enumerate(coded)
    )
    return memoryview(head + b"".join(bytes(stored) for _, stored in coded))


def coded_size2(coded: Sequence[tuple[int, bytes | memoryview]]) -> int:
    """Bytes that :func:`assemble2` makes of ``coded``."""
    return header_size2([len(stored) for _, stored in coded]) + sum(len(stored) for _, stored in coded)


def verify_coded(coded: Sequence[tuple[int, bytes | memoryview]], planes: np.ndarray) -> None:
    """Each coded plane of ``coded`` decodes to its plane of ``planes`` (``(k, n)``); AssertionError
    (a defect of this code) otherwise."""
    decompressor = zstandard.ZstdDecompressor()
    for (kind, stored), plane in zip(coded, planes, strict=True):
        if kind != RAW:
            _check_coded(kind, stored, plane, decompressor)
