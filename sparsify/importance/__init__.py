"""How much each weight matters: the importance file of ``--importance FILE``.

With an importance file a size target (``--target-ratio``, ``--target-size``) minimises the
*weighted* squared error Σ a ΔW² over the model -- for a linear layer's weight W (out, in) with
per-input-channel importance a_j = E[x_j²] (the second moment of its input activations), that is
E‖ΔW x‖², the energy of the error the layer adds to its output; with the diagonal K-FAC factors of
the Fisher information, a_ij = E[g_i²] E[x_j²], it is the model's loss increase to second order.

The file is a safetensors file of real floating-point tensors, each named after a tensor of the
model (any weight file of a folder model), finite and >= 0, in one of these forms:

* ``NAME``, shape = the weight's shape: one importance per weight (a full diagonal Fisher);
* ``NAME``, shape = (the weight's last axis,): per column, i.e. per *input* channel of a torch
  ``nn.Linear`` weight (out, in);
* ``NAME:rows``, shape = (the weight's first axis,): per row (a torch weight's output channels, or
  the token frequencies of an embedding table), alone or multiplying the ``NAME`` entry;
* ``NAME:inputs``, shape (n, n) for a 2-D weight (out, n) stored as torch stores a linear layer's:
  the second-moment matrix H = E[x xᵀ] of its inputs (K-FAC's input factor; symmetric, positive
  semi-definite, n <= :data:`MAX_INPUTS`), in place of a ``NAME`` entry, alone or with ``NAME:rows``.
  The importance per column is then H's damped diagonal, H_jj + δ (δ: :data:`sparsify.feedback.DAMPING`
  times the mean of the diagonal), and the quantiser can feed each column's rounding error to the
  columns after it (``quant:step=...,feedback=true``, :mod:`sparsify.feedback`): the error it
  minimises is then Σ_i r_i Δw_i (H + δ I) Δw_iᵀ, the layer's output error weighted by the rows.

A tensor the file does not name weighs 1 per weight (plain squared error). The values' overall
scale matters only against those tensors'. :mod:`sparsify.importance.recorder` records a file for a
torch model. Reading is strict (the container reader of :mod:`sparsify.container`): a file that is
not such a safetensors file, or names a tensor the model does not have, is an :class:`InputError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsify.errors import InputError
from sparsify.io.base import TensorInfo
from sparsify.metrics import as_float64
from sparsify.reproducible import sum_of_squares

ROWS_SUFFIX = ":rows"
"""Suffix of a per-row (first axis) importance entry."""
INPUTS_SUFFIX = ":inputs"
"""Suffix of an input second-moment matrix entry."""
MAX_INPUTS = 8192
"""The largest n of an ``NAME:inputs`` entry (n² float64 values are held while a tensor is encoded)."""

_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class TensorImportance:
    """The importance of one tensor's weights, as factors whose product is the per-weight
    importance a (float64, finite, >= 0): ``full`` in the tensor's shape, ``rows`` (shape[0],)
    along the first axis, ``cols`` (shape[-1],) along the last; any may be None (a factor of 1)."""

    full: np.ndarray | None = None
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    inputs: np.ndarray | None = None  # (n, n) input moments (``NAME:inputs``); cols is then their damped diagonal
    name: str = field(default="", compare=False)  # the tensor's, for messages
    _factor: list = field(default_factory=list, compare=False, repr=False)  # the feedback factor, once made

    def feedback_factor(self) -> np.ndarray | None:
        """V of :func:`sparsify.feedback.feedback_factor` for the input moments (made once per
        instance and shared by :meth:`for_rows`'s), None without them; InputError when the moments
        are not positive semi-definite."""
        if self.inputs is None:
            return None
        if not self._factor:
            from sparsify.feedback import feedback_factor

            try:
                self._factor.append(feedback_factor(self.inputs))
            except ValueError:
                what = f"{self.name}{INPUTS_SUFFIX}" if self.name else "input moments"
                raise InputError(f"{what}: input moments that are not positive semi-definite") from None
        return self._factor[0]

    def made_factor(self) -> np.ndarray | None:
        """The feedback factor if it has been made (or adopted), without making it."""
        return self._factor[0] if self._factor else None

    def adopt_factor(self, factor: np.ndarray) -> None:
        """Take ``factor`` as the feedback factor (one made earlier of the same moments, so that it
        is not made again); a factor that is not (n, n) float64 for these moments is refused."""
        if self.inputs is None or factor.dtype != np.float64 or factor.shape != self.inputs.shape:
            raise ValueError("a feedback factor of another shape or type than the input moments'")
        if not self._factor:
            self._factor.append(factor)

    def takes_feedback(self, info: TensorInfo) -> bool:
        """Whether quantisers of the tensor ``info`` can feed their errors forward by these input
        moments (a 2-D tensor in its default view, (out, in))."""
        return self.inputs is not None and len(info.shape) == 2 and info.layout == "first"

    def for_rows(self, rows: np.ndarray) -> TensorImportance:
        """The importance of the matrix rows ``rows`` (int indices, first axis) of a 2-D tensor."""
        picked = None if self.rows is None else self.rows[rows]
        full = None if self.full is None else self.full[rows]
        return TensorImportance(full, picked, self.cols, self.inputs, self.name, self._factor)

    def scale(self, shape: tuple[int, ...]) -> np.ndarray:
        """sqrt(a), broadcastable to ``shape`` (sqrt is correctly rounded: the same on every machine)."""
        ndim = max(len(shape), 1)
        root = np.ones((1,) * ndim)
        if self.full is not None:
            root = root * np.sqrt(self.full.reshape(shape if shape else (1,)))
        if self.rows is not None:
            root = root * np.sqrt(self.rows).reshape((-1,) + (1,) * (ndim - 1))
        if self.cols is not None:
            root = root * np.sqrt(self.cols).reshape((1,) * (ndim - 1) + (-1,))
        return root

    def in_matrix(
        self, shape: tuple[int, ...], layout: str
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The factors in the tensor's matrix view (:func:`sparsify.codec.matrix_shape`, (m, n)):
        (full (m, n), per row (m,), per column (n,)), whose product is the importance of each
        matrix entry; any may be None (a factor of 1)."""
        from sparsify.codec import matrix_shape, to_matrix

        n = matrix_shape(shape, layout)[1]
        full = None if self.full is None else to_matrix(self.full.reshape(shape), layout)
        if len(shape) <= 1:  # one row: both vectors run along it
            along = [v for v in (self.rows, self.cols) if v is not None]
            return full, None, (np.prod(along, axis=0) if along else None)
        # layout first: the first axis on the rows, the last cycling along the columns; layout last:
        # the last axis on the rows, the first in blocks along the columns
        if layout == "first":
            return full, self.rows, (None if self.cols is None else np.tile(self.cols, n // shape[-1]))
        return full, self.cols, (None if self.rows is None else np.repeat(self.rows, n // shape[0]))

    def step_shifts(
        self, shape: tuple[int, ...], layout: str, feedback: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The quantiser's steps by this importance (``quant:...,weighted=true``): per row and per
        column of the matrix view, :func:`sparsify.quantize.step_shifts` of the row and column
        importance (a full importance is first reduced to its row and column sums); None for a
        factor that shifts nothing. ``feedback`` (``feedback=true`` too, with input moments): the
        columns' importance is V_jj² of the feedback factor instead of H_jj -- what column j's
        rounding error costs once the columns after it have cancelled what they can (the part of
        input j they cannot stand in for); on AntiBERTy's layers at 3-4 bits per weight these steps
        lowered the output error at the same size 1.3-1.4x below the steps by H_jj."""
        from sparsify.quantize import step_shifts

        full, rows, cols = self.in_matrix(shape, layout)
        if feedback and self.inputs is not None and layout == "first":
            cols = np.square(np.diagonal(self.feedback_factor()))
        if full is not None and full.size:  # the shifts are relative: sums serve as means
            row_sums, col_sums = np.add.reduce(full, axis=1), np.add.reduce(full, axis=0)
            rows = row_sums if rows is None else rows * row_sums
            cols = col_sums if cols is None else cols * col_sums
        return (None if rows is None else step_shifts(rows)), (None if cols is None else step_shifts(cols))

    def weighted_sq_error(self, original: np.ndarray, decoded: np.ndarray) -> float:
        """Σ a (decoded - original)² over the tensor (inf where a value is not finite in one and
        differs in the other); both arrays in the tensor's shape."""
        w, w_hat = as_float64(original), as_float64(decoded)
        with np.errstate(all="ignore"):
            diff = w_hat - w
            if not np.isfinite(diff).all():
                same = (w == w_hat) | (np.isnan(w) & np.isnan(w_hat))
                if not (same | np.isfinite(diff)).all():
                    return math.inf
                diff = np.where(same, 0.0, diff)
            return sum_of_squares(diff.reshape(w.shape if w.shape else (1,)) * self.scale(w.shape))


@dataclass(frozen=True)
class ImportanceFile:
    """An importance file as the compress jobs see it: its path (as workers see it), its stamp
    ``(size, mtime_ns)`` when it was checked, its entries' keys, and the checksum of its bytes (the
    manifest's ``options.importance``)."""

    path: str
    stamp: tuple[int, int]
    keys: frozenset[str]
    checksum: str
    # a folder of this run where the jobs keep the feedback factors they make (sparsify.work), or None
    factor_folder: str | None = field(default=None, compare=False)

    @property
    def has_inputs(self) -> bool:
        """Whether the file holds input moments (``NAME:inputs``), whose factors take seconds to make."""
        return any(key.endswith(INPUTS_SUFFIX) for key in self.keys)


def check_importance(path: str | Path, tensors: dict[str, TensorInfo]) -> ImportanceFile:
    """Validate the importance file against the model's tensors (by name); InputError naming the
    first problem. Every entry is read once here (values finite and >= 0)."""
    from sparsify.checksum import file_checksum
    from sparsify.io.safetensors_file import SafetensorsReader

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: importance file not found")
    with SafetensorsReader(path) as reader:
        entries = reader.tensors()
        if not entries:
            raise InputError(f"{path}: the importance file holds no tensors")
        names = {entry.name for entry in entries}
        for entry in entries:
            name, form = _split(entry.name)
            info = tensors.get(name)
            if info is None:
                raise InputError(f"{path}: {entry.name!r} names no tensor of the model")
            if form == "inputs" and name in names:
                raise InputError(f"{path}: {name!r} has both {name!r} and {entry.name!r}; give one of them")
            _check_entry(path, entry, info, form, reader.read(entry.name))
        stamp = reader.stamp
        digest = file_checksum(str(path))
        reader.check_unchanged()
    keys = frozenset(entry.name for entry in entries)
    return ImportanceFile(str(path.resolve()), (stamp[0], stamp[1]), keys, digest)


def _split(key: str) -> tuple[str, str]:
    """(tensor name, form: ``"rows"``, ``"inputs"`` or ``""``) of an importance file's key."""
    for suffix in (ROWS_SUFFIX, INPUTS_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix[1:]
    return key, ""


def _check_entry(path: Path, entry: TensorInfo, info: TensorInfo, form: str, values: np.ndarray) -> None:
    if entry.dtype not in _FLOAT_DTYPES:
        raise InputError(f"{path}: {entry.name!r} is {entry.dtype}; importance is a float tensor (F16/BF16/F32/F64)")
    if not info.shape:
        raise InputError(f"{path}: {entry.name!r}: {info.name!r} is a scalar; give it no importance")
    if form == "inputs":
        if len(info.shape) != 2 or info.layout != "first":
            raise InputError(f"{path}: {entry.name!r}: input moments are for a 2-D weight stored (out, in)")
        n = info.shape[1]
        if n > MAX_INPUTS:
            raise InputError(f"{path}: {entry.name!r}: {n} inputs; input moments are read for at most {MAX_INPUTS}")
        allowed = {(n, n)}
        what = f"({n}, {n}), the inputs of {info.name!r} squared"
    elif form == "rows":
        allowed = {(info.shape[0],)}
        what = f"({info.shape[0]},), the rows of {info.name!r}"
    else:
        allowed = {tuple(info.shape), (info.shape[-1],)}
        what = f"{tuple(info.shape)} or ({info.shape[-1]},), the shape or the last axis of {info.name!r}"
    if tuple(entry.shape) not in allowed:
        raise InputError(f"{path}: {entry.name!r} has shape {tuple(entry.shape)}; expected {what}")
    wide = as_float64(values)
    if form == "inputs":
        if not (np.isfinite(wide).all() and (np.diagonal(wide) >= 0).all()):
            raise InputError(f"{path}: {entry.name!r} holds non-finite values or a negative diagonal")
        if not np.array_equal(wide, wide.T):
            raise InputError(f"{path}: {entry.name!r} is not symmetric")
        return
    if not (np.isfinite(wide).all() and (wide >= 0).all()):
        raise InputError(f"{path}: {entry.name!r} holds negative or non-finite values")


def tensor_importance(
    source: ImportanceFile | None, info: TensorInfo, read: Callable[[str], np.ndarray]
) -> TensorImportance | None:
    """The importance of one tensor (None: no file, or the file does not name it), its entries
    read with ``read(key)`` (the caller's reader of the checked file)."""
    if source is None or not {info.name, info.name + ROWS_SUFFIX, info.name + INPUTS_SUFFIX} & source.keys:
        return None
    values = as_float64(read(info.name)) if info.name in source.keys else None
    rows = as_float64(read(info.name + ROWS_SUFFIX)) if info.name + ROWS_SUFFIX in source.keys else None
    if info.name + INPUTS_SUFFIX in source.keys:
        from sparsify.feedback import damped_diagonal

        inputs = as_float64(read(info.name + INPUTS_SUFFIX))
        return TensorImportance(rows=rows, cols=damped_diagonal(inputs), inputs=inputs, name=info.name)
    if values is not None and values.ndim > 1:  # per weight
        return TensorImportance(full=values, rows=rows)
    return TensorImportance(rows=rows, cols=values)  # per column (for a 1-D tensor the same thing)
