"""Reference baselines for the lossy benchmark (``bench/lossy.py``): numpy only, independent of sparsify.

These are the weight-only post-training quantisers practitioners actually use, counted honestly
(every scale and zero point is stored and counted; nothing is entropy-coded):

* ``rtn_int8``: round-to-nearest int8 per output channel, symmetric, scale = max|row| / 127 stored as
  one float16 per row: 8 + 16 / cols bits per weight;
* ``rtn_int4_g128``: int4 in groups of 128 along each row, symmetric, scale = max|group| / 7, levels
  -7..7, one float16 scale per group: 4 + 16 / 128 bits per weight (a shorter last group, or rows
  shorter than 128, get a scale of their own: the exact count is used, not the formula);
* ``rtn_int4_g128_asym``: the asymmetric variant, scale = (max - min) / 15 per group, an integer
  zero point z = round(-min / scale) in 0..255 (8 bits), levels 0..15: 4 + (16 + 8) / 128 bits;
* ``hashed``: HashedNets weight sharing (Chen et al. 2015) WITHOUT retraining: weight w_ij goes to
  one of K buckets by a seeded multiplicative hash of its flat index, each bucket stores the mean of
  its weights (the least-squares value); storage = K float32 values and nothing per weight (the
  hash is recomputed at load), so 32 K / N bits per weight.

The scales are rounded to float16 BEFORE the weights are rounded with them (so the codes fit what is
stored); a scale that would not survive float16 (overflow / underflow) is clamped into its range. The
dequantised matrix is cast to the source's dtype (a decompressed file holds that type) before the
error is measured in float64.

Matrix view: rows = output channels. For safetensors / npz the first axis (a (out, in, ...) tensor is
viewed as out x everything else); for Keras HDF5 kernels the LAST axis (``(..., in, out)`` is moved
first). Tensors that are 1-D or have fewer than ``MIN_SIZE`` (1024) elements are kept in float and
counted at their full size for every method (sparsify's default rule, applied to the baselines too).

Model level: bits/weight = total stored bits / total elements; weighted rel. error =
sqrt(sum ||W - W_hat||_F^2 / sum ||W||_F^2) over ALL tensors (kept ones add 0 to the numerator).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np

MIN_SIZE = 1024
_F16 = np.finfo(np.float16)

# safetensors dtype names -> numpy dtypes (the float ones and common integer ones)
_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


@dataclass
class Tensor:
    """One tensor of a weight file: its values in the source dtype and where its output axis is."""

    name: str
    array: np.ndarray
    out_axis: int  # 0 (safetensors / npz) or -1 (Keras HDF5)

    @property
    def compressible(self) -> bool:
        """Quantised by every method (else kept in float): >= 2-D, float, at least MIN_SIZE elements."""
        a = self.array
        return a.ndim >= 2 and a.size >= MIN_SIZE and (a.dtype.kind == "f" or a.dtype == ml_dtypes.bfloat16)

    def matrix(self) -> np.ndarray:
        """float64 (out, everything else) view."""
        a = np.moveaxis(self.array, self.out_axis, 0)
        return a.reshape(a.shape[0], -1).astype(np.float64)

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`matrix`, cast to the source dtype."""
        shape = np.moveaxis(np.empty(self.array.shape, dtype=np.bool_), self.out_axis, 0).shape
        return np.moveaxis(matrix.reshape(shape), 0, self.out_axis).astype(self.array.dtype)


# --- reading weight files (no sparsify) ---------------------------------------------------------


def read_safetensors(path: Path) -> list[Tensor]:
    """A safetensors file's tensors, parsed by hand (safetensors.numpy cannot read bfloat16)."""
    raw = Path(path).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    base = 8 + size
    out = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
        array = np.frombuffer(raw[base + start : base + end], dtype=dtype.newbyteorder("<")).reshape(spec["shape"])
        out.append(Tensor(name, array.astype(dtype), 0))
    return out


def read_hdf5(path: Path) -> list[Tensor]:
    """Every dataset of an HDF5 file (Keras: kernels are (..., in, out), so the output axis is -1)."""
    out: list[Tensor] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.shape:
            out.append(Tensor(name, obj[()], -1))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def read_weights(path: Path) -> list[Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in {".h5", ".hdf5", ".keras"}:
        return read_hdf5(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            return [Tensor(k, f[k], 0) for k in f.files]
    raise ValueError(f"unsupported weight file {path}")


# --- the quantisers: (out, cols) float64 matrix -> (dequantised matrix, stored bits) ----------------


def _fp16_scale(scale: np.ndarray) -> np.ndarray:
    """Scales as stored (float16, clamped into its normal range; 0 stays 0), back in float64."""
    clamped = np.where(scale > 0, np.clip(scale, float(_F16.tiny), float(_F16.max)), 0.0)
    return clamped.astype(np.float16).astype(np.float64)


def _groups(matrix: np.ndarray, group: int) -> tuple[np.ndarray, int]:
    """(rows, groups, width) view, the last group padded with NaN; group 0 = one group per row."""
    rows, cols = matrix.shape
    width = cols if group <= 0 or group >= cols else group
    groups = -(-cols // width)
    padded = np.full((rows, groups * width), np.nan)
    padded[:, :cols] = matrix
    return padded.reshape(rows, groups, width), groups


def rtn_symmetric(matrix: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, int]:
    """Symmetric RTN: levels -(2^(b-1) - 1)..2^(b-1) - 1, one float16 scale per group."""
    top = 2 ** (bits - 1) - 1
    g, groups = _groups(matrix, group)
    scale = _fp16_scale(np.nanmax(np.abs(g), axis=2, keepdims=True) / top)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(g / safe), -top, top)
    approx = (q * scale).reshape(matrix.shape[0], -1)[:, : matrix.shape[1]]
    return approx, bits * matrix.size + 16 * matrix.shape[0] * groups


def rtn_asymmetric(matrix: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, int]:
    """Asymmetric RTN: levels 0..2^b - 1, float16 scale and 8-bit integer zero point per group."""
    top = 2**bits - 1
    g, groups = _groups(matrix, group)
    low, high = np.nanmin(g, axis=2, keepdims=True), np.nanmax(g, axis=2, keepdims=True)
    low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)  # zero must be representable (z in 0..255)
    scale = _fp16_scale((high - low) / top)
    safe = np.where(scale > 0, scale, 1.0)
    zero = np.clip(np.rint(-low / safe), 0, 255)
    q = np.clip(np.rint(g / safe) + zero, 0, top)
    approx = ((q - zero) * scale).reshape(matrix.shape[0], -1)[:, : matrix.shape[1]]
    return approx, bits * matrix.size + (16 + 8) * matrix.shape[0] * groups


def rtn_int8(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    return rtn_symmetric(matrix, 8, 0)


def rtn_int4_g128(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    return rtn_symmetric(matrix, 4, 128)


def rtn_int4_g128_asym(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    return rtn_asymmetric(matrix, 4, 128)


_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing (2^64 / golden ratio), odd


def hash_buckets(size: int, k: int, seed: int = 0) -> np.ndarray:
    """Bucket 0..k-1 of each flat index: the top 32 bits of (index + seed') * A mod 2^64, scaled to k."""
    index = np.arange(size, dtype=np.uint64) + np.uint64((seed * 0x632BE59BD9B4E019 + 1) % 2**64)
    with np.errstate(over="ignore"):
        mixed = index * _HASH_MUL
    mixed ^= mixed >> np.uint64(29)
    return ((mixed >> np.uint64(32)) * np.uint64(k) >> np.uint64(32)).astype(np.int64)


def hashed(matrix: np.ndarray, bits_per_weight: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """HashedNets without retraining at about ``bits_per_weight``: K = round(bpw * N / 32) buckets."""
    flat = matrix.reshape(-1)
    k = max(1, min(flat.size, round(bits_per_weight * flat.size / 32)))
    bucket = hash_buckets(flat.size, k, seed)
    counts = np.bincount(bucket, minlength=k)
    means = np.bincount(bucket, weights=flat, minlength=k) / np.maximum(counts, 1)
    means = means.astype(np.float32).astype(np.float64)
    return means[bucket].reshape(matrix.shape), 32 * k


BASELINES: dict[str, Callable[[np.ndarray], tuple[np.ndarray, int]]] = {
    "RTN int8 per channel": rtn_int8,
    "RTN int4 g128 sym": rtn_int4_g128,
    "RTN int4 g128 asym": rtn_int4_g128_asym,
    "HashedNets ~2 bits": lambda m: hashed(m, 2.0),
    "HashedNets ~4 bits": lambda m: hashed(m, 4.0),
}


def apply(tensors: list[Tensor], method: Callable[[np.ndarray], tuple[np.ndarray, int]]) -> dict:
    """One baseline over a whole model: {bits_per_weight, weighted_rel_error, numel, stored_bits, weights}.

    ``weights`` maps each tensor name to its dequantised array (source dtype and shape); tensors that
    are not :attr:`Tensor.compressible` are kept as they are and counted at their full size.
    """
    stored_bits = 0
    numel = 0
    err_sq = 0.0
    ref_sq = 0.0
    weights = {}
    for t in tensors:
        numel += t.array.size
        original = t.array.astype(np.float64)
        ref_sq += float(np.sum(np.square(original)))
        if not t.compressible:
            stored_bits += 8 * t.array.nbytes
            weights[t.name] = t.array
            continue
        approx, bits = method(t.matrix())
        restored = t.from_matrix(approx)
        stored_bits += bits
        err_sq += float(np.sum(np.square(restored.astype(np.float64) - original)))
        weights[t.name] = restored
    return {
        "bits_per_weight": stored_bits / numel,
        "weighted_rel_error": float(np.sqrt(err_sq / ref_sq)) if ref_sq > 0 else 0.0,
        "numel": numel,
        "stored_bits": stored_bits,
        "weights": weights,
    }
