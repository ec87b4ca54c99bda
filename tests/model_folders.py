"""Small generated model folders in the Hugging Face layout, for the folder tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

HIDDEN, LAYERS, VOCAB = 64, 4, 300


def transformer_tensors(seed: int = 0, hidden: int = HIDDEN, layers: int = LAYERS, vocab: int = VOCAB):
    """BERT-shaped weights (embeddings, per-layer attention and MLP, LayerNorms), fp32, seeded."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {"embeddings.word_embeddings.weight": w(vocab, hidden)}
    tensors["embeddings.LayerNorm.weight"] = (1 + w(hidden, scale=0.01)).astype(np.float32)
    tensors["embeddings.LayerNorm.bias"] = w(hidden, scale=0.01)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            tensors[p + name + ".weight"] = w(hidden, hidden)
            tensors[p + name + ".bias"] = w(hidden, scale=0.01)
        tensors[p + "intermediate.dense.weight"] = w(4 * hidden, hidden)
        tensors[p + "intermediate.dense.bias"] = w(4 * hidden, scale=0.01)
        tensors[p + "output.dense.weight"] = w(hidden, 4 * hidden)
        tensors[p + "output.dense.bias"] = w(hidden, scale=0.01)
        tensors[p + "output.LayerNorm.weight"] = (1 + w(hidden, scale=0.01)).astype(np.float32)
    return tensors


def make_hf_folder(root: Path, shards: int = 3, seed: int = 0, bf16_last: bool = True, hidden: int = HIDDEN) -> Path:
    """A sharded Hugging Face-style checkpoint folder: ``model-0000i-of-0000n.safetensors`` with
    ``model.safetensors.index.json``, config, tokenizer, README and a sub-folder; the last shard in
    bfloat16 (mixed-precision checkpoints exist). Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    tensors = transformer_tensors(seed, hidden=hidden)
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in sorted(group)}
        if bf16_last and i == shards - 1:
            part = {n: a.astype(ml_dtypes.bfloat16) for n, a in part.items()}
        save_file(part, str(root / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
        total += sum(a.nbytes for a in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {"architectures": ["BertModel"], "hidden_size": HIDDEN, "num_hidden_layers": LAYERS}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(VOCAB)}}}))
    (root / "README.md").write_text("# a tiny model\n\nGenerated for sparsify's tests.\n")
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return root


def folder_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative name, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_like_from_pretrained(root: Path) -> dict[str, np.ndarray]:
    """The model's tensors as ``transformers``' ``from_pretrained`` finds them: the shard index's
    weight map, each shard opened with ``safetensors.safe_open`` (what transformers itself calls)."""
    from safetensors import safe_open

    index = json.loads((root / "model.safetensors.index.json").read_text())
    out = {}
    for name, shard in index["weight_map"].items():
        with safe_open(str(root / shard), framework="np") as f:
            out[name] = f.get_tensor(name)
    return out
