"""sparsify: compress saved neural-network weights.

The Python API (the CLI is a thin shell over it)::

    import sparsify
    report = sparsify.compress("model.safetensors", pipeline="threshold:max_error=0.05")
    sparsify.inspect("model.sparsify")
    sparsify.decompress("model.sparsify", "restored.safetensors")
    sparsify.verify("model.sparsify", against="model.safetensors").ok
    with sparsify.open("model.sparsify") as f:   # like safetensors' safe_open: one tensor at a time
        weight = f.get_tensor("fc1.weight")
    tensors = sparsify.load("model.sparsify")    # name -> numpy array
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
from sparsify.lazy import load, open  # noqa: E402

__all__ = [
    "compress",
    "decompress",
    "inspect",
    "verify",
    "open",
    "load",
    "SparsifyError",
    "UsageError",
    "InputError",
    "CorruptArchiveError",
    "OutputError",
    "GateFailed",
    "ExitCode",
    "__version__",
]
