"""ZipNN (PyPI ``zipnn``) as a lossless baseline: the API that round-trips, and a crash-safe probe.

The API used is ZipNN's byte API on the whole file, single-threaded::

    ZipNN(input_format="byte", bytearray_dtype=DTYPE, threads=1).compress(bytearray(file_bytes))
    ZipNN(input_format="byte", bytearray_dtype=DTYPE, threads=1).decompress(compressed)

with ``DTYPE`` one of ``float32``, ``bfloat16``, ``float16``. What we found about zipnn 0.5.4:

* ``compress`` reorders the bits of its INPUT BUFFER IN PLACE for ``float32`` and ``bfloat16`` (the
  sign-bit move), even when that buffer is an immutable ``bytes`` object. A round trip checked
  against the buffer that was passed in therefore "fails" on every file; checked against an
  untouched copy of the source it is exact. So: pass a fresh ``bytearray`` and compare the output
  with the file on disk. ``float16`` does not move bits and leaves its input alone.
* ``is_streaming=True`` round-trips too (same ratio within a few bytes of chunk headers);
  ``method`` ``AUTO``/``HUFFMAN``/``ZSTD`` give the same output for float data; ``threads`` does not
  change the output. So the benchmark uses the defaults with ``threads=1`` (one core, like zstd).
* On some inputs ``compress`` with ``float32`` aborts the whole process ("double free or corruption",
  SIGABRT), e.g. ``sample_models/digits_mlp.npz`` (also with ``is_streaming=True``). That is why
  every (file, dtype) pair is first probed in a child process (:func:`probe`) before it is timed
  in-process.
* ``import zipnn`` imports ``torch`` (through ``safetensors.torch`` and ``zipnn.util_torch``), and the
  package requires it; the byte API never calls torch. When torch is not installed,
  :func:`load_zipnn` puts an inert stand-in module in ``sys.modules["torch"]`` so that
  ``pip install --no-deps zipnn`` (numpy and safetensors are sparsify's own dependencies) is enough.
  ZipNN's torch/numpy formats and its safetensors helpers (``zipnn_safetensors``, ``zipnn_hf``)
  really need torch and are not used.

Run as a script to see which dtypes round-trip on given files::

    .venv/bin/python bench/zipnn_check.py sample_models/*.safetensors sample_models/*.h5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
PROBE_TIMEOUT_S = 300
INSTALL_HINT = "pip install --no-deps zipnn==0.5.4"


class _TorchStandIn:
    """Any attribute of the stand-in ``torch`` module: an inert, hashable placeholder."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<torch stand-in {self._name}>"

    def __getattr__(self, name: str) -> _TorchStandIn:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _TorchStandIn(f"{self._name}.{name}")
        object.__setattr__(self, name, value)
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"torch is not installed ({self._name} called); the ZipNN byte API does not need it")

    def __getitem__(self, key: Any) -> _TorchStandIn:  # typing annotations such as torch.Tensor[...]
        return self

    def __or__(self, other: Any) -> _TorchStandIn:  # torch.device | str annotations
        return self

    __ror__ = __or__


def _install_torch_stand_in() -> None:
    module = types.ModuleType("torch")
    cache: dict[str, _TorchStandIn] = {}

    def getattr_(name: str) -> _TorchStandIn:
        if name.startswith("__"):
            raise AttributeError(name)
        return cache.setdefault(name, _TorchStandIn(name))

    module.__getattr__ = getattr_  # type: ignore[method-assign]
    module.jit = types.SimpleNamespace(script=lambda function: function)  # zipnn.util_torch decorates with it
    module.__version__ = "0+stand-in"
    sys.modules["torch"] = module


def load_zipnn() -> tuple[Any | None, str]:
    """``(zipnn.ZipNN, description)``, or ``(None, why not)`` when zipnn is not installed."""
    try:
        import torch  # noqa: F401

        torch_note = "with torch"
    except ImportError:
        _install_torch_stand_in()
        torch_note = "torch not installed: a stand-in module satisfies its imports (byte API only)"
    try:
        import zipnn
        from zipnn import ZipNN
    except ImportError as error:
        return None, f"zipnn not importable ({error}); {INSTALL_HINT}"
    from importlib.metadata import version

    return ZipNN, f"zipnn {version('zipnn')} ({zipnn.__name__}), {torch_note}"


def codec(zipnn_class: Any, dtype: str) -> Any:
    """A ZipNN object of the byte API for ``dtype``, one thread (its ``compress``/``decompress`` return
    ``bytes`` or ``bytearray``)."""
    return zipnn_class(input_format="byte", bytearray_dtype=dtype, threads=1)


def compress(zipnn_class: Any, buffer: bytearray, dtype: str) -> bytes:
    """Compress ``buffer`` (ZipNN scrambles it in place for float32/bfloat16: pass a fresh copy)."""
    return bytes(codec(zipnn_class, dtype).compress(buffer))


def decompress(zipnn_class: Any, blob: bytes, dtype: str) -> bytes:
    return bytes(codec(zipnn_class, dtype).decompress(blob))


def _probe_here(path: Path, dtype: str) -> dict[str, Any]:
    zipnn_class, description = load_zipnn()
    if zipnn_class is None:
        return {"ok": False, "error": description}
    source = path.read_bytes()
    buffer = bytearray(source)
    blob = compress(zipnn_class, buffer, dtype)
    restored = decompress(zipnn_class, blob, dtype)
    return {
        "ok": restored == source,
        "compressed_bytes": len(blob),
        "input_mutated": bytes(buffer) != source,
        "restored_equals_mutated_input": restored == bytes(buffer),
        "zipnn": description,
    }


def probe(path: Path, dtype: str) -> dict[str, Any]:
    """One ZipNN round trip of ``path`` with ``dtype`` in a child process (ZipNN can abort the process).

    Returns ``{"ok": bool, "compressed_bytes": int, "input_mutated": bool, ...}`` or, when the child
    died, ``{"ok": False, "error": "crashed: ..."}``.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--probe", dtype, str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {PROBE_TIMEOUT_S} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        return {"ok": False, "error": f"crashed ({how}): {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", choices=DTYPES, help="(internal) one round trip in this process, JSON out")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(_probe_here(args.files[0], args.probe)))
        return 0
    print(load_zipnn()[1])
    for path in args.files:
        for dtype in DTYPES:
            result = probe(path, dtype)
            if result["ok"]:
                ratio = path.stat().st_size / result["compressed_bytes"]
                verdict = f"round trip OK, ratio {ratio:.4f}" + (" (input mutated)" if result["input_mutated"] else "")
            elif "error" in result:
                verdict = result["error"]
            else:
                verdict = "round trip FAILED"
            print(f"{path}  bytearray_dtype={dtype}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
