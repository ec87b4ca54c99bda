"""Checksums of stored and rebuilt bytes: self-describing strings, ``"<algorithm>:<hex digest>"``.

Format 3.0 archives record XXH3-64 (``"xxh3:"`` and 16 hex digits; the ``xxhash`` library, whose
XXH3 output is specified and identical on every CPU and SIMD path) for every part, source blob,
tensor, decoded tensor and source file: it runs at memory speed (about 20 GB/s on one core, against
about 1.7 GB/s for SHA-256), so checking costs nothing beside decoding. It detects accidental damage
-- a flipped bit, a truncated or shifted range, a file swapped for another -- with a chance of
2**-64 of missing it; it is not cryptographic, so it does not protect against someone who changes
an archive on purpose and recomputes the checksums (sign the file for that). Archives of format
2.x and 1.0 record SHA-256 (``"sha256:"`` and 64 hex digits once read, see
:func:`sparsify.archive.schema.upgrade`); both are verified by :func:`matches`.
"""

from __future__ import annotations

import hashlib
import mmap
from typing import Any

import numpy as np
import xxhash

from sparsify.errors import InputError

ALGORITHM = "xxh3"
DIGITS = {"xxh3": 16, "sha256": 64}  # hex digits of each algorithm's digest
# (?!\n): Python's "$" (msgspec's pattern check) also matches before a final newline; JSON Schema's does not
PATTERN = "^(xxh3:[0-9a-f]{16}|sha256:[0-9a-f]{64})(?!\n)$"

# Bytes hashed at a time from a file that cannot be mapped.
_FILE_BLOCK = 1 << 24


def _buffer(data: Any) -> memoryview:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return memoryview(data)


def checksum(data: Any) -> str:
    """The checksum of an array's or buffer's bytes, in the current algorithm (``"xxh3:..."``)."""
    return f"{ALGORITHM}:{xxhash.xxh3_64_hexdigest(_buffer(data))}"


def digest_with(algorithm: str, data: Any) -> str:
    """The checksum of ``data`` in ``algorithm`` (``"xxh3"`` or ``"sha256"``)."""
    if algorithm == "xxh3":
        return checksum(data)
    if algorithm == "sha256":
        return f"sha256:{hashlib.sha256(_buffer(data)).hexdigest()}"
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def algorithm_of(expected: str) -> str:
    """The algorithm a checksum string names (ValueError if none that sparsify knows)."""
    algorithm, _, digest = expected.partition(":")
    if DIGITS.get(algorithm) != len(digest):
        raise ValueError(f"not a checksum: {expected!r}")
    return algorithm


def matches(data: Any, expected: str) -> bool:
    """Whether ``data`` has the checksum ``expected`` (in whichever algorithm it names)."""
    return digest_with(algorithm_of(expected), data) == expected


class Hasher:
    """A streamed checksum: ``update`` with consecutive pieces, then ``value``."""

    def __init__(self, algorithm: str = ALGORITHM) -> None:
        self.algorithm = algorithm
        self._state = xxhash.xxh3_64() if algorithm == "xxh3" else hashlib.sha256()

    def update(self, data: Any) -> None:
        self._state.update(_buffer(data))

    @property
    def value(self) -> str:
        return f"{self.algorithm}:{self._state.hexdigest()}"


def file_checksum(path: str, algorithm: str = ALGORITHM) -> str:
    """The checksum of a file's bytes (mapped, or read in blocks); InputError if it cannot be read."""
    hasher = Hasher(algorithm)
    try:
        with open(path, "rb") as f:
            try:
                view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):  # empty, or a file that cannot be mapped (a pipe)
                while block := f.read(_FILE_BLOCK):
                    hasher.update(block)
            else:
                with view:
                    hasher.update(view)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return hasher.value
