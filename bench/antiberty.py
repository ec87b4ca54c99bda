"""AntiBERTy, a real transformer checkpoint for the benchmarks, as cached safetensors files.

AntiBERTy (PyPI ``antiberty==0.1.3``, MIT; Ruffolo et al., an antibody-sequence BERT: 8 layers, hidden
size 512, 25-token vocabulary) ships its weights inside its wheel as
``antiberty/trained_models/AntiBERTy_md_smooth/pytorch_model.bin``, a PyTorch pickle of 148 float32
tensors (about 26 M weights) and one int64 buffer (``bert.embeddings.position_ids``). This module
``pip download``s the wheel (``--no-deps``) into ``<system temp>/sparsify-bench-cache`` (the cache that
``bench/lossless.py`` uses for CREPE full; never the repository), opens it as a zip and converts the
``.bin`` once, with torch (``torch.load(path, map_location="cpu", weights_only=True)``), into:

* ``antiberty-fp32.safetensors``: every tensor as stored (float32, and the int64 buffer), written by
  ``safetensors.numpy.save_file`` from contiguous numpy arrays (which orders them its own way).
  Tensors that share storage in the checkpoint (the tied word embedding / MLM decoder weight and
  bias) become separate copies, as in any safetensors export;
* ``antiberty-bf16.safetensors``: the same with every float32 tensor cast to bfloat16 (``ml_dtypes``,
  round to nearest even); the int64 buffer is kept as is;
* ``antiberty-0.1.3/``: the package's small files, extracted flat: ``vocab.txt``, ``config.json``
  (the Hugging Face ``BertConfig``) and ``LICENSE.MD``.

Conversions are redone when older than the wheel and written atomically (temp file, then rename).
torch is needed only to convert; once the cache is filled it is not imported. The API::

    from antiberty import antiberty_files, AntiBERTyUnavailable
    files = antiberty_files()          # AntiBERTyFiles(fp32=Path, bf16=Path, package=Path)
    files.fp32, files.bf16             # the safetensors files
    files.package / "vocab.txt"        # and config.json, LICENSE.MD

:class:`AntiBERTyUnavailable` (with the reason) is raised when the wheel cannot be downloaded or torch
is needed and not importable. Run as a script to fill the cache and print the three paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REQUIREMENT = "antiberty==0.1.3"
VERSION = "0.1.3"
CACHE = Path(tempfile.gettempdir()) / "sparsify-bench-cache"
WHEEL_GLOB = f"antiberty-{VERSION}-*.whl"
WEIGHTS_MEMBER = "antiberty/trained_models/AntiBERTy_md_smooth/pytorch_model.bin"
PACKAGE_MEMBERS = {
    "vocab.txt": "antiberty/trained_models/vocab.txt",
    "config.json": "antiberty/trained_models/AntiBERTy_md_smooth/config.json",
    "LICENSE.MD": f"antiberty-{VERSION}.dist-info/LICENSE.MD",
}
TORCH_HINT = "pip install torch==2.13.0 (the CPU build)"


class AntiBERTyUnavailable(RuntimeError):
    """The AntiBERTy files cannot be made here (the message says why)."""


@dataclass(frozen=True)
class AntiBERTyFiles:
    fp32: Path  # safetensors, every tensor as stored in the checkpoint (float32 + one int64 buffer)
    bf16: Path  # safetensors, the float32 tensors cast to bfloat16
    package: Path  # folder: vocab.txt, config.json, LICENSE.MD from the wheel


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wheel_path(download: bool = True, cache: Path = CACHE) -> Path:
    """The cached ``antiberty`` wheel, ``pip download``ed into ``cache`` when missing (and ``download``)."""
    wheels = sorted(cache.glob(WHEEL_GLOB))
    if wheels:
        return wheels[-1]
    if not download:
        raise AntiBERTyUnavailable(f"{REQUIREMENT} is not in {cache} and downloading is off")
    cache.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {REQUIREMENT} into {cache}")
    command = [sys.executable, "-m", "pip", "download", REQUIREMENT, "--no-deps", "-d", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(cache.glob(WHEEL_GLOB))
    if done.returncode != 0 or not wheels:
        raise AntiBERTyUnavailable(f"could not download {REQUIREMENT}: {done.stderr.strip()[-300:]}")
    return wheels[-1]


def _fresh(path: Path, wheel: Path) -> bool:
    return path.exists() and path.stat().st_mtime >= wheel.stat().st_mtime


def _write_atomically(path: Path, write) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def state_dict_arrays(wheel: Path) -> dict:
    """The checkpoint's tensors as contiguous numpy arrays (name -> array), in the checkpoint's key order."""
    try:
        import torch
    except ImportError as error:
        raise AntiBERTyUnavailable(f"torch is not importable ({error}); {TORCH_HINT}") from None
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="antiberty-") as tmp:
        with zipfile.ZipFile(wheel) as archive:
            path = archive.extract(WEIGHTS_MEMBER, tmp)
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: np.ascontiguousarray(tensor.detach().cpu().numpy()) for name, tensor in state.items()}


def antiberty_files(download: bool = True, cache: Path = CACHE) -> AntiBERTyFiles:
    """Paths of the fp32 and bf16 safetensors conversions and of the package's files, made if needed.

    Raises :class:`AntiBERTyUnavailable` when the wheel is not available (``download=False`` and not
    cached, or ``pip download`` failed) or a conversion is needed and torch is not importable.
    """
    wheel = wheel_path(download, cache)
    files = AntiBERTyFiles(
        fp32=cache / "antiberty-fp32.safetensors",
        bf16=cache / "antiberty-bf16.safetensors",
        package=cache / f"antiberty-{VERSION}",
    )
    if not (_fresh(files.fp32, wheel) and _fresh(files.bf16, wheel)):
        import ml_dtypes
        import numpy as np
        from safetensors.numpy import save_file

        arrays = state_dict_arrays(wheel)
        _log(f"writing {files.fp32}")
        _write_atomically(files.fp32, lambda temp: save_file(arrays, str(temp)))
        bf16 = {
            name: np.ascontiguousarray(a.astype(ml_dtypes.bfloat16)) if a.dtype == np.float32 else a
            for name, a in arrays.items()
        }
        _log(f"writing {files.bf16}")
        _write_atomically(files.bf16, lambda temp: save_file(bf16, str(temp)))
    if not all(_fresh(files.package / name, wheel) for name in PACKAGE_MEMBERS):
        files.package.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name, member in PACKAGE_MEMBERS.items():
                data = archive.read(member)
                _write_atomically(files.package / name, lambda temp, data=data: temp.write_bytes(data))
    return files


def main() -> int:
    try:
        files = antiberty_files()
    except AntiBERTyUnavailable as error:
        _log(f"AntiBERTy not available: {error}")
        return 1
    print(f"fp32     {files.fp32}\nbf16     {files.bf16}\npackage  {files.package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
