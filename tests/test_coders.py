"""The zstd coder stage and its byte-plane coding (sparsify/coders): round trips, corruption, determinism."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import pytest
import zstandard
from conftest import SAMPLE_FILES
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from sparsify.coders import leb128
from sparsify.coders import paired as Q
from sparsify.coders import planes as P
from sparsify.coders import zstd as Z
from sparsify.coders.bytegroup import group_bytes
from sparsify.errors import CorruptArchiveError
from sparsify.pipeline import parse_pipeline

CODER = parse_pipeline("keep+zstd").coders[0]


class _ZstdWithoutPairs(Z.Zstd):
    pair_planes = False  # what format 3.0 wrote: zstd+planes2 parts only


CODER_V2 = _ZstdWithoutPairs(**CODER.config)
ITEMSIZES = (1, 2, 4, 8)


def roundtrip(data: np.ndarray, itemsize: int, coder=CODER) -> list[str]:
    """Every candidate of ``coder`` decodes to ``data``; the candidates' codec ids."""
    data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    candidates = coder.encode(data, itemsize)
    assert candidates
    for codec, coded in candidates:
        assert codec.split("+", 1)[0] == "zstd"
        out = coder.decode(codec, memoryview(coded), data.size, itemsize)
        assert bytes(out) == data.tobytes(), codec
    return [c for c, _ in candidates]


def weights() -> np.ndarray:
    tensors = load_file(str(SAMPLE_FILES["fp32"]))
    return np.concatenate([t.reshape(-1) for t in tensors.values()])


def rng_bytes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("itemsize", ITEMSIZES)
@pytest.mark.parametrize("n_items", [0, 1, 3, 1000, 20000])
@pytest.mark.parametrize("kind", ["random", "constant", "small ints"])
def test_roundtrip_shapes(itemsize, n_items, kind):
    n = n_items * itemsize
    if kind == "random":
        data = rng_bytes(n)
    elif kind == "constant":
        data = np.full(n, 7, np.uint8)
    else:
        data = (np.arange(n_items, dtype=np.int64) % 100 - 50).astype(f"<i{itemsize}").view(np.uint8)
    roundtrip(data, itemsize)


@pytest.mark.parametrize("itemsize", (2, 4, 8))
@pytest.mark.parametrize("size", [1, 3, 5, 4097])
def test_sizes_not_a_multiple_fall_back_to_plain(itemsize, size):
    size += size % itemsize == 0
    assert roundtrip(rng_bytes(size), itemsize) == [Z.PLAIN]


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.float64])
@pytest.mark.parametrize("n", [50826, 300_000])  # whole-part coding and sample-planned coding
def test_float_weights(dtype, n):
    w = weights()
    w = np.resize(w, n) * (1 + np.arange(n) % 7)  # longer than the model: vary the repeats
    data = w.astype(dtype)
    paired = Z.PLANES2 if dtype == np.float16 else Z.PLANES3  # fp16's top byte holds 3 mantissa bits too
    for coder, codec in ((CODER, paired), (CODER_V2, Z.PLANES2)):  # the exponent plane paired, or not
        codecs = roundtrip(data, data.dtype.itemsize, coder)
        assert codec in codecs
        coded = dict(coder.encode(data.view(np.uint8), data.dtype.itemsize))[codec]
        assert len(coded) < data.nbytes / 1.08  # compresses
        assert coded[0] == P.ROTATED  # floats: rotated


def test_packed_sign_plane_beats_zstd():
    """fp32 whose low mantissa bits are zero: the bottom plane after rotation is sign + zeros: 1 bit each."""
    w = np.random.default_rng(1).standard_normal(300_000).astype(np.float32)
    w = (w.view(np.uint32) & 0xFFFFFF00).view(np.float32)
    data = w.view(np.uint8)
    (codec, coded), *_ = [c for c in CODER.encode(data, 4) if c[0] in (Z.PLANES2, Z.PLANES3)]
    _, segments, _ = P.parse_planes2(memoryview(coded), data.size, 4, paired=True)
    kind, stored = segments[0]
    assert kind in (P.PACKED, P.PACKED_ZSTD) and len(stored) <= w.size / 8 + 64
    assert CODER.decode(codec, memoryview(coded), data.size, 4) == data.tobytes()


@pytest.mark.parametrize("values", [[5], [0, 200], [1, 2, 3], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 255]])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1001])
def test_pack_unpack(values, n):
    plane = np.array(values, np.uint8)[np.arange(n) * 7 % len(values)]
    header, indices = P.pack(plane)
    payload = memoryview(header + indices.tobytes())
    assert np.array_equal(P.unpack(payload, P.PACKED, n, zstandard.ZstdDecompressor()), plane)
    assert P.pack(plane, 2) is None or len(set(plane.tolist())) <= 2


@pytest.mark.parametrize("itemsize", (2, 4, 8))
@pytest.mark.parametrize("rotate", [False, True])
def test_every_plane_method(itemsize, rotate):
    """Each plane method, forced, decodes (raw, zstd with either compressor, packed)."""
    n = 3000
    data = np.zeros((n, itemsize), np.uint8)
    data[:, 0] = rng_bytes(n)
    data[:, 1] = np.arange(n) % 3
    data[:, -1] = (np.arange(n) // 50) % 2 * 255
    data = data.reshape(-1)
    compressors = [Z.entropy_compressor(), zstandard.ZstdCompressor(level=3, write_content_size=True)]
    for methods in (
        [P.RAW] * itemsize,
        [P.COMPRESSOR] * itemsize,
        [P.COMPRESSOR + 1] * itemsize,
        [P.PACKED] * itemsize,
        [P.COMPRESSOR, P.RAW] * (itemsize // 2),
    ):
        coded = P.encode_planes(data, itemsize, rotate, methods, compressors)  # version 1, still decoded
        assert P.decode_planes(memoryview(coded), data.size, itemsize) == data.tobytes()
        coded = P.encode_planes2(data, itemsize, rotate, methods, compressors)
        assert P.decode_planes(memoryview(coded), data.size, itemsize, version=2) == data.tobytes()
        streamed = b"".join(b.tobytes() for b in P.iter_planes(memoryview(coded), data.size, itemsize, 700, 2))
        assert streamed == data.tobytes()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 70_000), itemsize=st.sampled_from((2, 3, 4, 8, 16)), rotate=st.booleans(), seed=st.integers(0, 99)
)
def test_property_split_planes_is_the_transpose(n, itemsize, rotate, seed):
    """split_planes (one pass, shifts) gives the planes of to_planes (rotate, then transpose)."""
    rotate = rotate and itemsize in (2, 4, 8)
    data = np.random.default_rng(seed).integers(0, 256, n * itemsize, dtype=np.uint8)
    targets = [np.empty(n, np.uint8) for _ in range(itemsize)]
    P.split_planes(data, itemsize, rotate, targets)
    assert np.array_equal(
        np.stack(targets) if n else np.empty((itemsize, 0), np.uint8), P.to_planes(data, itemsize, rotate)
    )


def test_old_codecs_still_decode():
    data = weights().view(np.uint8)
    plain = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    grouped = plain.compress(group_bytes(data, 4).tobytes())
    assert CODER.decode("zstd+bytegroup", memoryview(grouped), data.size, 4) == data.tobytes()
    assert CODER.decode("zstd", memoryview(plain.compress(data.tobytes())), data.size, 4) == data.tobytes()


@pytest.mark.parametrize("config", ["zstd:bytegroup=false", "zstd:level=9", "zstd:level=1"])
def test_configs(config):
    coder = parse_pipeline(f"keep+{config}").coders[0]
    data = np.resize(weights(), 100_000).view(np.uint8)
    codecs = roundtrip(data, 4, coder)
    assert codecs == [Z.PLAIN] if "bytegroup=false" in config else Z.PLANES3 in codecs


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), itemsize=st.sampled_from(ITEMSIZES))
def test_property_roundtrip(data, itemsize):
    roundtrip(np.frombuffer(data, np.uint8), itemsize)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 400), itemsize=st.sampled_from((2, 4, 8)), seed=st.integers(0, 2**16), few=st.booleans())
def test_property_structured(n, itemsize, seed, few):
    """Planes of few values (packing) and floats, any length."""
    rng = np.random.default_rng(seed)
    if few:
        data = rng.choice(np.array([0, 1, 128, 255], np.uint8), n * itemsize)
    else:
        data = rng.standard_normal(n).astype(f"<f{itemsize}").view(np.uint8)
    roundtrip(data, itemsize)


def test_deterministic():
    data = np.resize(weights(), 400_000).view(np.uint8)
    assert CODER.encode(data, 4) == parse_pipeline("keep+zstd").coders[0].encode(data.copy(), 4)


# ---------------------------------------------------------------------------------------------------
# Corrupt input
# ---------------------------------------------------------------------------------------------------


def planes_part(n: int = 2000, itemsize: int = 4) -> tuple[bytes, np.ndarray]:
    data = np.resize(weights(), n).astype(f"<f{itemsize}").view(np.uint8)
    coded = bytes(dict(CODER_V2.encode(data, itemsize))[Z.PLANES2])
    return coded, data


def planes_part_v1(n: int = 2000, itemsize: int = 4) -> tuple[bytes, np.ndarray]:
    """A version 1 part (format 2.x archives): three raw planes and one zstd."""
    data = np.resize(weights(), n).astype(f"<f{itemsize}").view(np.uint8)
    compressors = [Z.entropy_compressor()]
    return bytes(P.encode_planes(data, itemsize, True, [P.RAW] * (itemsize - 1) + [P.COMPRESSOR], compressors)), data


def entries2(coded: bytes) -> list[tuple[int, int, int, int, int]]:
    """(offset, end, plane, method, length) of each entry of a version 2 header."""
    out, offset = [], 2
    for _ in range(coded[1]):
        length, end = leb128.decode(memoryview(coded), offset + 2, "plane length")
        out.append((offset, end, coded[offset], coded[offset + 1], length))
        offset = end
    return out


def decode(coded: bytes, size: int, itemsize: int = 4, codec: str = Z.PLANES2):
    return CODER.decode(codec, memoryview(coded), size, itemsize)


def test_corrupt_truncated_and_sizes():
    coded, data = planes_part()
    for cut in (0, 1, 2, 10, len(coded) // 2, len(coded) - 1):
        with pytest.raises(CorruptArchiveError):
            decode(coded[:cut], data.size)
    with pytest.raises(CorruptArchiveError):
        decode(coded + b"\0", data.size)
    for size in (0, data.size - 4, data.size + 4, data.size + 1, 10**12):
        with pytest.raises(CorruptArchiveError):
            decode(coded, size)
    for itemsize in (1, 2, 8):
        with pytest.raises(CorruptArchiveError):
            decode(coded, data.size, itemsize)


def test_corrupt_header_values_v2():
    coded, data = planes_part()
    bad = [bytes([4]) + coded[1:], coded[:1] + bytes([3]) + coded[2:]]  # unknown flag; plane count != itemsize
    entries = entries2(coded)
    for offset, end, j, kind, length in entries:
        entry = lambda j, kind, length: bytes((j, kind)) + leb128.encode(length)  # noqa: E731
        bad.append(coded[:offset] + entry(j, 7, length) + coded[end:])  # unknown method
        bad.append(coded[:offset] + entry(j, kind, length + 1) + coded[end:])  # lengths don't add up
        bad.append(coded[:offset] + entry(j, P.ZSTD if kind == P.RAW else P.RAW, length) + coded[end:])  # wrong method
        bad.append(coded[:offset] + entry(4, kind, length) + coded[end:])  # no such plane
        bad.append(
            coded[:offset] + entry(entries[0][2] if j != entries[0][2] else entries[1][2], kind, length) + coded[end:]
        )  # a plane listed twice
    bad.append(coded[:2] + bytes((0, 0, 0x80, 0x80)))  # a length that runs past the header
    bad.append(coded[:2] + bytes((0, 0)) + b"\xff" * 12 + coded[2:])  # a length past 63 bits
    for b in bad:
        with pytest.raises(CorruptArchiveError):
            decode(b, data.size)


def test_corrupt_header_values():
    coded, data = planes_part_v1()
    n = data.size // 4
    bad = [
        bytes([4]) + coded[1:],  # unknown flag
        coded[:1] + bytes([3]) + coded[2:],  # plane count != itemsize
    ]
    for j in range(4):
        at = 2 + 9 * j
        kind, length = struct.unpack_from("<BQ", coded, at)
        bad.append(coded[:at] + bytes([7]) + coded[at + 1 :])  # unknown method
        bad.append(coded[:at] + struct.pack("<BQ", kind, length + 1) + coded[at + 9 :])  # lengths don't add up
        other = P.ZSTD if kind == P.RAW else P.RAW
        bad.append(coded[:at] + struct.pack("<BQ", other, length) + coded[at + 9 :])  # wrong method
    # rotated 3-byte elements
    bad_rot = bytes([1, 3]) + struct.pack("<BQ", 0, 1) * 3 + b"abc"
    with pytest.raises(CorruptArchiveError):
        decode(bad_rot, 3, 3, Z.PLANES)
    for b in bad:
        with pytest.raises(CorruptArchiveError):
            decode(b, data.size, codec=Z.PLANES)
    assert n


def test_corrupt_packed_plane():
    n = 100
    plane = (np.arange(n) % 2 * 3).astype(np.uint8)
    header, indices = P.pack(plane)
    good = header + indices.tobytes()
    dec = zstandard.ZstdDecompressor()
    bad = [
        b"",
        b"\x01",
        bytes([3, 2]) + good[2:],  # bits not 1, 2, 4
        bytes([1, 3]) + good[2:],  # palette larger than 2**bits
        bytes([1, 0]) + good[2:],  # empty palette
        good[:-1],  # index bytes missing
        bytes([2, 3, 0, 1, 2]) + bytes([0xFF]) * 25,  # index 3 outside a 3-value palette
    ]
    for b in bad:
        with pytest.raises(CorruptArchiveError):
            P.unpack(memoryview(b), P.PACKED, n, dec)
    with pytest.raises(CorruptArchiveError):
        P.unpack(memoryview(good), P.PACKED_ZSTD, n, dec)  # not a zstd frame


def test_corrupt_zstd_frames():
    data = rng_bytes(1000)
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(data.tobytes())
    no_size = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data.tobytes())
    flipped = bytearray(frame)
    flipped[len(frame) // 2] ^= 0xFF
    for codec in (Z.PLAIN, Z.GROUPED):
        for b, size in [(frame, 999), (frame, 1001), (no_size, 1000), (bytes(flipped), 1000), (b"junk", 1000)]:
            with pytest.raises(CorruptArchiveError):
                decode(b, size, 4, codec)
    with pytest.raises(CorruptArchiveError):
        decode(frame, 1000, 3, Z.GROUPED)
    with pytest.raises(CorruptArchiveError):
        decode(frame, 1000, 4, "zstd+nope")


# ---------------------------------------------------------------------------------------------------
# Paired planes (zstd+planes3)
# ---------------------------------------------------------------------------------------------------


def _frames(frame: memoryview, size: int) -> P.FrameStream:
    return P.FrameStream(zstandard.ZstdDecompressor(), frame, size)


def _skewed_plane(n: int, seed: int, spread: int = 40, start: int = 100) -> np.ndarray:
    """An exponent-like plane: geometric around ``start``, a tail of ``spread`` values (some escaped)."""
    rng = np.random.default_rng(seed)
    return (start + np.minimum(rng.geometric(0.35, n) - 1, spread)).astype(np.uint8)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    seed=st.integers(0, 2**16),
    spread=st.integers(0, 60),
    start=st.integers(0, 255),
    chunk=st.integers(1, 700),
)
def test_property_paired_plane(n, seed, spread, start, chunk):
    """Any plane, any window (bytes outside it escaped, the window sliding past 240 and wrapping below
    it), decodes whole and read in pieces of any size."""
    plane = ((start + np.random.default_rng(seed).integers(0, spread + 1, n)) % 256).astype(np.uint8)
    base = min(start, 240)
    payload = Q.pair_plane(plane, base, Z.entropy_compressor())
    assert np.array_equal(Q.unpair(memoryview(payload), n, _frames), plane)
    stream, pieces, done = Q.PairedStream(memoryview(payload), n, _frames), [], 0
    while done < n:
        pieces.append(stream.read(min(chunk, n - done)))
        done += pieces[-1].size
    stream.close()
    assert np.array_equal(np.concatenate(pieces), plane)


def test_pair_window_and_escapes():
    """The window holds the most bytes, the smallest start among equals; escaped bytes are kept in order."""
    plane = np.array([3, 4, 4, 200, 17, 4, 19, 3], np.uint8)
    assert Q.pair_base(plane) == (3, 6)  # 3 ... 17 holds six bytes; 4 ... 18 holds five
    pairs, escaped = Q.pair_indices(plane, 3)
    assert pairs.tolist() == [0x10, 0xF1, 0x1E, 0x0F] and escaped.tolist() == [200, 19]
    payload = Q.pair_plane(plane, 3, Z.entropy_compressor())
    assert payload[:4] == bytes((3, Q.RAW_ESCAPES, 2, len(payload) - 4 - 2)) and payload[-2:] == bytes((200, 19))
    big = _skewed_plane(300_000, 0, spread=80)  # enough escapes to be worth a frame of their own
    assert Q.pair_plane(big, Q.pair_base(big)[0], Z.entropy_compressor())[1] == Q.ZSTD_ESCAPES


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_paired_part_streams_like_it_decodes(dtype):
    n = 70_001  # sample-planned; odd, so the paired plane ends in a padding nibble
    data = (np.resize(weights(), n) * (1 + np.arange(n) % 7)).astype(dtype).view(np.uint8)
    itemsize = np.dtype(dtype).itemsize
    coded = dict(CODER.encode(data, itemsize))[Z.PLANES3]
    whole = CODER.decode(Z.PLANES3, memoryview(coded), data.size, itemsize)
    for block in (700, 701, 1 << 20):
        streamed = b"".join(b.tobytes() for b in P.iter_planes(memoryview(coded), data.size, itemsize, block, 3))
        assert streamed == bytes(whole) == data.tobytes()
    with pytest.raises(CorruptArchiveError, match="unknown method"):  # a 3.0 reader's zstd+planes2
        decode(bytes(coded), data.size, itemsize, Z.PLANES2)


def _paired(plane: np.ndarray, base: int) -> bytes:
    return Q.pair_plane(plane, base, Z.entropy_compressor())


def test_corrupt_paired_planes():
    plane = _skewed_plane(1001, 1)  # odd: a padding nibble
    good = _paired(plane, 100)
    escapes = good[2]
    assert escapes and good[1] == Q.RAW_ESCAPES
    frame_length, at = leb128.decode(memoryview(good), 3, "")
    frame = good[at : at + frame_length]
    rest = good[at + frame_length :]
    head = lambda base, coding, e, length: bytes((base, coding)) + leb128.encode(e) + leb128.encode(length)  # noqa: E731
    stray = Z.entropy_compressor().compress(bytes([0xF0]) + bytes(500))  # index 15 where none is stored
    padding = bytearray(zstandard.ZstdDecompressor().decompress(frame))
    padding[-1] |= 0x10
    odd_padding = Z.entropy_compressor().compress(bytes(padding))
    bad = {
        "too short": b"\x64",
        "window past 240": head(241, 0, escapes, frame_length) + frame + rest,
        "escape coding": head(100, 2, escapes, frame_length) + frame + rest,
        "lengths": good + b"\0",
        "truncated": good[:-1],
        "escapes missing": head(100, 0, escapes - 1, frame_length) + frame + rest[:-1],
        "escapes unused": head(100, 0, escapes + 1, frame_length) + frame + rest + b"\0",
        "more escapes than bytes": head(100, 0, 2000, frame_length) + frame + bytes(2000),
        "not a frame": head(100, 0, escapes, frame_length) + bytes(frame_length) + rest,
        "padding": head(100, 0, escapes, len(odd_padding)) + odd_padding + rest,
        "escape frame": head(100, 1, 5, frame_length) + frame + b"junk!",
        "an escape in a plane of none": head(100, 0, 0, len(stray)) + stray,
    }
    for what, payload in bad.items():
        with pytest.raises(CorruptArchiveError):
            Q.unpair(memoryview(payload), plane.size, _frames)
            pytest.fail(what)
    with pytest.raises(CorruptArchiveError):
        Q.unpair(memoryview(good), plane.size + 2, _frames)  # the frame holds another size
