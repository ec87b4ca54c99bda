"""A transformer-shaped checkpoint of more than 100 tensors in one safetensors file, for the report
tests (big models are summarised) and the terminal captures: small tensors, so it compresses in a
second or two."""

from __future__ import annotations

from pathlib import Path

from model_folders import transformer_tensors
from safetensors.numpy import save_file

LAYERS, HIDDEN = 8, 32
TENSORS = 3 + 13 * LAYERS
"""107: embeddings (3) and per layer query, key, value, attention output, intermediate and output
dense layers (weights and biases) and a LayerNorm weight."""
LOSSLESS = 2 + 7 * LAYERS
"""58: the 1-D biases and LayerNorm weights, stored losslessly by default."""


def write_transformer(path: Path, seed: int = 0) -> Path:
    """Write the checkpoint (fp32, seeded) to ``path``; returns ``path``."""
    save_file(transformer_tensors(seed, hidden=HIDDEN, layers=LAYERS), str(path), metadata={"format": "pt"})
    return path
