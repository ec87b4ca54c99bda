"""Run as a script in a subprocess with a given BLAS/SIMD environment: compress the sample models with
every machine-independent pipeline, decode archives of the BLAS-backed methods, and print one JSON
object of SHA-256 digests (the test's own, compared with the committed golden files; the archives
themselves hold XXH3-64 checksums, computed in each environment, and so does the decoded digest: the
format's checksum must be the same on every CPU, docs/FORMAT.md §10.2). ``test_determinism.py``
compares the objects of several environments.

    python tests/determinism_probe.py OUT_DIR BLAS_ARCHIVES_DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from golden.make_golden import GOLDEN, SAMPLES  # noqa: E402

import sparsify  # noqa: E402
from sparsify.archive import Archive  # noqa: E402
from sparsify.checksum import checksum  # noqa: E402

# Archives whose every byte must be the same on every machine: the golden set and more.
INDEPENDENT = {
    **GOLDEN,
    "auto.sparsify": ("digits_mlp.safetensors", {"pipeline": "auto", "max_error": 0.05}),
    "target_error.sparsify": ("digits_mlp.h5", {"target_error": 0.1}),
    "crepe.ratio6.sparsify": ("crepe-tiny/weights.h5", {"target_ratio": 6}),
    "npz.ratio8.sparsify": ("digits_mlp.npz", {"target_ratio": 8}),
    "codebook.sparsify": ("digits_mlp.safetensors", {"pipeline": "quant:codebook=16+zstd"}),
    "step.sparsify": ("digits_mlp_bf16.safetensors", {"pipeline": "quant:max_error=0.02+zstd"}),
    "int4.sparsify": ("digits_mlp.safetensors", {"pipeline": "threshold:sparsity=0.5+int4:group=64+zstd"}),
    "fp16.sparsify": ("digits_mlp.safetensors", {"pipeline": "threshold:max_error=0.1+fp16+zstd"}),
}

# Pipelines whose factors come from BLAS/LAPACK (docs/FORMAT.md, "Determinism"): their archives are
# made once, and every environment must decode them to the same bytes and measure the same errors.
BLAS_BACKED = {
    "svd.sparsify": ("digits_mlp.safetensors", {"pipeline": "svd:rank=8+zstd"}),
    "svd_block.sparsify": ("digits_mlp.safetensors", {"pipeline": "svd:max_error=0.3,block=32+zstd"}),
    "svd_sparse.sparsify": ("digits_mlp.safetensors", {"pipeline": "svd:rank=4+threshold:sparsity=0.95+zstd"}),
    "lasso_dct.sparsify": ("digits_mlp.safetensors", {"pipeline": "lasso:max_error=0.2,dict=dct,segment=16+zstd"}),
    "lasso_learned.sparsify": (
        "digits_mlp.safetensors",
        {"pipeline": "lasso:max_error=0.3,dict=learned,segment=16,atoms=32+zstd"},
    ),
    "ksvd.sparsify": ("digits_mlp.safetensors", {"pipeline": "ksvd:atoms=16,nnz=2,segment=16+zstd"}),
}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make(specs: dict, folder: Path) -> dict[str, str]:
    """Compress each spec into ``folder``; the archives' digests by name."""
    out = {}
    for name, (source, options) in specs.items():
        path = folder / name
        sparsify.compress(SAMPLES / source, path, force=True, **options)
        out[name] = digest(path.read_bytes())
    return out


def decoded(folder: Path) -> dict[str, str]:
    """Per BLAS-backed archive: a digest of every decoded tensor, of its XXH3-64 checksum as computed in
    this environment (the archive's decoded_checksum, §8.4) and of the errors ``verify`` measures."""
    out = {}
    for name, (source, _) in BLAS_BACKED.items():
        h = hashlib.sha256()
        with Archive(folder / name) as archive:
            for record in archive.tensors:
                decoded = archive.decode(record)
                h.update(decoded.tobytes())
                h.update(checksum(decoded).encode())
        check = sparsify.verify(folder / name, against=SAMPLES / source)
        h.update(json.dumps(check.as_dict()["tensors"], sort_keys=True).encode())
        out[name] = h.hexdigest()
    return out


if __name__ == "__main__":
    out_dir, blas_dir = Path(sys.argv[1]), Path(sys.argv[2])
    result = {"archives": make(INDEPENDENT, out_dir), "decoded": decoded(blas_dir)}
    result["blas_archives"] = make(BLAS_BACKED, out_dir)  # reported, not required to match
    print(json.dumps(result))
