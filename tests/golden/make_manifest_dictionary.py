"""How sparsify/archive/manifest-3.0.dict was made (once, for format 3.0). Do not run it to replace
that file: every 3.0 archive's manifest is compressed against those exact bytes, and a reader needs
them to read it. A later dictionary is a new manifest codec (docs/FORMAT.md §4.0).

    .venv/bin/python tests/golden/make_manifest_dictionary.py OUT.dict

The dictionary is zstd "raw content": text in which the compressor finds the manifest's recurring
strings (field names, method, codec and pipeline names, record layouts, common tensor names) so that
a small model's manifest costs its information (checksums, sizes, figures), not its vocabulary. It
is the manifests of the sample models under seven pipelines, each cut to its top level and two
tensor records, checksums zeroed, preceded by common tensor names of transformer checkpoints; the
most common kinds (lossless, then target ratio) last, where matches are cheapest. Run today it gives
other bytes wherever the manifests have changed since (the rate controller's plan records, for one):
the committed file, checked by sparsify/archive/dictionary.py, is the reference.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import sparsify
from sparsify.archive.reader import Archive

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
RUNS = [  # least common first
    ("digits_mlp.safetensors", {"pipeline": "svd:rank=8+zstd"}),
    ("digits_mlp.safetensors", {"pipeline": "threshold:sparsity=0.9+zstd"}),
    ("digits_mlp.safetensors", {"pipeline": "threshold:sparsity=0.7+int8+zstd"}),
    ("crepe-tiny/weights.h5", {"pipeline": "threshold:max_error=0.05+zstd", "max_error": 0.05}),
    ("digits_mlp.npz", {"pipeline": "keep+zstd"}),
    ("digits_mlp_bf16.safetensors", {"target_ratio": 8}),
    ("digits_mlp.safetensors", {"pipeline": "keep+zstd"}),
]
NAMES = (
    "model.embed_tokens.weight model.layers.0.self_attn.q_proj.weight k_proj v_proj o_proj mlp.gate_proj.weight "
    "up_proj down_proj input_layernorm post_attention_layernorm model.norm.weight lm_head.weight "
    "bert.embeddings.word_embeddings.weight position_embeddings token_type_embeddings LayerNorm.bias "
    "encoder.layer.0.attention.self.query.weight key value attention.output.dense.weight intermediate.dense.bias "
    "output.dense.weight pooler.dense transformer.h.0.attn.c_attn.weight mlp.c_fc.weight ln_1 ln_2 wte wpe "
    "conv1d/kernel:0 dense/bias:0 model_weights batch_normalization gamma beta moving_mean moving_variance"
)


def manifest_of(path: Path) -> dict:
    """The manifest of an archive, as its reader gives it."""
    with Archive(path) as archive:
        return archive.manifest


def skeleton(manifest: dict) -> str:
    """The manifest with one small lossless tensor record and one other, checksums zeroed."""
    tensors = manifest["tensors"]
    small = [t for t in tensors if t["metrics"]["exact"] and t["original_bytes"] < 4096]
    other = [t for t in tensors if t not in small]
    text = json.dumps({**manifest, "tensors": small[:1] + other[:1]}, ensure_ascii=False, separators=(",", ":"))
    return re.sub(r"xxh3:[0-9a-f]{16}", "xxh3:0000000000000000", text)


def main(out: Path) -> None:
    pieces = [NAMES]
    with tempfile.TemporaryDirectory() as work:
        for i, (source, options) in enumerate(RUNS):
            archive = Path(work) / f"{i}.sparsify"
            sparsify.compress(SAMPLES / source, archive, **options)
            pieces.append(skeleton(manifest_of(archive)))
    out.write_bytes("\n".join(pieces).encode("utf-8"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
