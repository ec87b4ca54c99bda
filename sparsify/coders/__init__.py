"""Byte stages applied to every stored part."""

# The coders are stages of the registry (sparsify.methods), whose package imports them: loading it
# first lets ``import sparsify.coders.zstd`` work on its own too (not only after sparsify.methods).
import sparsify.methods  # noqa: F401
