"""The registry of pipeline stages: decomposition methods and byte coders, by name."""

from __future__ import annotations

from sparsify.coders.zstd import Zstd
from sparsify.methods.base import Coder, EncodeContext, LosslessMethod, Method, Stage, StageOutput
from sparsify.methods.keep import Keep
from sparsify.methods.ksvd import KSVD
from sparsify.methods.lasso import Lasso
from sparsify.methods.svd import SVD
from sparsify.methods.threshold import Threshold

METHODS: dict[str, type[Stage]] = {cls.name: cls for cls in (Keep, Threshold, SVD, Lasso, KSVD)}
CODERS: dict[str, type[Coder]] = {cls.name: cls for cls in (Zstd,)}

__all__ = ["METHODS", "CODERS", "Coder", "EncodeContext", "LosslessMethod", "Method", "Stage", "StageOutput"]
