"""The contract of a decomposition method: one matrix in, named parts out, and back.

A method is a pure function pair on numpy arrays. ``encode`` receives the matrix to approximate (the
tensor's matrix view, or the residual the earlier stages of a pipeline left) and returns the parts to
store plus what they decode to; ``decode`` rebuilds that approximation from the stored parts alone.
Budgets are resolved inside ``encode`` and returned in ``resolved`` so the manifest records them.

Adding a method = one module with a subclass of :class:`Method` registered in
:mod:`sparsify.methods`; parameters are declared as :class:`sparsify.params.Param` specs, which the
pipeline parser validates and ``sparsify methods`` prints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sparsify.params import Param


@dataclass(frozen=True)
class EncodeContext:
    """What a stage knows beyond its input matrix.

    value_dtype:  numpy dtype in which to store values copied from the tensor (its own type, so
                  kept weights are bit-exact copies).
    float_dtype:  numpy dtype in which to store computed values (factors, dictionaries, codes): the
                  tensor's own type for F16/BF16/F32/F64 tensors, float32 otherwise.
    reference_sq: the squared norm that ``max_error`` budgets are relative to: ||W||_F^2 of the
                  original tensor (float64), even when the stage encodes a residual. The codec may
                  pass less, to tighten a budget that rounding on storage would otherwise break.
    seed:         seed for any randomness (deterministic output).
    coded_size:   bytes that an index array (1-D) takes once through the pipeline's byte coders, so
                  that sparse layouts can be chosen by their stored size; None: raw size.
    step_shifts:  the quarter-octave step shifts (int8) per row (m,) and per column (n,) of the
                  matrix, either None, that an importance gives (``quant:...,weighted=true``); None:
                  the tensor has no importance.
    feedback:     the factor V (n, n) of the tensor's input moments (:func:`sparsify.feedback.
                  feedback_factor`, ``quant:step=...,feedback=true``); None: it has none.
    prepared_feedback: feedback results already made for this matrix and several steps
                  (:class:`sparsify.feedback.Prepared`, rate control's estimates), taken where they match.
    """

    value_dtype: np.dtype
    float_dtype: np.dtype
    reference_sq: float
    seed: int = 0
    coded_size: Callable[[np.ndarray], int] | None = None
    step_shifts: tuple[np.ndarray | None, np.ndarray | None] | None = None
    feedback: np.ndarray | None = None
    prepared_feedback: Any = None

    def error_budget_sq(self, max_error: float) -> float:
        """The largest ||W - W_hat||_F^2 that a ``max_error`` budget allows."""
        return max_error * max_error * self.reference_sq


@dataclass
class StageOutput:
    """The result of one stage.

    parts:         named arrays to store (little-endian, any shape).
    resolved:      JSON-able budget values actually used (e.g. the threshold that a max_error gave).
    approximation: float64 array of the input's shape: exactly what ``decode(parts)`` returns.
    row_losses:    (m,) float64 output error per row under the input moments, where the stage fed
                   its errors forward (:func:`sparsify.feedback.quantise_with_feedback`), else None.
    """

    parts: dict[str, np.ndarray]
    resolved: dict[str, Any]
    approximation: np.ndarray
    row_losses: np.ndarray | None = None


class Stage(ABC):
    """A pipeline stage: declared parameters and docs; instances are values (equal configs, equal)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    example: ClassVar[str]

    def __init__(self, **config: Any) -> None:
        self.config = dict(config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config == other.config  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.config.items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"


VIEW = Param(
    "view",
    str,
    "matrix view: output channels on the first or last axis [default: first for safetensors/npz, "
    "last for HDF5 (Keras kernels)]",
    choices=("first", "last"),
)


class Method(Stage):
    """A lossy decomposition stage (matrix -> parts) that composes additively with others.

    Every method accepts :data:`VIEW`; the pipeline checks that its stages agree on it.
    ``value_coded``: whether a pipeline's value coder (int8, codebook, ...) applies to its float parts.
    """

    value_coded: ClassVar[bool] = True

    @abstractmethod
    def encode(self, target: np.ndarray, ctx: EncodeContext) -> StageOutput:
        """Approximate ``target`` (float64, shape (m, n)) by stored parts."""

    @abstractmethod
    def decode(
        self, parts: Mapping[str, np.ndarray], resolved: Mapping[str, Any], shape: tuple[int, int]
    ) -> np.ndarray:
        """The float64 (m, n) approximation that ``parts`` encode (raise CorruptArchiveError on bad parts)."""


class LosslessMethod(Stage):
    """A stage that stores the tensor itself, in its own element type, and restores it bit for bit.

    It takes the tensor as read (any dtype, any shape; packed types as uint8 bytes), not a matrix view,
    and must be the pipeline's only decomposition stage.
    """

    @abstractmethod
    def store(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """The parts that hold ``array``."""

    @abstractmethod
    def restore(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """The array back from its parts (flat; the codec gives it dtype and shape)."""


class Coder(Stage):
    """A byte stage applied to every stored part, e.g. zstd.

    It may offer several variants (a transform before compressing, say); the codec keeps whichever
    candidate is smallest, raw bytes included, and records the variant's id in the part record.
    """

    @abstractmethod
    def encode(self, data: np.ndarray, itemsize: int) -> list[tuple[str, bytes]]:
        """Candidate codings ``(codec id, bytes)`` of ``data`` (1-D uint8; elements of ``itemsize`` bytes)."""

    @abstractmethod
    def decode(self, codec: str, data: memoryview, size: int, itemsize: int) -> bytes | bytearray | memoryview:
        """The ``size`` original bytes of ``data`` coded as ``codec`` (CorruptArchiveError when they do not fit)."""

    verified: frozenset[str] = frozenset()
    """Codec ids whose :meth:`encode` has itself checked that its coding decodes to the data (the
    lossless check then need not decode them again)."""

    def decode_blocks(self, codec: str, data: memoryview, size: int, itemsize: int) -> Iterator[np.ndarray]:
        """The same bytes as :meth:`decode`, in consecutive pieces (1-D uint8), for checks that need
        not hold the whole part; by default one piece."""
        yield np.frombuffer(self.decode(codec, data, size, itemsize), dtype=np.uint8)
