"""One tensor through its pipeline and back: matrix view -> stages -> parts -> coded bytes.

``encode_tensor`` runs a tensor's pipeline and returns the coded parts with the manifest record that
describes them; ``decode_tensor`` turns a record and its parts back into the tensor, in its original
type and shape. The archive reader and the compressor's measuring step both decode through here, so
the report measures exactly what a later ``decompress`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsify import dtypes
from sparsify.checksum import checksum, matches
from sparsify.errors import CorruptArchiveError, UsageError
from sparsify.feedback import Prepared
from sparsify.importance import TensorImportance
from sparsify.io.base import TensorInfo
from sparsify.methods import CODERS, METHODS, VALUE_CODERS, EncodeContext, LosslessMethod, Method
from sparsify.methods.values import decode_parts, encode_parts, is_value_part
from sparsify.metrics import Reference, as_float64, exact_metrics, finite_sq_norm, same_bytes, tensor_metrics
from sparsify.pipeline import Pipeline, check_config, resolve_config, stage_text
from sparsify.reproducible import inner
from sparsify.rules import Choice


@dataclass
class CodedPart:
    """A part ready to store: its manifest record and its bytes (uint8, as written)."""

    record: dict[str, Any]
    stored: np.ndarray


@dataclass
class SpooledPart:
    """A coded part that a worker process wrote to its spool file: its record, and where its
    ``record["nbytes"]`` bytes are (``path``, byte ``offset``)."""

    record: dict[str, Any]
    path: str
    offset: int


@dataclass
class EncodedTensor:
    """A tensor's manifest record (metrics not yet filled) and its coded parts."""

    record: dict[str, Any]
    parts: list[CodedPart]
    # Σ a ΔW² under the importance the caller measured with (rate control; not in the record)
    weighted_sq_error: float | None = None
    # (m,) output error per row of a last stage that fed its errors forward (sparsify.feedback)
    row_losses: np.ndarray | None = None

    def stored_part(self, part: Mapping[str, Any]) -> np.ndarray:
        """The stored bytes of one of this tensor's parts (for decoding before writing)."""
        return next(p.stored for p in self.parts if p.record["name"] == part["name"])


def matrix_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """(rows, cols) of the matrix view: output channels (first or last axis) on the rows."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, shape[0])
    rows = shape[0] if layout == "first" else shape[-1]
    total = int(np.prod(shape, dtype=np.int64))
    return (rows, total // rows if rows else 0)


def to_matrix(array: np.ndarray, layout: str) -> np.ndarray:
    """The float64 matrix view of a real tensor (see :func:`matrix_shape`)."""
    if layout == "last" and array.ndim >= 2:
        array = np.moveaxis(array, -1, 0)
    return as_float64(array).reshape(matrix_shape(array.shape, "first"))


def from_matrix(matrix: np.ndarray, shape: tuple[int, ...], layout: str) -> np.ndarray:
    """Inverse of :func:`to_matrix` (any dtype: the values are only moved)."""
    if layout == "last" and len(shape) >= 2:
        moved = matrix.reshape((shape[-1], *shape[:-1]))
        return np.ascontiguousarray(np.moveaxis(moved, 0, -1))
    return matrix.reshape(shape)


def cast_back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 values in a tensor's own type: rounded and clipped for integers, nonzero for bools."""
    if dtype.kind == "b":
        return values != 0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


# How often the codec re-runs a pipeline whose last stage has a max_error budget that rounding on
# storage (factors in the tensor's type, the cast back to it) pushed just past the bound.
_MAX_BUDGET_RETRIES = 4


class Original:
    """One tensor as read, with what every encoding of it needs computed once: its checksum, its
    float64 matrix views (read-only) and its metrics reference. Pass the same one to several
    :func:`encode_tensor` calls (candidates of the rate controller) to share them."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self._checksum: str | None = None
        self._matrices: dict[str, np.ndarray] = {}
        self._reference: Reference | None = None
        self._norms: dict[str, float] = {}

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = checksum(self.array)
        return self._checksum

    def matrix(self, layout: str) -> np.ndarray:
        """The float64 matrix view (:func:`to_matrix`), read-only: stages never write their input."""
        if layout not in self._matrices:
            matrix = to_matrix(self.array, layout)
            matrix.setflags(write=False)
            self._matrices[layout] = matrix
        return self._matrices[layout]

    def matrix_sq_norm(self, layout: str) -> float:
        """||W||_F^2 over the finite entries of :meth:`matrix` (summed in that matrix's order)."""
        key = f"sq_norm:{layout}"
        if key not in self._norms:
            self._norms[key] = finite_sq_norm(self.matrix(layout))
        return self._norms[key]

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            self._reference = Reference(self.array)
        return self._reference


def encode_tensor(
    array: np.ndarray,
    info: TensorInfo,
    choice: Choice,
    seed: int = 0,
    original: Original | None = None,
    importance: TensorImportance | None = None,
    step_shifts: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    prepared_feedback: Prepared | None = None,
) -> EncodedTensor:
    """Run ``choice.pipeline`` on one tensor, decode what would be stored and measure it.

    The record's ``metrics`` are measured from the decoded, stored bytes, and ``decoded_checksum`` is
    their checksum where they differ from the original's (every decode checks it). When the last stage has a
    ``max_error`` budget and the measured error exceeds it (rounding of stored values), the pipeline
    runs again with the budget tightened by the overshoot, up to a few times; ``budget_scale`` in the
    record says by how much (1.0: not needed). ``original``: ``array`` wrapped as :class:`Original`,
    when the caller encodes it several times. ``importance``: the steps of ``quant:...,weighted=true``
    stages (:meth:`TensorImportance.step_shifts`), and also measure the importance-weighted squared
    error (``weighted_sq_error``; 0 for a bit-exact decode) -- for a pipeline that feeds its rounding
    errors forward (``feedback=true``), the output error its last stage reports, Σ_i r_i loss_i
    (:mod:`sparsify.feedback`), the error that importance weighs. ``step_shifts``: those steps as
    given instead (a sample's, :mod:`sparsify.estimate`); ``prepared_feedback``: feedback results
    made for several candidates at once, which the stage takes where they match.
    """
    pipeline = choice.pipeline
    bound = None if pipeline.lossless else pipeline.methods[-1].config.get("max_error")
    scale = 1.0
    original = original if original is not None else Original(array)
    shifts = step_shifts if step_shifts is not None else weighted_step_shifts(pipeline, info, importance)
    factor = feedback_factor_for(pipeline, info, importance)
    for _ in range(_MAX_BUDGET_RETRIES):
        encoded = _encode(original, info, choice, seed, scale, shifts, factor, prepared_feedback)
        if pipeline.lossless and _streams_back(encoded, array):
            encoded.record["metrics"] = exact_metrics(array if dtypes.is_real_numeric(info.dtype) else None)
            encoded.record["decoded_checksum"] = None
            break
        decoded = decode_tensor(encoded.record, encoded.stored_part)
        metrics = measure(array, decoded, info.dtype, None if pipeline.lossless else original)
        encoded.record["metrics"] = metrics
        # what a later decode must give, byte for byte (the original's checksum says so where exact)
        encoded.record["decoded_checksum"] = None if metrics["exact"] else checksum(decoded)
        if bound is None or metrics["rel_error"] <= bound or metrics["rel_error"] == 0:
            break
        shortfall = bound / metrics["rel_error"]
        scale *= 0.98 * shortfall * shortfall  # not ** 2: libm's pow may differ between CPUs
    if importance is not None:
        exact = encoded.record["metrics"]["exact"]
        if exact:
            encoded.weighted_sq_error = 0.0
        elif encoded.row_losses is not None:
            rows = np.ones(encoded.row_losses.size) if importance.rows is None else importance.rows
            encoded.weighted_sq_error = inner(rows, encoded.row_losses)
        else:
            encoded.weighted_sq_error = importance.weighted_sq_error(array, decoded)
    return encoded


def feedback_factor_for(pipeline: Pipeline, info: TensorInfo, importance: TensorImportance | None) -> np.ndarray | None:
    """The factor of the tensor's input moments that ``pipeline``'s ``feedback=true`` stages take
    (:meth:`TensorImportance.feedback_factor`); None without such a stage, without input moments, or
    in a matrix view whose columns are not the inputs (the stage then refuses to encode)."""
    if importance is None or not pipeline.feedback or not importance.takes_feedback(info):
        return None
    if (pipeline.view or info.layout) != info.layout:
        return None
    return importance.feedback_factor()


def weighted_step_shifts(
    pipeline: Pipeline, info: TensorInfo, importance: TensorImportance | None
) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """The step shifts (per row, per column of the matrix view) that ``pipeline``'s weighted quant
    stages take from the tensor's ``importance``; None when it has no such stage or no importance."""
    if importance is None or not pipeline.weighted:
        return None
    return importance.step_shifts(info.shape, pipeline.view or info.layout, pipeline.feedback)


# Bytes compared at a time when a lossless encoding is checked as a stream.
_CHECK_BLOCK = 4 << 20


def _streams_back(encoded: EncodedTensor, array: np.ndarray) -> bool:
    """Whether ``keep``'s one part decodes to ``array``'s bytes, checked as a stream (the decoded part
    is never held whole: a lossless tensor costs its coded bytes and a few blocks on top of itself).
    False where the record is not that shape (the caller then decodes in full)."""
    record = encoded.record
    if len(record["stages"]) != 1 or record["stages"][0]["method"] != "keep" or len(encoded.parts) != 1:
        return False
    part = encoded.parts[0]
    original = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    numpy_dtype = dtypes.numpy_of(part.record["dtype"])
    itemsize = numpy_dtype.itemsize if numpy_dtype is not None else 1
    if dtypes.nbytes_of(part.record["dtype"], tuple(part.record["shape"])) != original.size:
        return False
    if part.record["codec"] is None:
        pieces = (part.stored[i : i + _CHECK_BLOCK] for i in range(0, part.stored.size, _CHECK_BLOCK))
    else:
        coder_cls = CODERS[str(part.record["codec"]).split("+", 1)[0]]
        if part.record["codec"] in coder_cls.verified:  # the coder checked its own round trip
            return True
        coder = coder_cls(**resolve_config(coder_cls, {}))
        pieces = coder.decode_blocks(part.record["codec"], memoryview(part.stored), original.size, itemsize)
    position = 0
    for piece in pieces:
        if not np.array_equal(piece, original[position : position + piece.size]):
            return False
        position += piece.size
    return position == original.size


def _encode(
    original: Original,
    info: TensorInfo,
    choice: Choice,
    seed: int,
    budget_scale: float,
    step_shifts: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    feedback: np.ndarray | None = None,
    prepared_feedback: Prepared | None = None,
) -> EncodedTensor:
    pipeline = choice.pipeline
    array = original.array
    layout = pipeline.view or info.layout
    rows, cols = matrix_shape(info.shape, layout)
    record: dict[str, Any] = {
        "name": info.name,
        "dtype": info.dtype,
        "shape": list(info.shape),
        "checksum": original.checksum,
        "original_bytes": dtypes.nbytes_of(info.dtype, info.shape),
        "view": {"layout": layout, "rows": rows, "cols": cols},
        "pipeline": str(pipeline),
        "reason": choice.reason,
        "stages": [],
    }
    raw_parts: list[tuple[str, np.ndarray]] = []
    coded = _CodedCache(pipeline.coders)
    if pipeline.lossless:
        method = pipeline.methods[0]
        stored = method.store(array)
        record["stages"].append({"method": method.name, "config": method.config, "resolved": {}, "parts": list(stored)})
        raw_parts += [(f"0.{method.name}.{k}", v) for k, v in stored.items()]
    else:
        residual = original.matrix(layout)
        ctx = EncodeContext(
            value_dtype=dtypes.numpy_of(info.dtype),
            float_dtype=_float_dtype(info.dtype),
            reference_sq=original.matrix_sq_norm(layout) * budget_scale,
            seed=seed,
            coded_size=lambda part: coded(part)[0].size,
            step_shifts=step_shifts,
            feedback=feedback,
            prepared_feedback=prepared_feedback,
        )
        row_losses = None
        for i, method in enumerate(pipeline.methods):
            out = method.encode(residual, ctx)
            stage = {"method": method.name, "config": method.config, "resolved": out.resolved}
            parts, approximation = out.parts, out.approximation
            if pipeline.values is not None and method.value_coded:
                names = tuple(name for name, part in out.parts.items() if is_value_part(part))
                parts, stage["values"] = encode_parts(pipeline.values, out.parts, names, seed, ctx.coded_size)
                decoded = decode_parts(parts, stage["values"], VALUE_CODERS)
                approximation = method.decode(decoded, out.resolved, residual.shape)
            stage["parts"] = list(parts)
            record["stages"].append(stage)
            raw_parts += [(f"{i}.{method.name}.{k}", v) for k, v in parts.items()]
            if i + 1 < len(pipeline.methods):
                residual = residual - approximation
            row_losses = out.row_losses
        record["budget_scale"] = budget_scale
    coded_parts = [code_part(name, value, info.name, pipeline.coders, coded) for name, value in raw_parts]
    record["value_coder"] = None if pipeline.values is None else stage_text(pipeline.values)
    record["coders"] = [stage_text(c) for c in pipeline.coders]
    record["parts"] = [p.record for p in coded_parts]
    record["stored_bytes"] = sum(p.record["nbytes"] for p in coded_parts)
    encoded = EncodedTensor(record, coded_parts)
    encoded.row_losses = None if pipeline.lossless else row_losses
    return encoded


_STORED_FLOATS = ("F16", "BF16", "F32", "F64")


def _float_dtype(dtype: str) -> np.dtype:
    """Where computed values are stored: the tensor's own float type if it is a common one, else F32."""
    return dtypes.numpy_of(dtype if dtype in _STORED_FLOATS else "F32")


def measure(original: np.ndarray, decoded: np.ndarray, dtype: str, prepared: Original | None = None) -> dict[str, Any]:
    """Metrics of the decoded tensor against the original (bit-exact shortcut where bytes match);
    ``prepared``: the original as :class:`Original`, to reuse its float64 values and norm."""
    identical = same_bytes(original, decoded)
    if not dtypes.is_real_numeric(dtype):
        # Only keep stores these; without a norm, a changed byte counts as an infinite error.
        return exact_metrics(None) if identical else {**exact_metrics(None), "exact": False, "rel_error": math.inf}
    if identical:
        return exact_metrics(original)
    return tensor_metrics(original, decoded, prepared.reference if prepared is not None else None)


class _CodedCache:
    """``coded_bytes`` for one tensor's encoding, remembered per array object: a stage that chooses a
    layout by its coded size has coded the array it keeps, and storing it need not code it again."""

    def __init__(self, coders) -> None:
        self.coders = coders
        self._seen: dict[int, tuple[np.ndarray, tuple[np.ndarray, str | None]]] = {}

    def __call__(self, array: np.ndarray) -> tuple[np.ndarray, str | None]:
        hit = self._seen.get(id(array))
        if hit is not None and hit[0] is array:
            return hit[1]
        result = coded_bytes(array, self.coders)
        self._seen[id(array)] = (array, result)  # the reference keeps the id from being reused
        return result


def code_part(name: str, value: np.ndarray, tensor: str, coders, coded=None) -> CodedPart:
    """``value`` through ``coders`` (each kept only where it makes the bytes smaller), keyed
    ``<tensor>/<name>`` in the container. ``coded``: a :class:`_CodedCache` to reuse."""
    dtype = dtypes.name_of(value.dtype)
    stored, codec = coded(value) if coded is not None else coded_bytes(value, coders)
    record = {
        "name": name,
        "key": f"{tensor}/{name}",
        "dtype": dtype,
        "shape": list(value.shape),
        "codec": codec,
        "nbytes": int(stored.size),
        "checksum": checksum(stored),
    }
    return CodedPart(record, stored)


def coded_bytes(value: np.ndarray, coders) -> tuple[np.ndarray, str | None]:
    """The bytes (1-D uint8) that store ``value`` after ``coders`` and the codec id (None: raw)."""
    stored = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    codec = None
    for coder in coders:
        for variant, coded in coder.encode(stored, value.dtype.itemsize):
            if len(coded) < stored.size:
                stored, codec = np.frombuffer(coded, dtype=np.uint8), variant
    return stored, codec


def decode_part(part: Mapping[str, Any], stored: np.ndarray) -> np.ndarray:
    """A part's array from its stored bytes (checksum already verified by the caller)."""
    shape = tuple(part["shape"])
    size = dtypes.nbytes_of(part["dtype"], shape)
    data = stored.reshape(-1)
    numpy_dtype = dtypes.numpy_of(part["dtype"])
    if part["codec"] is not None:
        coder_cls = CODERS.get(str(part["codec"]).split("+", 1)[0])
        if coder_cls is None:
            raise CorruptArchiveError(f"part {part['key']!r} uses unknown codec {part['codec']!r}")
        coder = coder_cls(**resolve_config(coder_cls, {}))
        itemsize = numpy_dtype.itemsize if numpy_dtype is not None else 1
        data = np.frombuffer(coder.decode(part["codec"], memoryview(data), size, itemsize), dtype=np.uint8)
    if data.size != size:
        raise CorruptArchiveError(f"part {part['key']!r} has {data.size} bytes, its dtype and shape need {size}")
    return data if numpy_dtype is None else data.view(numpy_dtype).reshape(shape)


def decode_tensor(record: Mapping[str, Any], load: Callable[[Mapping[str, Any]], np.ndarray]) -> np.ndarray:
    """The tensor that ``record`` describes, in its own dtype and shape.

    ``load(part_record)`` returns a part's stored bytes.
    """
    shape = tuple(record["shape"])
    numpy_dtype = dtypes.numpy_of(record["dtype"])
    parts = {p["name"]: decode_part(p, load(p)) for p in record["parts"]}
    stages = record["stages"]
    first = _method(stages[0])
    if isinstance(first, LosslessMethod):
        data = first.restore(_stage_parts(parts, 0, stages[0]))
        if numpy_dtype is None:
            return data
        return data.view(np.uint8).view(numpy_dtype).reshape(shape)
    rows, cols = record["view"]["rows"], record["view"]["cols"]
    total = np.zeros((rows, cols), dtype=np.float64)
    for i, stage in enumerate(stages):
        method = _method(stage)
        if not isinstance(method, Method):
            raise CorruptArchiveError(f"tensor {record['name']!r}: stage {i} ({stage['method']}) cannot follow others")
        method_parts = decode_parts(_stage_parts(parts, i, stage), _values_record(stage), VALUE_CODERS)
        total += method.decode(method_parts, stage["resolved"], (rows, cols))
    # cast first: the axis move then copies the tensor's own type, not float64
    return from_matrix(cast_back(total, numpy_dtype), shape, record["view"]["layout"])


def check_decoded(record: Mapping[str, Any], decoded: np.ndarray) -> None:
    """CorruptArchiveError unless ``decoded`` has the bytes its record promises: the original's
    checksum for a bit-exact tensor, ``decoded_checksum`` for a lossy one (format 2.1; older records
    have none, and only their exact tensors are checked)."""
    expected = record["checksum"] if record["metrics"]["exact"] else record.get("decoded_checksum")
    if expected is not None and not matches(decoded, expected):
        what = "the original's" if record["metrics"]["exact"] else "the recorded"
        raise CorruptArchiveError(f"decodes to bytes that differ from {what} checksum (damaged manifest?)")


def _method(stage: Mapping[str, Any]):
    cls = METHODS.get(stage["method"])
    if cls is None:
        raise CorruptArchiveError(f"unknown method {stage['method']!r} (written by a newer sparsify?)")
    try:
        return cls(**check_config(cls, stage["config"]))
    except UsageError as exc:
        raise CorruptArchiveError(f"invalid stage config: {exc}") from None


def _values_record(stage: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    values = stage.get("values", {})
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise CorruptArchiveError(f"stage {stage['method']}: malformed value coding record")
    return values


def _stage_parts(parts: Mapping[str, np.ndarray], index: int, stage: Mapping[str, Any]) -> dict[str, np.ndarray]:
    prefix = f"{index}.{stage['method']}."
    try:
        return {name: parts[prefix + name] for name in stage["parts"]}
    except KeyError as exc:
        raise CorruptArchiveError(f"missing part {prefix}{exc.args[0]}") from None
