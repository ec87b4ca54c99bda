"""The zstd dictionary of format 3.0 manifests (``manifest_codec`` ``"zstd+dict+base64"``).

``manifest-3.0.dict`` beside this module is zstd *raw content* (text the compressor may copy from):
the field names, method, codec and pipeline names and record layouts that every manifest repeats, so
that a small model's manifest costs its information -- checksums, sizes, figures -- and not its
vocabulary (the digits MLP's: 1,164 bytes compressed alone, 370 with it). Its bytes are part of the
format: they never change (tests/golden/make_manifest_dictionary.py says how they were made; a new
dictionary would be a new manifest codec), and a reader checks them before use.
"""

from __future__ import annotations

import functools
from pathlib import Path

import zstandard

from sparsify.checksum import checksum

DICTIONARY_PATH = Path(__file__).with_name("manifest-3.0.dict")
DICTIONARY_CHECKSUM = "xxh3:e12e97b6b4604899"
DICTIONARY_BYTES = 28488


@functools.cache
def manifest_dictionary() -> zstandard.ZstdCompressionDict:
    """The dictionary, checked against its frozen size and checksum (RuntimeError: the installation
    is damaged, which no archive can fix)."""
    data = DICTIONARY_PATH.read_bytes()
    if len(data) != DICTIONARY_BYTES or checksum(data) != DICTIONARY_CHECKSUM:
        raise RuntimeError(f"{DICTIONARY_PATH} is damaged (size or checksum); reinstall sparsify")
    return zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
