"""The manifest's schema: every field's type, range and enumeration, then the cross-references.

``validate(manifest, entries, what)`` runs once when an archive is opened, before anything reads a
field; whatever is off is a :class:`CorruptArchiveError` that names the field
(``tensors[1].metrics.sq_norm: Expected float, got str``). The types are msgspec Structs (msgspec
checks a decoded JSON tree against them in C, with the path of the first defect in its message); the
relations between records, stages, parts and the container are checked here in plain code.
Unknown fields are allowed: a newer minor version may add optional ones (archive/version.py).
``json_schema()`` renders the same types as a JSON Schema (docs/manifest.schema.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import msgspec

from sparsify import dtypes
from sparsify.archive.version import SOURCE_BLOB_PREFIX
from sparsify.checksum import PATTERN as CHECKSUM_PATTERN
from sparsify.errors import CorruptArchiveError, SparsifyError

Count = Annotated[int, msgspec.Meta(ge=0)]
Shape = list[Count]
# "xxh3:<16 hex>" (format 3.0), or "sha256:<64 hex>" once an older archive's digests are upgraded
Checksum = Annotated[str, msgspec.Meta(pattern=CHECKSUM_PATTERN)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1)]
# safetensors names, or a plain numpy type string ('>f4', '<c16', '|S8', '|V2') for what it cannot name
Dtype = Annotated[
    str,
    msgspec.Meta(pattern="^(" + "|".join(sorted(dtypes.SAFETENSORS_TYPES)) + r"|[<>|][biufcSUV][1-9][0-9]{0,5})$"),
]
# Methods, value coders and codecs are names, not enumerations: a newer minor version may add some,
# and a reader then says so for the tensors that use them and reads the others.
StageName = Annotated[str, msgspec.Meta(pattern="^[a-z][a-z0-9_]*$")]
Codec = Annotated[str, msgspec.Meta(pattern="^[a-z][a-z0-9_]*(\\+[a-z][a-z0-9_]*)*$")]


class _Record(msgspec.Struct):
    """Base of the records: unknown fields pass (forward compatibility within a major version)."""


class Part(_Record):
    name: Name
    key: Name
    dtype: Dtype
    shape: Shape
    codec: Union[Codec, None]  # noqa: UP007 (msgspec reads the annotation at run time on 3.10 too)
    nbytes: Count
    checksum: Checksum


class Blob(Part):
    content_checksum: Union[Checksum, None] = None  # noqa: UP007 (format 2.1: the blob's own bytes)


class View(_Record):
    layout: Literal["first", "last"]
    rows: Count
    cols: Count


class ValueCoding(_Record):
    """A value-coded part, or (``skipped``: why) one the coder could not store, kept as it was."""

    coder: StageName
    skipped: Union[str, None] = None  # noqa: UP007
    config: Union[dict[str, Any], None] = None  # noqa: UP007
    resolved: Union[dict[str, Any], None] = None  # noqa: UP007
    dtype: Union[Dtype, None] = None  # noqa: UP007
    shape: Union[Shape, None] = None  # noqa: UP007
    parts: list[Name] = []


class Stage(_Record):
    method: StageName
    config: dict[str, Any]
    resolved: dict[str, Any]
    parts: list[Name]
    values: dict[str, ValueCoding] = {}


class Metrics(_Record):
    # None stands for an infinite value (JSON has no inf), or an SNR with no error
    rel_error: Union[NonNegative, None]  # noqa: UP007
    max_abs_error: Union[NonNegative, None]  # noqa: UP007
    snr_db: Union[float, None]  # noqa: UP007
    cosine: Union[Annotated[float, msgspec.Meta(ge=-1.000001, le=1.000001)], None]  # noqa: UP007
    sq_error: Union[NonNegative, None]  # noqa: UP007
    sq_norm: Union[NonNegative, None]  # noqa: UP007
    exact: bool


class Tensor(_Record):
    name: Name
    dtype: Dtype
    shape: Shape
    checksum: Checksum
    original_bytes: Count
    view: View
    pipeline: str
    reason: str
    stages: Annotated[list[Stage], msgspec.Meta(min_length=1)]
    coders: list[str]
    parts: list[Part]
    stored_bytes: Count
    metrics: Metrics
    value_coder: Union[str, None] = None  # noqa: UP007 (format 2.0)
    budget_scale: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    decoded_checksum: Union[Checksum, None] = None  # noqa: UP007 (format 2.1: lossy tensors' decoded bytes)


class NpzMember(_Record):
    filename: Annotated[str, msgspec.Meta(pattern=r"\.npy$")]  # a zip member name, never a path we open
    date_time: Annotated[list[Count], msgspec.Meta(min_length=6, max_length=6)]
    compress_type: Literal[0, 8, 12, 14]  # stored, deflate, bzip2, lzma
    create_system: Count
    create_version: Count
    extract_version: Count
    flag_bits: Count
    external_attr: Count
    internal_attr: Count
    comment: str
    extra: str
    zip64: bool
    npy_header: str


class NpzRebuild(_Record):
    comment: str
    members: list[NpzMember]


class Hdf5Rebuild(_Record):
    track_times: list[str] = []


class Source(_Record):
    name: Name
    format: Literal["safetensors", "hdf5", "npz"]
    size: Count
    checksum: Checksum
    summary: dict[str, Any]
    rebuild: dict[str, Any]
    blobs: dict[str, Blob]
    inline: dict[str, str] = {}  # (3.0) source blobs held in the manifest as text


class Rule(_Record):
    match: str
    pipeline: str
    origin: str


class Options(_Record):
    pipeline: str
    rules: list[Rule]
    min_size: Count
    max_error: Union[NonNegative, None]  # noqa: UP007
    seed: int
    target: Union[dict[Literal["ratio", "size", "error"], NonNegative], None] = None  # noqa: UP007 (2.0)
    objective: str = "sse"  # (3.1) absent: sse; informational, so any name (a newer one) is accepted


class Plan(_Record):
    mode: Literal["auto", "ratio", "size", "error"]
    max_error: Union[NonNegative, None]  # noqa: UP007
    target: Union[dict[Literal["ratio", "size", "error"], NonNegative], None]  # noqa: UP007
    candidates: Count
    slope: Union[float, None] = None  # noqa: UP007
    predicted_weighted_rel_error: Union[NonNegative, None] = None  # noqa: UP007
    met: bool = True
    budget_bytes: Union[NonNegative, None] = None  # noqa: UP007
    objective: str = "sse"  # (3.1) absent: sse; informational, so any name (a newer one) is accepted


class Gate(_Record):
    max_error: NonNegative
    passed: bool
    failures: list[str]


class Tool(_Record):
    name: str
    version: str


class Manifest(_Record):
    format: Literal["sparsify"]
    format_version: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+\.[0-9]+$")]
    tool: Tool
    source: Source
    options: Options
    tensors: list[Tensor]
    plan: Union[Plan, None] = None  # noqa: UP007
    gate: Union[Gate, None] = None  # noqa: UP007


_REBUILD = {"npz": NpzRebuild, "hdf5": Hdf5Rebuild}


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), generated from the types above."""
    return msgspec.json.schema(Manifest)


_RENAMED = {"sha256": "checksum", "content_sha256": "content_checksum", "decoded_sha256": "decoded_checksum"}


def upgrade(manifest: Any) -> Any:
    """A manifest of format 2.x or 1.0 in the field names of 3.0, in place: each SHA-256 digest
    (``"sha256": "<hex>"``, ``content_sha256``, ``decoded_sha256``) becomes a checksum string
    (``"checksum": "sha256:<hex>"``, ...), so that one reader serves every version. A value that is not
    a string moves as it is, for :func:`validate` to refuse by its new name."""

    def move(record: Any) -> None:
        if isinstance(record, dict):
            for old, new in _RENAMED.items():
                if old in record:
                    value = record.pop(old)
                    record[new] = f"sha256:{value}" if isinstance(value, str) else value

    if not isinstance(manifest, dict):
        return manifest
    source = manifest.get("source")
    move(source)
    blobs = source.get("blobs") if isinstance(source, dict) else None
    for blob in blobs.values() if isinstance(blobs, dict) else ():
        move(blob)
    tensors = manifest.get("tensors")
    for tensor in tensors if isinstance(tensors, list) else ():
        move(tensor)
        parts = tensor.get("parts") if isinstance(tensor, dict) else None
        for part in parts if isinstance(parts, list) else ():
            move(part)
    return manifest


def validate(manifest: Any, entries: Mapping[str, Any], what: str) -> None:
    """Check ``manifest`` (decoded JSON) against the schema and the container's ``entries`` (name ->
    :class:`sparsify.container.Entry`). CorruptArchiveError naming the first field that is off."""
    try:
        typed = msgspec.convert(manifest, Manifest, strict=True)
        rebuild = _REBUILD.get(typed.source.format)
        if rebuild is not None:
            msgspec.convert(manifest["source"]["rebuild"], rebuild, strict=True)
    except msgspec.ValidationError as exc:
        raise CorruptArchiveError(f"{what}: invalid manifest: {_field_message(str(exc))}") from None
    try:
        _cross_check(typed, entries)
    except SparsifyError as exc:
        raise CorruptArchiveError(f"{what}: invalid manifest: {exc}") from None


def _field_message(text: str) -> str:
    """msgspec's 'Expected `float`, got `str` - at `$.tensors[1].metrics.sq_norm`' as
    'tensors[1].metrics.sq_norm: Expected float, got str'."""
    message, _, where = text.partition(" - at ")
    path = where.strip("`").removeprefix("$").removeprefix(".")
    message = message.replace("`", "")
    return f"{path}: {message}" if path else message


def _cross_check(manifest: Manifest, entries: Mapping[str, Any]) -> None:
    """The relations the types cannot express: names and keys, stages and parts, sizes and shapes."""
    from sparsify.archive.writer import container_entry  # the writer's own mapping of record to entry
    from sparsify.codec import matrix_shape

    referenced: set[str] = set()
    version = tuple(int(x) for x in manifest.format_version.split("."))

    def check_part(part: Part, record: Mapping[str, Any], where: str, expected_key: str) -> None:
        _check(part.key == expected_key, f"{where}.key is {part.key!r}, expected {expected_key!r}")
        _check(part.key not in referenced, f"{where}.key {part.key!r} is used twice")
        referenced.add(part.key)
        entry = entries.get(part.key)
        _check(entry is not None, f"part {part.key!r} is not in the file")
        _check(entry.nbytes == part.nbytes, f"{where}: part {part.key!r} size differs from the header")
        _, dtype, shape = container_entry(record)
        _check(
            (entry.dtype, tuple(entry.shape)) == (dtype, shape),
            f"{where}: container entry {entry.dtype}{list(entry.shape)} does not match the record",
        )
        logical = _nbytes(part.dtype, part.shape, where)
        if part.codec is None:
            _check(logical == part.nbytes, f"{where}: {part.nbytes} bytes stored, {logical} declared")
        else:  # zstd cannot expand a frame more than ~32768x (RLE blocks): refuse a bomb before allocating
            _check(logical <= _MAX_EXPANSION * part.nbytes + (1 << 20), f"{where} declares {logical} bytes")

    source = manifest.source
    for name, blob in source.blobs.items():
        where = f"source.blobs.{name}"
        _check(blob.name == name, f"{where}.name is {blob.name!r}")
        _check(version < (2, 1) or blob.content_checksum is not None, f"{where}.content_checksum is missing")
        check_part(blob, _record_of(blob), where, SOURCE_BLOB_PREFIX + name)
    if source.format == "safetensors":
        _check(
            "header" in source.blobs or "header" in source.inline,
            "source.blobs: a safetensors source needs its 'header' blob",
        )
    both = sorted(set(source.blobs) & set(source.inline))
    _check(not both, f"source.inline.{both[0]} is also a stored blob" if both else "")

    names: set[str] = set()
    previous_end = 0
    for i, tensor in enumerate(manifest.tensors):
        where = f"tensors[{i}]"
        _check(tensor.name not in names, f"{where}.name {tensor.name!r} is used twice")
        names.add(tensor.name)
        _check(
            tensor.original_bytes == _nbytes(tensor.dtype, tensor.shape, where),
            f"{where}.original_bytes does not match its dtype and shape",
        )
        numel = tensor.view.rows * tensor.view.cols
        _check(numel <= MAX_ELEMENTS, f"{where}: {numel} elements, more than any archive holds ({MAX_ELEMENTS})")
        rows, cols = matrix_shape(tuple(tensor.shape), tensor.view.layout)
        _check((tensor.view.rows, tensor.view.cols) == (rows, cols), f"{where}.view: bad view for shape {tensor.shape}")
        _check(tensor.stored_bytes == sum(p.nbytes for p in tensor.parts), f"{where}.stored_bytes != its parts' sum")
        _check(not tensor.metrics.exact or tensor.metrics.rel_error == 0, f"{where}.metrics: exact with an error")
        if version >= (2, 1):  # what a decode must give: the original's checksum, or the decoded one
            _check(
                (tensor.decoded_checksum is None) == tensor.metrics.exact,
                f"{where}.decoded_checksum must be "
                f"{'null for an exact' if tensor.metrics.exact else 'set for a lossy'} tensor",
            )
        for j, part in enumerate(tensor.parts):
            check_part(part, _record_of(part), f"{where}.parts[{j}]", f"{tensor.name}/{part.name}")
        # the writer appends each tensor's parts after the previous tensor's: records in file order
        begins = [entries[p.key].begin for p in tensor.parts]
        if begins:
            _check(min(begins) >= previous_end, f"{where}: its parts lie before the previous tensor's (reordered?)")
            previous_end = max(entries[p.key].end for p in tensor.parts)
        _check_stages(tensor, where)
    unreferenced = sorted(set(entries) - referenced)
    _check(not unreferenced, f"container entry {unreferenced[0]!r} belongs to no part" if unreferenced else "")
    if manifest.gate is not None:
        stray = [n for n in manifest.gate.failures if n not in names]
        _check(not stray, f"gate.failures names {stray[0]!r}, which is no tensor" if stray else "")


def _check_stages(tensor: Tensor, where: str) -> None:
    """Every stage's config is valid for its method, its parts exist, and every part is a stage's."""
    from sparsify.methods import METHODS, VALUE_CODERS, LosslessMethod
    from sparsify.pipeline import check_config

    part_names = [p.name for p in tensor.parts]
    _check(len(set(part_names)) == len(part_names), f"{where}.parts: a part name is used twice")
    claimed: list[str] = []
    for j, stage in enumerate(tensor.stages):
        at = f"{where}.stages[{j}]"
        cls = METHODS.get(stage.method)  # unknown: decoding that tensor says so
        nnz = stage.resolved.get("nnz", 0)  # the report reads it
        _check(type(nnz) is int and nnz >= 0, f"{at}.resolved.nnz: Expected int >= 0")
        try:
            if cls is not None:
                check_config(cls, _known(cls, stage.config))
            for name, coding in stage.values.items():
                coded = (coding.config, coding.resolved, coding.dtype, coding.shape)
                _check(coding.skipped is not None or None not in coded, f"values.{name}: a field is missing")
                if coding.coder in VALUE_CODERS and coding.skipped is None:
                    check_config(VALUE_CODERS[coding.coder], _known(VALUE_CODERS[coding.coder], coding.config))
        except SparsifyError as exc:
            raise CorruptArchiveError(f"{at}.config: {exc}") from None
        lossless = cls is not None and issubclass(cls, LosslessMethod)
        _check(not lossless or len(tensor.stages) == 1, f"{at}: {stage.method} cannot be combined with other stages")
        if lossless:  # the stored data is the tensor itself: its type and size are the tensor's
            data = {p.name: p for p in tensor.parts}.get(f"{j}.{stage.method}.data")
            if data is not None:
                stored = (data.dtype, _nbytes(data.dtype, data.shape, at))
                _check(
                    stored in ((tensor.dtype, tensor.original_bytes), ("U8", tensor.original_bytes)),
                    f"{at}: the stored data is {data.dtype}{data.shape}, the tensor {tensor.dtype}{tensor.shape}",
                )
        for name, coding in stage.values.items():
            subs = {f"{name}.{sub}" for sub in coding.parts}
            _check(subs <= set(stage.parts), f"{at}.values.{name}: sub-parts not among the stage's parts")
        claimed += [f"{j}.{stage.method}.{name}" for name in stage.parts]
    if all(stage.method in METHODS for stage in tensor.stages):  # else a newer minor's: decoding says so
        _check(sorted(claimed) == sorted(part_names), f"{where}: the stages' parts and the stored parts differ")


_MAX_EXPANSION = 1 << 16
MAX_ELEMENTS = 1 << 48
"""Elements a tensor may declare (its float64 decode must be addressable; 2**48 is 2 PiB of it)."""


def _known(cls, config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a stored config that ``cls`` has parameters for: a newer minor version may add
    parameters, and decoding that tensor then says it cannot read them."""
    names = {p.name for p in cls.params}
    return {k: v for k, v in config.items() if k in names}


def _record_of(part: Part) -> dict[str, Any]:
    return {"key": part.key, "dtype": part.dtype, "shape": part.shape, "codec": part.codec, "nbytes": part.nbytes}


def _nbytes(dtype: str, shape: list[int], where: str) -> int:
    try:
        return dtypes.nbytes_of(dtype, tuple(shape))
    except SparsifyError as exc:
        raise CorruptArchiveError(f"{where}: {exc}") from None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CorruptArchiveError(message)
