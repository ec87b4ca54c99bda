"""sparsify: compress saved neural-network weights.

The Python API (the CLI is a thin shell over it)::

    import sparsify
    report = sparsify.compress("model.safetensors", pipeline="threshold:max_error=0.05")
    sparsify.inspect("model.sparsify")
    sparsify.decompress("model.sparsify", "restored.safetensors")
    sparsify.verify("model.sparsify", against="model.safetensors").ok
"""

__version__ = "0.1.0"

from sparsify.api import compress, decompress, inspect, verify  # noqa: E402
from sparsify.errors import (  # noqa: E402
    CorruptArchiveError,
    ExitCode,
    GateFailed,
    InputError,
    OutputError,
    SparsifyError,
    UsageError,
)

__all__ = [
    "compress",
    "decompress",
    "inspect",
    "verify",
    "SparsifyError",
    "UsageError",
    "InputError",
    "CorruptArchiveError",
    "OutputError",
    "GateFailed",
    "ExitCode",
    "__version__",
]
