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

Importing sparsify is cheap: the functions load their modules (numpy, ml_dtypes, the methods) on
first use.
"""

__version__ = "0.1.0"

from sparsify.errors import (  # noqa: E402
    CorruptArchiveError,
    ExitCode,
    GateFailed,
    InputError,
    OutputError,
    SparsifyError,
    UsageError,
)

# public name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {
    "compress": "sparsify.api",
    "decompress": "sparsify.api",
    "inspect": "sparsify.inspection",
    "verify": "sparsify.api",
    "open": "sparsify.lazy",
    "load": "sparsify.lazy",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparsify' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
