"""The registry of pipeline stages: decomposition methods and byte coders, by name."""

from __future__ import annotations

from sparsify.coders.zstd import Zstd
from sparsify.methods.base import Coder, EncodeContext, LosslessMethod, Method, Stage, StageOutput
from sparsify.methods.keep import Keep
from sparsify.methods.ksvd import KSVD
from sparsify.methods.lasso import Lasso
from sparsify.methods.quant import Quant
from sparsify.methods.svd import SVD
from sparsify.methods.threshold import Threshold
from sparsify.methods.values import Bf16, Codebook, Fp16, Fp32, Int4, Int8, ValueCoder

METHODS: dict[str, type[Stage]] = {cls.name: cls for cls in (Keep, Threshold, SVD, Lasso, KSVD, Quant)}
VALUE_CODERS: dict[str, type[ValueCoder]] = {cls.name: cls for cls in (Fp32, Fp16, Bf16, Int8, Int4, Codebook)}
CODERS: dict[str, type[Coder]] = {cls.name: cls for cls in (Zstd,)}

__all__ = [
    "METHODS",
    "VALUE_CODERS",
    "CODERS",
    "ValueCoder",
    "Coder",
    "EncodeContext",
    "LosslessMethod",
    "Method",
    "Stage",
    "StageOutput",
]
