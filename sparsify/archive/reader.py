"""Safe archive reader: validate the container and manifest, verify each part's checksum before use.

Opening reads only the header (``inspect`` needs nothing more); decoding a tensor reads only its parts.
Every defect is a :class:`CorruptArchiveError` (exit code 3) with a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from sparsify import container
from sparsify.archive import schema
from sparsify.archive.version import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_CODEC,
    MANIFEST_CODECS,
    MAX_MANIFEST_BYTES,
    METADATA_KEY,
    major,
)
from sparsify.errors import CorruptArchiveError, InputError
from sparsify.io.base import SourceMeta, TensorInfo


class Archive:
    """An open ``.sparsify`` archive; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        what = str(self.path)
        try:
            self._file = open(self.path, "rb")
            size = self.path.stat().st_size
        except IsADirectoryError:
            raise InputError(f"{what}: is a directory, not an archive") from None
        except OSError as exc:
            raise InputError(f"{what}: cannot open: {exc.strerror or exc}") from None
        try:
            head = self._file.read(9)
            if len(head) < 9 or head[8:9] != b"{":
                raise InputError(f"{what}: not a sparsify archive")
            self.layout = container.read_layout(self._file, size, CorruptArchiveError, what)
            self.manifest = _load_manifest(self.layout, what)
            self._entries = {e.name: e for e in self.layout.entries}
            schema.validate(self.manifest, self._entries, what)
        except BaseException:
            self._file.close()
            raise
        self.size = size

    # -- what inspect needs: the manifest only -------------------------------------------------

    @property
    def tensors(self) -> list[dict[str, Any]]:
        return self.manifest["tensors"]

    @property
    def manifest_bytes(self) -> int:
        """Bytes of the container header (8-byte length + JSON, the manifest inside it)."""
        return self.layout.data_start

    def tensor_infos(self) -> list[TensorInfo]:
        return [TensorInfo(t["name"], t["dtype"], tuple(t["shape"]), t["view"]["layout"]) for t in self.tensors]

    # -- decoding ------------------------------------------------------------------------------

    def stored_bytes(self, part: Mapping[str, Any]) -> np.ndarray:
        """A part's bytes as stored, after checking its checksum."""
        from sparsify.checksum import matches

        entry = self._entries[part["key"]]
        try:
            raw = container.read_bytes(self._file, self.layout, entry)
        except OSError as exc:
            raise CorruptArchiveError(f"{self.path}: cannot read part {part['key']!r}: {exc}") from None
        if not matches(raw, part["checksum"]):
            raise CorruptArchiveError(f"{self.path}: checksum mismatch in part {part['key']!r} (corrupt archive)")
        return raw

    def decode(self, tensor: Mapping[str, Any]) -> np.ndarray:
        """One tensor, decoded, in its original type and shape, checked against the checksum its
        record gives (:func:`sparsify.codec.check_decoded`)."""
        from sparsify.codec import check_decoded, decode_tensor  # the decoders: not needed to inspect

        try:
            decoded = decode_tensor(tensor, self.stored_bytes)
            check_decoded(tensor, decoded)
            return decoded
        except CorruptArchiveError as exc:
            raise CorruptArchiveError(f"{self.path}: tensor {tensor['name']!r}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError, ArithmeticError) as exc:
            raise CorruptArchiveError(f"{self.path}: tensor {tensor['name']!r} cannot be decoded: {exc!r}") from None
        except MemoryError:
            raise CorruptArchiveError(
                f"{self.path}: tensor {tensor['name']!r} declares shape {tensor['shape']}, too large to decode here"
            ) from None

    def source_meta(self) -> SourceMeta:
        """The source file's metadata and rebuild blobs, as its reader gave them."""
        from sparsify.checksum import matches
        from sparsify.codec import decode_part

        source = self.manifest["source"]
        blobs = {}
        for name, part in source["blobs"].items():
            blobs[name] = decode_part(part, self.stored_bytes(part)).tobytes()
            expected = part.get("content_checksum")  # format 2.1
            if expected is not None and not matches(blobs[name], expected):
                raise CorruptArchiveError(f"{self.path}: source blob {name!r} differs from its recorded checksum")
        for name, text in source.get("inline", {}).items():  # format 3.0
            blobs[name] = text.encode("utf-8")
        return SourceMeta(summary=source["summary"], rebuild=source["rebuild"], blobs=blobs)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_manifest(layout: container.Layout, what: str) -> dict[str, Any]:
    text = layout.metadata.get(METADATA_KEY)
    if text is None:
        raise InputError(f"{what}: a safetensors file, not a sparsify archive (no sparsify manifest)")
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptArchiveError(f"{what}: manifest is not valid JSON ({_reason(exc)})") from None
    if isinstance(manifest, dict) and "manifest_codec" in manifest:
        _check_format(manifest, what)  # a newer major version may pack its manifest in ways unknown here
        manifest = unpack_manifest(manifest, what)
    _check_format(manifest, what)
    if major(manifest["format_version"]) < 3:  # SHA-256 digests under their 2.x names
        schema.upgrade(manifest)
    return manifest


def _check_format(manifest: Any, what: str) -> None:
    """The manifest (or its envelope) declares this format, in a major version this reader reads."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorruptArchiveError(f"{what}: manifest does not declare format {FORMAT_NAME!r}")
    version = manifest.get("format_version")
    try:
        version_major = major(version)
    except (AttributeError, ValueError):
        raise CorruptArchiveError(f"{what}: invalid format_version {version!r}") from None
    if version_major > major(FORMAT_VERSION):
        raise CorruptArchiveError(
            f"{what}: archive format {version} is newer than this sparsify reads ({major(FORMAT_VERSION)}.x); "
            "upgrade sparsify"
        )


def unpack_manifest(envelope: dict[str, Any], what: str) -> Any:
    """The manifest inside an envelope (format 2.x and 3.0: zstd-compressed JSON, with 3.0's dictionary
    where its codec says so, in base64), size-checked first."""
    if envelope.get("format") != FORMAT_NAME:
        raise CorruptArchiveError(f"{what}: manifest does not declare format {FORMAT_NAME!r}")
    codec = envelope.get("manifest_codec")
    if codec not in MANIFEST_CODECS:
        version = envelope.get("format_version")
        raise CorruptArchiveError(
            f"{what}: manifest packed as {envelope.get('manifest_codec')!r}, which this sparsify cannot read "
            f"(archive format {version}; upgrade sparsify)"
        )
    try:
        packed = base64.b64decode(envelope["manifest"], validate=True)
        size = zstandard.get_frame_parameters(packed).content_size
        if size == zstandard.CONTENTSIZE_UNKNOWN or size > MAX_MANIFEST_BYTES:
            raise CorruptArchiveError(f"{what}: packed manifest declares no size or more than {MAX_MANIFEST_BYTES}")
        if codec == MANIFEST_CODEC:  # 3.0: compressed against the format's dictionary
            from sparsify.archive.dictionary import manifest_dictionary

            decompressor = zstandard.ZstdDecompressor(dict_data=manifest_dictionary())
        else:
            decompressor = zstandard.ZstdDecompressor()
        text = decompressor.decompress(packed, max_output_size=size)
        manifest = json.loads(text)
    except CorruptArchiveError:
        raise
    except (KeyError, TypeError, ValueError, RecursionError, binascii.Error, zstandard.ZstdError) as exc:
        raise CorruptArchiveError(f"{what}: packed manifest cannot be read ({_reason(exc)})") from None
    if isinstance(manifest, dict) and manifest.get("format_version") != envelope.get("format_version"):
        raise CorruptArchiveError(
            f"{what}: the envelope says format {envelope.get('format_version')!r}, "
            f"the manifest {manifest.get('format_version')!r}"
        )
    return manifest


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
