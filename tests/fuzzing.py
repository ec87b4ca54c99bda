"""Structure-aware fuzzing of sparsify's input paths: seeds, mutators and per-target case runners.

Shared by the short deterministic run of ``tests/test_fuzz.py`` and the campaign of ``bench/fuzz.py``.

A *target* makes cases and runs them. ``target.generate(rng)`` picks a seed input and damages it with
structure-aware mutators (``rng`` is a :class:`random.Random`, or a :class:`ByteRandom` whose choices
are read from a coverage-guided fuzzer's input); ``run_case(case, workdir)`` writes the input to a file,
runs the code under test and classifies what happened as an :class:`Outcome`:

* ``ok``        success, and the output is right (the oracle agreed);
* ``rejected``  a :class:`sparsify.errors.SparsifyError` (the tool's own, one-line error): the wanted result
  for damaged input;
* ``crash``     any other exception (a bug), ``memory`` a MemoryError (the address-space limit was hit);
* ``wrong``     success, but the output differs from what the input really holds (a silent wrong output).

Oracles: an archive decode that succeeds on damaged input must equal the seed's undamaged decode
(dtype, shape, bytes, same tensors in the same order), and a source blob it returns must be the seed's
(a stored blob) or the text the damaged manifest holds (a format 3.0 inline blob, which is part of the
manifest: the fuzzer re-packs the manifest it edits correctly, as a deliberate edit would); the oracle's
digests are SHA-256 of its own, independent of the format's checksums; a weight-file read that succeeds
must equal what
an independent reader (this module's own safetensors parser, zipfile + numpy's .npy parser, h5py) finds
in the file's bytes, and HDF5 data stored outside the file (external storage, virtual datasets, external
links) must not be read at all; a parsed pipeline or rule must print back to text that parses to itself.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import math
import os
import random
import re
import struct
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
import zstandard

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SAMPLES = ROOT / "sample_models"
GOLDEN = TESTS / "golden"
CASES = TESTS / "fuzz_cases"

SLOW_SECONDS = 2.0
RESIGNED = "[parts re-signed]"  # marks archive cases whose damaged parts carry matching checksums
DICT_CODEC = "zstd+dict+base64"  # format 3.0's manifest codec: the frame made with the format's dictionary
EXTENSIONS = {
    "archive": ".sparsify",
    "safetensors": ".safetensors",
    "npz": ".npz",
    "hdf5": ".h5",
    "pipeline": ".txt",
    "rules": ".toml",
}


# -- randomness ---------------------------------------------------------------------------------


class ByteRandom(random.Random):
    """A :class:`random.Random` whose every choice is read from ``data`` (a fuzzer's input), so that a
    mutated input changes a few decisions rather than all of them; zeros once the data runs out."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0
        super().__init__(0)

    def seed(self, *args, **kwargs) -> None:  # the data is the only source
        self._pos = 0

    def getrandbits(self, k: int) -> int:
        n = (k + 7) // 8
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return int.from_bytes(chunk.ljust(n, b"\0"), "little") & ((1 << k) - 1) if k else 0

    def random(self) -> float:
        return self.getrandbits(53) / (1 << 53)

    def randbytes(self, n: int) -> bytes:
        return self.getrandbits(n * 8).to_bytes(n, "little") if n else b""

    def getstate(self):
        return (self._data, self._pos)

    def setstate(self, state) -> None:
        self._data, self._pos = state


def weighted(rng: random.Random, table: list[tuple[Any, float]]) -> Any:
    """One item of ``(item, weight)`` pairs."""
    total = sum(w for _, w in table)
    x = rng.random() * total
    for item, w in table:
        x -= w
        if x < 0:
            return item
    return table[-1][0]


# -- cases and outcomes -------------------------------------------------------------------------


@dataclass
class Case:
    """One fuzz input: the bytes of the file (or text) under test, and how they were made."""

    target: str
    data: bytes
    seed: str
    ops: list[str] = field(default_factory=list)
    expect: Any = None  # oracle data the input alone cannot give (archives: the undamaged decode)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()[:12]

    @property
    def filename(self) -> str:
        return f"{self.target}-{self.digest}{EXTENSIONS[self.target]}"

    def sidecar(self) -> dict[str, Any]:
        return {"target": self.target, "seed": self.seed, "ops": self.ops, "expect": self.expect}


@dataclass
class Outcome:
    """How one case ended (see the module docstring); ``where`` is the innermost sparsify frame."""

    kind: str
    detail: str = ""
    message: str = ""
    where: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.kind in ("crash", "memory", "wrong") or self.seconds > SLOW_SECONDS

    @property
    def signature(self) -> str:
        """What tells one bug from another: the kind, the exception type and where it was raised."""
        kind = self.kind if self.kind != "ok" and self.kind != "rejected" else "slow"
        return f"{kind}:{self.detail}@{self.where}"


CATCH_ALL = "' cannot be decoded: "  # the message of Archive.decode's wrapper around unexpected exceptions


class WrongOutput(Exception):
    """The oracle disagrees with what the code under test returned."""


_RANK = {"ok": 0, "rejected": 1, "wrong": 2, "memory": 3, "crash": 4}


class Recorder:
    """Collects the outcome of each step of a case; the worst one wins (crash > memory > wrong > ...)."""

    def __init__(self) -> None:
        self.outcome = Outcome("ok")

    def step(self, fn: Callable[[], Any], default: Any = None) -> Any:
        """Run one step; a SparsifyError or a failure is recorded, and ``default`` returned."""
        from sparsify.errors import SparsifyError

        try:
            return fn()
        except SparsifyError as exc:
            inner = exc.__context__
            if CATCH_ALL in str(exc) and inner is not None and not isinstance(inner, SparsifyError):
                # Archive.decode's last-resort wrapper: a decoder that failed to validate its input
                self._note(Outcome("crash", f"wrapped {type(inner).__name__}", _one_line(exc), _where(inner)))
            else:
                self._note(Outcome("rejected", type(exc).__name__, _one_line(exc)))
        except WrongOutput as exc:
            self._note(Outcome("wrong", str(exc).split(":", 1)[0], _one_line(exc), _where(exc)))
        except MemoryError as exc:
            self._note(Outcome("memory", "MemoryError", _one_line(exc), _where(exc)))
        except RecursionError as exc:
            self._note(Outcome("crash", "RecursionError", _one_line(exc), _where(exc)))
        except Exception as exc:  # noqa: BLE001 - every other exception is what the fuzzer looks for
            self._note(Outcome("crash", type(exc).__name__, _one_line(exc), _where(exc)))
        return default

    def _note(self, outcome: Outcome) -> None:
        if _RANK[outcome.kind] > _RANK[self.outcome.kind]:
            self.outcome = outcome


def _one_line(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text[:300]


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame in sparsify's own code (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "/sparsify/" in f.filename.replace(os.sep, "/")]
    frame = (own or frames or [None])[-1]
    if frame is None:
        return "?"
    path = frame.filename.replace(os.sep, "/")
    short = path.split("/sparsify/", 1)[-1] if "/sparsify/" in path else path.rsplit("/", 1)[-1]
    return f"{short}:{frame.lineno}"


def run_case(target: Any, case: Case, workdir: Path) -> Outcome:
    """Write ``case`` under ``workdir`` and run it; the outcome with its wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"case{EXTENSIONS[case.target]}"
    path.write_bytes(case.data)
    start = time.perf_counter()
    recorder = Recorder()
    recorder.step(lambda: target.run(path, case, recorder))
    outcome = recorder.outcome
    outcome.seconds = time.perf_counter() - start
    return outcome


def expect_equal(what: str, got: np.ndarray, want: dict[str, Any]) -> None:
    """``got`` (a decoded or read array) has the digest ``want`` (see :func:`digest`), else WrongOutput."""
    have = digest(got)
    for key in ("dtype", "shape", "sha256"):  # the oracle's own digest (not the format's checksum)
        if have[key] != want[key]:
            raise WrongOutput(f"{key} differs: {what}: {key} {have[key]!r}, expected {want[key]!r}")


def digest(array: np.ndarray) -> dict[str, Any]:
    """dtype, shape and SHA-256 of an array's C-order bytes."""
    data = np.ascontiguousarray(array)
    return {
        "dtype": data.dtype.str,
        "shape": list(data.shape),
        "sha256": hashlib.sha256(data.reshape(-1).view(np.uint8) if data.size else b"").hexdigest(),
    }


# -- generic value mutations --------------------------------------------------------------------

_INTS = [
    0,
    1,
    -1,
    2,
    3,
    7,
    8,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
]
_FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e300, 1.7976931348623157e308, math.nan, math.inf, -math.inf, 2.5]
_STRINGS = [
    "",
    "x",
    "F32",
    "BF16",
    "F16",
    "F64",
    "U8",
    "U16",
    "U32",
    "U64",
    "I8",
    "I32",
    "I64",
    "BOOL",
    "F4",
    "C64",
    "F8_E4M3",
    ">f4",
    "<c16",
    "|V2",
    "|O",
    "<U3",
    "|S8",
    "keep",
    "threshold",
    "svd",
    "lasso",
    "ksvd",
    "quant",
    "zstd",
    "zstd+planes",
    "zstd+planes2",
    "zstd+planes3",
    "zstd+bytegroup",
    "zstd+x",
    "zstd+base64",
    "zstd+dict+base64",
    "xxh3:0000000000000000",
    "xxh3:" + "f" * 16,
    "sha256:" + "0" * 64,
    "XXH3:0000000000000000",
    "0" * 64,
    "checksum",
    "inline",
    "header",
    "first",
    "last",
    "csr",
    "csr-delta",
    "bitmask",
    "identity",
    "dct",
    "learned",
    "int8",
    "int4",
    "codebook",
    "fp16",
    "bf16",
    "fp32",
    "2.0",
    "1.0",
    "2.1",
    "3.0",
    "3.1",
    "3.2",
    "3.3",
    "4.0",
    "sparsify",
    "\u00e9",
    "a/b",
    "0.keep.data",
    "\x00",
    "9" * 40,
]


def mutate_value(rng: random.Random, value: Any) -> Any:
    """A hostile replacement for one JSON value: near values of the same type, or another type."""
    roll = rng.random()
    if roll < 0.1:
        return rng.choice([None, True, False, [], {}, "", 0, -1, 1.5, "1", [0], {"a": 1}])
    if isinstance(value, bool):
        return not value if roll < 0.6 else rng.choice([0, 1, "true", None])
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, value * 2, -value, value // 2, value + 2**32, float(value)] + _INTS)
    if isinstance(value, float):
        return rng.choice([value * 2, -value, value + 1e-9, int(value) if math.isfinite(value) else 0] + _FLOATS)
    if isinstance(value, str):
        if roll < 0.5:
            return rng.choice(_STRINGS)
        if not value:
            return "x"
        i = rng.randrange(len(value))
        return rng.choice([value[:i], value + value[i], value[:i] + chr(rng.randrange(32, 0x3000)) + value[i + 1 :]])
    if isinstance(value, list):
        if not value:
            return rng.choice([[0], [None], [1, 2], [-1]])
        i = rng.randrange(len(value))
        return rng.choice(
            [value[:i] + value[i + 1 :], value + [value[i]], value[::-1], [value[i]] * (len(value) + 1), value[:1]]
        )
    if isinstance(value, dict):
        if not value:
            return {"x": 1}
        key = rng.choice(list(value))
        out = dict(value)
        choice = rng.randrange(3)
        if choice == 0:
            del out[key]
        elif choice == 1:
            out["unknown_" + key] = out[key]
        else:
            out = {"x": 1}
        return out
    return rng.choice(_INTS)


def json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON value, the root excluded."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append(prefix + (key,))
        out.extend(json_paths(child, prefix + (key,)))
    return out


def get_path(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def set_path(node: Any, path: tuple, value: Any) -> None:
    get_path(node, path[:-1])[path[-1]] = value


def mutate_json(rng: random.Random, doc: Any, prefer: Callable[[tuple], bool] | None = None) -> str:
    """Replace one value somewhere in ``doc`` (in place); paths ``prefer`` accepts are picked more often."""
    paths = json_paths(doc)
    if not paths:
        return "nothing to mutate"
    if prefer is not None and rng.random() < 0.8:
        paths = [p for p in paths if prefer(p)] or paths
    path = rng.choice(paths)
    new = mutate_value(rng, get_path(doc, path))
    set_path(doc, path, new)
    return f"set {'/'.join(map(str, path))} = {_short(new)}"


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def mutate_bytes(rng: random.Random, data: bytes, count: int | None = None) -> tuple[bytes, str]:
    """A few byte-level edits: flips, interesting bytes, inserts, deletions, splices."""
    buf = bytearray(data)
    notes = []
    for _ in range(count or rng.randrange(1, 4)):
        if not buf:
            buf += rng.randbytes(rng.randrange(1, 9))
            notes.append("fill")
            continue
        i = rng.randrange(len(buf))
        kind = rng.randrange(6)
        if kind == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x20, ord("{"), ord('"')])
        elif kind == 2:
            del buf[i : i + rng.randrange(1, 9)]
        elif kind == 3:
            buf[i:i] = rng.randbytes(rng.randrange(1, 9))
        elif kind == 4:
            j = rng.randrange(len(buf))
            n = rng.randrange(1, 17)
            buf[i : i + n] = buf[j : j + n]
        else:
            width = rng.choice([2, 4, 8])
            buf[i : i + width] = (rng.choice(_INTS[:16]) % 2**64).to_bytes(8, "little")[:width]
        notes.append(f"{['flip', 'byte', 'del', 'ins', 'splice', 'int'][kind]}@{i}")
    return bytes(buf), ",".join(notes)


def truncate_at(rng: random.Random, data: bytes, boundaries: list[int]) -> tuple[bytes, str]:
    """``data`` cut at (or one byte around) a structural boundary."""
    points = sorted({b + d for b in boundaries for d in (-1, 0, 1) if 0 <= b + d < len(data)})
    cut = rng.choice(points) if points and rng.random() < 0.85 else rng.randrange(len(data) + 1)
    return data[:cut], f"truncate@{cut}/{len(data)}"


# -- safetensors containers ---------------------------------------------------------------------


@dataclass
class Container:
    """A safetensors file taken apart: metadata, entries (in buffer order) and each entry's bytes."""

    metadata: dict[str, str]
    entries: list[dict[str, Any]]  # {"name", "dtype", "shape", "data"}

    @classmethod
    def parse(cls, data: bytes) -> Container:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        base = 8 + n
        metadata = header.pop("__metadata__", {})
        entries = [
            {
                "name": k,
                "dtype": v["dtype"],
                "shape": list(v["shape"]),
                "data": data[base + v["data_offsets"][0] : base + v["data_offsets"][1]],
            }
            for k, v in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"]))
        ]
        return cls(dict(metadata), entries)

    def header(self) -> dict[str, Any]:
        """The JSON header, offsets laid out back to back in entry order."""
        out: dict[str, Any] = {"__metadata__": dict(self.metadata)} if self.metadata else {}
        position = 0
        for e in self.entries:
            out[e["name"]] = {
                "dtype": e["dtype"],
                "shape": list(e["shape"]),
                "data_offsets": [position, position + len(e["data"])],
            }
            position += len(e["data"])
        return out

    def pack(self, header: dict[str, Any] | None = None, header_text: bytes | None = None) -> bytes:
        """The file; ``header`` / ``header_text`` replace the consistent header (to damage it)."""
        if header_text is None:
            raw = json.dumps(
                self.header() if header is None else header, separators=(",", ":"), ensure_ascii=False, allow_nan=True
            )
            header_text = raw.encode("utf-8")
            header_text += b" " * (-(len(header_text) + 8) % 8)
        return struct.pack("<Q", len(header_text)) + header_text + b"".join(e["data"] for e in self.entries)

    def boundaries(self, header_len: int) -> list[int]:
        """File offsets where a structure ends: the length field, the header, each entry."""
        points, position = [0, 4, 8, 8 + header_len], 8 + header_len
        for e in self.entries:
            position += len(e["data"])
            points.append(position)
        return points


def mutate_header_dict(rng: random.Random, header: dict[str, Any]) -> str:
    """One edit of a container header: an entry's dtype, shape or offsets, an entry added, removed or
    renamed, or the metadata damaged."""
    names = [k for k in header if k != "__metadata__"]
    kind = rng.randrange(8) if names else 6
    if kind <= 2:
        name = rng.choice(names)
        spec = header[name]
        fld = ["dtype", "shape", "data_offsets"][kind]
        spec[fld] = mutate_value(rng, spec[fld]) if rng.random() < 0.7 else _header_field(rng, fld, spec)
        return f"header {name}.{fld} = {_short(spec[fld])}"
    if kind == 3:
        name = rng.choice(names)
        del header[name]
        return f"header drop {name}"
    if kind == 4:
        name = rng.choice(names)
        header[name + rng.choice(["", "x", "/0.keep.data"])] = copy.deepcopy(header[name])
        return f"header copy {name}"
    if kind == 5:
        name = rng.choice(names)
        header[name] = mutate_value(rng, header[name])
        return f"header {name} = {_short(header[name])}"
    meta = header.get("__metadata__")
    header["__metadata__"] = mutate_value(rng, meta if meta is not None else {})
    return "header metadata"


def _header_field(rng: random.Random, fld: str, spec: dict[str, Any]) -> Any:
    """A plausible but wrong value for one header field (to get past type checks)."""
    if fld == "dtype":
        return rng.choice([s for s in _STRINGS[:18]])
    if fld == "shape":
        shape = list(spec.get("shape") or [1])
        choice = rng.randrange(4)
        if choice == 0:
            return shape[::-1]
        if choice == 1:
            return [int(np.prod(shape))]
        if choice == 2:
            return shape + [1]
        return [rng.choice([0, 1, 2**31, 2**62, 2**63]) for _ in shape]
    begin, end = (spec.get("data_offsets") or [0, 0])[:2]
    delta = rng.choice([-8, -1, 1, 8, 2**32, 2**63])
    return rng.choice([[begin + delta, end], [begin, end + delta], [begin + delta, end + delta], [end, begin]])


# -- archives -----------------------------------------------------------------------------------

ARCHIVE_PIPELINES = [
    "keep+zstd",
    "keep",
    "threshold:sparsity=0.9+zstd",
    "threshold:sparsity=0.5",
    "threshold:max_error=0.3+zstd:bytegroup=false",
    "threshold:sparsity=0.7+int8+zstd",
    "threshold:sparsity=0.7+int4:group=16,symmetric=false+zstd",
    "threshold:sparsity=0.8+codebook:k=4+zstd",
    "threshold:sparsity=0.5+fp16",
    "threshold:sparsity=0.5+bf16+zstd",
    "quant:bits=4,group=16+zstd",
    "quant:bits=3,symmetric=false",
    "quant:bits=8",
    "quant:codebook=16+zstd",
    "quant:step=0.01+zstd",
    "svd:rank=4+zstd",
    "svd:rank=2,block=8+fp32+zstd",
    "svd:rank=2+threshold:sparsity=0.9+int8",
    "lasso:alpha=0.01",
    "lasso:alpha=0.01,dict=dct,segment=8+zstd",
    "lasso:alpha=0.05,dict=learned,atoms=8,segment=8",
    "ksvd:atoms=8,nnz=2",
    "ksvd:atoms=8,nnz=2,segment=8+int8+zstd",
]


def tiny_tensors() -> dict[str, np.ndarray]:
    """A small model (a few KB) in several float types, so that an archive case runs in milliseconds."""
    import ml_dtypes

    r = np.random.default_rng(7)
    return {
        "l1.weight": r.standard_normal((24, 20)).astype(np.float32),
        "l1.bias": r.standard_normal(24).astype(np.float32),
        "l2.weight": r.standard_normal((16, 24)).astype(ml_dtypes.bfloat16),
        "conv.kernel": r.standard_normal((3, 3, 4, 8)).astype(np.float16),
        "l3.weight": r.standard_normal((8, 16)),
        "steps": np.arange(5, dtype=np.int64),
    }


def write_tiny_sources(directory: Path) -> dict[str, Path]:
    """The tiny model as safetensors, npz (with types only keep stores) and HDF5 (Keras-like tree)."""
    import h5py
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = tiny_tensors()
    paths = {
        "safetensors": directory / "tiny.safetensors",
        "npz": directory / "tiny.npz",
        "hdf5": directory / "tiny.h5",
    }
    save_file(tensors, str(paths["safetensors"]), metadata={"format": "pt"})
    extra = {
        "complex": (np.arange(6) * (1 + 1j)).astype(np.complex128),
        "big": np.arange(12, dtype=">f4").reshape(3, 4),
        "names": np.array(["ab", "c"]),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    }
    arrays = {k: (v.astype(np.float32) if v.dtype.kind == "V" else v) for k, v in tensors.items()}
    np.savez_compressed(paths["npz"], **arrays, **extra)
    with h5py.File(paths["hdf5"], "w") as f:
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("model_weights/dense")
        g.attrs["weight_names"] = [b"kernel:0", b"bias:0"]
        g.create_dataset("kernel:0", data=np.asarray(tensors["l1.weight"]).T.copy(), chunks=(5, 8), compression="gzip")
        g.create_dataset("bias:0", data=tensors["l1.bias"])
        f.create_dataset("conv/kernel", data=tensors["conv.kernel"])
        f.create_dataset("big", data=np.arange(20, dtype=">f8").reshape(4, 5))
    return paths


def archive_seed_specs() -> list[tuple[str, str, str]]:
    """(seed name, source format, pipeline) of every generated archive seed."""
    specs = [(f"st-{i:02d}", "safetensors", p) for i, p in enumerate(ARCHIVE_PIPELINES)]
    specs += [("npz-keep", "npz", "keep+zstd"), ("npz-thr", "npz", "threshold:sparsity=0.6+zstd")]
    specs += [("h5-keep", "hdf5", "keep+zstd"), ("h5-quant", "hdf5", "quant:bits=4,group=8+zstd")]
    return specs


def build_archive_seeds(directory: Path, golden: bool = True) -> dict[str, Path]:
    """Compress the tiny sources with every method and value coder (plus the golden archives)."""
    import sparsify

    sources = write_tiny_sources(directory / "sources")
    seeds: dict[str, Path] = {}
    for name, fmt, pipeline in archive_seed_specs():
        out = directory / f"{name}.sparsify"
        if not out.exists():
            sparsify.compress(sources[fmt], out, pipeline=pipeline, min_size=16, force=True, seed=1)
        seeds[name] = out
    if golden:
        for path in sorted(GOLDEN.glob("*.sparsify")) + sorted(GOLDEN.glob("v*/*threshold*.sparsify")):
            if path.is_file():  # not the folder archives (a folder of archives, with an index)
                seeds[f"golden-{path.parent.name}-{path.stem}"] = path
    return seeds


def reference_decode(path: Path) -> dict[str, Any]:
    """What an undamaged archive decodes to: per tensor (in order) its name and digest, the source blobs."""
    from sparsify.archive import Archive

    with Archive(path) as archive:
        tensors = [{"name": t["name"], **digest(archive.decode(t))} for t in archive.tensors]
        meta = archive.source_meta()
        blobs = {k: hashlib.sha256(v).hexdigest() for k, v in meta.blobs.items()}
        fmt = archive.manifest["source"]["format"]
    return {"tensors": tensors, "blobs": blobs, "format": fmt}


@dataclass
class ArchiveModel:
    """An archive taken apart down to the manifest, to damage any layer and pack it back correctly."""

    container: Container
    envelope: dict[str, Any]
    manifest: dict[str, Any]
    # Set by mutators of a layer; pack() uses them instead of re-packing the layer below.
    manifest_text: bytes | None = None
    frame: bytes | None = None
    b64: str | None = None
    envelope_text: str | None = None
    resigned: bool = False  # some part's bytes changed with its checksum updated to match
    # source blobs a mutator stored deliberately, with matching checksums: name -> the oracle's digest
    blobs_placed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> ArchiveModel:
        container = Container.parse(data)
        text = container.metadata["sparsify"]
        envelope = json.loads(text)
        if "manifest_codec" in envelope:  # 3.0: with the format's dictionary; 2.x: without
            decompressor = zstandard.ZstdDecompressor(dict_data=_dictionary(envelope["manifest_codec"]))
            manifest = json.loads(decompressor.decompress(base64.b64decode(envelope["manifest"])))
        else:  # format 1.0: the metadata string is the manifest itself
            manifest, envelope = envelope, {}
        return cls(container, envelope, manifest)

    def entry(self, key: str) -> dict[str, Any] | None:
        return next((e for e in self.container.entries if e["name"] == key), None)

    def part_records(self) -> list[dict[str, Any]]:
        """Every part record of the manifest (tensor parts and source blobs)."""
        out = [p for t in self.manifest.get("tensors", []) if isinstance(t, dict) for p in t.get("parts", []) or []]
        out += list(((self.manifest.get("source") or {}).get("blobs") or {}).values())
        return [p for p in out if isinstance(p, dict) and isinstance(p.get("key"), str) and self.entry(p["key"])]

    def pack_manifest(self) -> bytes:
        return json.dumps(self.manifest, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode("utf-8")

    def metadata_text(self) -> str:
        if self.envelope_text is not None:
            return self.envelope_text
        if not self.envelope:  # a 1.0 archive
            return (self.manifest_text or self.pack_manifest()).decode("utf-8", "replace")
        frame = self.frame
        if frame is None:
            frame = pack_frame(self.manifest_text or self.pack_manifest(), self.envelope.get("manifest_codec"))
        envelope = dict(self.envelope)
        envelope["manifest"] = self.b64 if self.b64 is not None else base64.b64encode(frame).decode("ascii")
        return json.dumps(envelope, separators=(",", ":"))

    def pack(self) -> bytes:
        self.container.metadata["sparsify"] = self.metadata_text()
        return self.container.pack()


def _dictionary(codec: Any) -> Any:
    """The dictionary a manifest codec compresses with (docs/FORMAT.md §4.0): 3.0's, or none."""
    if codec != DICT_CODEC:
        return None
    from sparsify.archive.dictionary import manifest_dictionary

    return manifest_dictionary()


def pack_frame(text: bytes, codec: Any = DICT_CODEC, dictionary: bool | None = None) -> bytes:
    """The manifest's zstd frame as ``codec`` packs it (with the dictionary for 3.0's); ``dictionary``
    True / False forces it (to make a frame that lies about its codec)."""
    use = codec == DICT_CODEC if dictionary is None else dictionary
    compressor = zstandard.ZstdCompressor(
        level=1, write_checksum=True, dict_data=_dictionary(DICT_CODEC) if use else None
    )
    return compressor.compress(text)


def checksum_string(data: bytes, algorithm: str = "xxh3") -> str:
    """A checksum string of docs/FORMAT.md §8.6 (XXH3-64 or SHA-256), computed here, not by sparsify."""
    if algorithm == "xxh3":
        return "xxh3:" + xxhash.xxh3_64_hexdigest(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _algorithm(value: Any) -> str:
    """The algorithm a (possibly damaged) checksum string names: sha256, else xxh3."""
    return "sha256" if isinstance(value, str) and value.startswith("sha256:") else "xxh3"


def sign(record: dict[str, Any], data: bytes, field: str = "checksum", algorithm: str | None = None) -> None:
    """Set ``record``'s checksum of ``data`` as its format names it: 3.0's checksum string (in the
    algorithm it had, unless told), or 2.x and 1.0's bare hex SHA-256 under ``sha256`` names."""
    old = {"checksum": "sha256", "content_checksum": "content_sha256", "decoded_checksum": "decoded_sha256"}[field]
    if old in record and field not in record:
        record[old] = hashlib.sha256(data).hexdigest()
    else:
        record[field] = checksum_string(data, algorithm or _algorithm(record.get(field)))


def _prefer_decoding_fields(path: tuple) -> bool:
    """Manifest paths that change how tensors decode (rather than informational fields)."""
    if path[0] == "tensors":
        return not any(k in path for k in ("metrics", "reason", "pipeline", "coders", "value_coder", "stored_bytes"))
    return path[0] in ("source", "format_version", "format")


def resign(model: ArchiveModel, record: dict[str, Any], stored: bytes) -> None:
    """Store ``stored`` as ``record``'s part and update its nbytes and checksum so the checksum passes."""
    entry = model.entry(record["key"])
    model.resigned = True
    entry["data"] = bytes(stored)
    record["nbytes"] = len(stored)
    sign(record, bytes(stored))
    entry["dtype"], entry["shape"] = _entry_type(record, len(stored))


def _entry_type(record: dict[str, Any], nbytes: int) -> tuple[str, list[int]]:
    """The container dtype and shape the writer would use for a part record (docs/FORMAT.md §5.2)."""
    from sparsify import dtypes

    try:
        if record.get("codec") is None and record.get("dtype") in dtypes.SAFETENSORS_TYPES:
            shape = [int(d) for d in record["shape"]]
            if dtypes.nbytes_of(record["dtype"], tuple(shape)) == nbytes:
                return record["dtype"], shape
    except Exception:  # noqa: BLE001 - a damaged record: store as plain bytes
        pass
    return "U8", [nbytes]


def logical_part(record: dict[str, Any], stored: bytes) -> np.ndarray:
    """The logical array of an undamaged part."""
    from sparsify.codec import decode_part

    return decode_part(record, np.frombuffer(stored, dtype=np.uint8).copy())


def encode_stored(rng: random.Random, array: np.ndarray) -> tuple[bytes, str | None]:
    """A logical array coded as a writer could store it: raw, one zstd frame (with or without its own
    checksum), byte planes (3.1's ``zstd+planes3`` with paired planes, 3.0's ``zstd+planes2`` in plane
    order or raw planes first, 2.x's ``zstd+planes``) or (1.0) byte groups; returns (stored bytes, codec)."""
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    choice = rng.randrange(6)
    frames = zstandard.ZstdCompressor(level=1, write_checksum=rng.random() < 0.5)
    if choice == 0:
        return raw.tobytes(), None
    if choice == 1 or array.dtype.itemsize < 2 or raw.size % array.dtype.itemsize or not raw.size:
        return frames.compress(raw.tobytes()), "zstd"
    if choice == 2:
        k = array.dtype.itemsize
        grouped = raw.reshape(-1, k).T.reshape(-1).tobytes()
        return frames.compress(grouped), "zstd+bytegroup"
    return encode_planes_part(rng, raw, array.dtype.itemsize, version={3: 1, 4: 2, 5: 3}[choice])


def encode_planes_part(rng: random.Random, raw: np.ndarray, itemsize: int, version: int) -> tuple[bytes, str]:
    """``raw`` (1-D uint8, elements of ``itemsize`` >= 2 bytes) as a byte-planes part of ``version`` 1
    (``zstd+planes``), 2 (``zstd+planes2``: payloads in plane order, or the raw planes first as the
    writer stores large parts) or 3 (``zstd+planes3``: as 2, and the high plane paired wherever that
    fits, smaller or not), each other plane's method chosen as the writer chooses it."""
    from sparsify.coders import paired, planes
    from sparsify.coders.zstd import entropy_compressor

    rotate = itemsize in (2, 4, 8) and rng.random() < 0.5
    compressors = [entropy_compressor(), zstandard.ZstdCompressor(level=1, write_content_size=True)]
    split = planes.to_planes(raw, itemsize, rotate)
    methods, coded = planes.choose_methods(split, compressors, paired=version == 3)
    if version == 1:
        return bytes(planes.assemble(rotate, coded)), "zstd+planes"
    codec = "zstd+planes3" if version == 3 else "zstd+planes2"
    if version == 3 and split.shape[1]:  # force a paired plane, so that every planes3 part has one
        top = split[-1]
        coded[-1] = (paired.PAIRED, paired.pair_plane(top, paired.pair_base(top)[0], compressors[0]))
        methods[-1] = paired.PAIRED
    if rng.random() < 0.5 or version == 3:
        return bytes(planes.assemble2(rotate, coded)), codec
    return bytes(planes.encode_planes2(raw, itemsize, rotate, methods, compressors)), codec


def planes2_entries(data: bytes) -> tuple[list[tuple[int, int, int, int, int]], int] | None:
    """A ``zstd+planes2`` header's entries as (plane, method, length, offset of the entry, offset of its
    length), and where the payloads begin; None if the header does not parse."""
    if len(data) < 2:
        return None
    offset, entries = 2, []
    for _ in range(data[1]):
        if offset + 2 > len(data):
            return None
        start, at, value, shift = offset, offset + 2, 0, 0
        while True:
            if at >= len(data) or shift > 56:
                return None
            value |= (data[at] & 0x7F) << shift
            shift += 7
            at += 1
            if not data[at - 1] & 0x80:
                break
        entries.append((data[start], data[start + 1], value, start, start + 2))
        offset = at
    return entries, offset


def leb128(value: int) -> bytes:
    """``value`` (>= 0) as unsigned LEB128 (docs/FORMAT.md §5.3)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def interesting_elements(rng: random.Random, dtype: np.dtype, n: int) -> np.ndarray:
    """``n`` values of ``dtype`` chosen to break decoders: extremes, zero, one past a length, NaN..."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        pool = [0, 1, 2, info.max, info.min, info.max - 1, rng.randrange(0, 64), rng.randrange(info.min, info.max + 1)]
        return np.array([rng.choice(pool) for _ in range(n)], dtype=dtype)
    if dtype.kind == "f" or dtype.kind == "V":
        pool = [0.0, -0.0, 1.0, -1.0, 65504.0, 1e38, -1e38, math.nan, math.inf, -math.inf, 1e-45, rng.random()]
        return np.array([rng.choice(pool) for _ in range(n)], dtype=np.float64).astype(dtype)
    if dtype.kind == "b":
        return np.array([rng.random() < 0.5 for _ in range(n)])
    return np.frombuffer(rng.randbytes(n * dtype.itemsize), dtype=dtype).copy()


class ArchiveTarget:
    """``Archive(path)``, ``inspect``, ``Archive.decode`` of every tensor, ``source_meta`` and (for a
    share of the cases) ``decompress``, on damaged archives."""

    name = "archive"

    def __init__(self, workdir: Path, golden: bool = True) -> None:
        self.workdir = workdir
        from sparsify.errors import SparsifyError

        self.seeds, self.references, self.skipped = {}, {}, {}
        for name, path in build_archive_seeds(workdir / "seeds", golden=golden).items():
            try:  # a seed the reader refuses undamaged has no reference decode to compare with
                self.references[name] = reference_decode(path)
            except SparsifyError as exc:
                self.skipped[name] = _one_line(exc)
                continue
            self.seeds[name] = path.read_bytes()
        self.names = sorted(self.seeds)

    # mutators: (function, weight); model-level ones first, byte-level last (see generate)
    def generate(self, rng: random.Random) -> Case:
        weights = [1.0 if not n.startswith("golden") else 0.3 for n in self.names]
        seed = self.names[_weighted_index(rng, weights)]
        data = self.seeds[seed]
        model = ArchiveModel.parse(data)
        ops: list[str] = []
        layer_ops = [
            (self.op_manifest, 4),
            (self.op_part_logical, 4),
            (self.op_part_bytes, 2),
            (self.op_part_resize, 2),
            (self.op_part_codec, 2),
            (self.op_planes_header, 1.5),
            (self.op_frame, 1.5),
            (self.op_checksum, 1.5),
            (self.op_inline, 1.5),
            (self.op_swap, 0.7),
            (self.op_version, 0.5),
        ]
        packed_ops = [(self.op_envelope, 1.5), (self.op_header, 2), (self.op_bytes, 1.5), (self.op_truncate, 1.5)]
        count = weighted(rng, [(1, 5), (2, 3), (3, 1.5), (5, 0.5)])
        chosen = [weighted(rng, layer_ops + packed_ops) for _ in range(count)]
        chosen.sort(key=lambda op: [o for o, _ in layer_ops + packed_ops].index(op))
        packed: bytes | None = None
        for op in chosen:
            try:
                if any(op == o for o, _ in layer_ops):
                    ops.append(op(rng, model))
                else:
                    if packed is None:
                        packed = model.pack()
                    packed, note = op(rng, model, packed)
                    ops.append(note)
            except Exception as exc:  # noqa: BLE001 - an earlier mutation left nothing this one can edit
                ops.append(f"{op.__name__} skipped ({type(exc).__name__})")
        if packed is None:
            packed = model.pack()
        if model.resigned:
            ops.append(RESIGNED)
        expect = self.references[seed]
        if model.blobs_placed:  # what the input then holds, by construction
            expect = {**expect, "blobs": {**expect["blobs"], **model.blobs_placed}}
        return Case(self.name, packed, seed, ops, expect)

    # -- layer mutators (on the model, packed correctly afterwards) --

    def op_manifest(self, rng: random.Random, model: ArchiveModel) -> str:
        return "manifest " + mutate_json(rng, model.manifest, _prefer_decoding_fields)

    def op_version(self, rng: random.Random, model: ArchiveModel) -> str:
        """Pack as format 1.0 (manifest JSON as the metadata string) or declare another version."""
        version = rng.choice(["1.0", "1.9", "2.1", "2.0", "3.0", "2", "x"])
        model.manifest["format_version"] = version
        if rng.random() < 0.5:
            model.envelope = {}
            return f"as v1 manifest, version {version}"
        model.envelope["format_version"] = version if rng.random() < 0.8 else "2.0"
        return f"version {version}"

    def op_swap(self, rng: random.Random, model: ArchiveModel) -> str:
        """Two records swapped: tensors, parts of a tensor, or two parts' keys."""
        tensors = model.manifest["tensors"]
        i, j = rng.randrange(len(tensors)), rng.randrange(len(tensors))
        if rng.random() < 0.4:
            tensors[i], tensors[j] = tensors[j], tensors[i]
            return f"swap tensors {i} {j}"
        parts = model.part_records()
        a, b = rng.choice(parts), rng.choice(parts)
        fld = rng.choice(["key", "name", "dtype", "shape", "codec"])
        a[fld], b[fld] = b.get(fld), a.get(fld)
        return f"swap part {fld} {a.get('key')} {b.get('key')}"

    def _pick_part(self, rng: random.Random, model: ArchiveModel) -> tuple[dict[str, Any], dict[str, Any]] | None:
        parts = model.part_records()
        if not parts:
            return None
        record = rng.choice(parts)
        return record, model.entry(record["key"])

    def op_part_bytes(self, rng: random.Random, model: ArchiveModel) -> str:
        """Stored bytes damaged; the checksum updated to match (or, sometimes, not)."""
        picked = self._pick_part(rng, model)
        if picked is None:
            return "no part"
        record, entry = picked
        damaged, note = mutate_bytes(rng, entry["data"])
        if rng.random() < 0.2:
            entry["data"] = damaged
            entry["dtype"], entry["shape"] = "U8", [len(damaged)]
            record["nbytes"] = len(damaged)
            return f"part bytes {record['key']} {note} (checksum stale)"
        resign(model, record, damaged)
        return f"part bytes {record['key']} {note} (re-signed)"

    def op_part_logical(self, rng: random.Random, model: ArchiveModel) -> str:
        """Elements of a part's logical array replaced by hostile values, re-coded and re-signed: the
        damage reaches the method and value decoders."""
        picked = self._pick_part(rng, model)
        if picked is None:
            return "no part"
        record, entry = picked
        try:
            array = logical_part(record, entry["data"]).reshape(-1).copy()
        except Exception:  # noqa: BLE001 - an earlier mutation broke it
            return "part logical: undecodable"
        if array.size:
            count = max(1, min(array.size, weighted(rng, [(1, 4), (2, 2), (array.size // 4 + 1, 1)])))
            places = [rng.randrange(array.size) for _ in range(count)]
            for i, v in zip(places, interesting_elements(rng, array.dtype, count), strict=True):
                array[i] = v
        stored, codec = encode_stored(rng, array)
        record["codec"] = codec
        resign(model, record, stored)
        return f"part values {record['key']} ({codec})"

    def op_part_resize(self, rng: random.Random, model: ArchiveModel) -> str:
        """A part grown, shrunk or retyped, with its record's shape and dtype (and checksum) to match."""
        from sparsify import dtypes

        picked = self._pick_part(rng, model)
        if picked is None:
            return "no part"
        record, entry = picked
        try:
            array = logical_part(record, entry["data"]).reshape(-1)
        except Exception:  # noqa: BLE001
            return "part resize: undecodable"
        kind = rng.randrange(3)
        if kind == 0:
            n = max(0, array.size + rng.choice([-1, 1, -array.size, array.size, 7]))
            array = np.resize(array, n) if array.size else np.zeros(n, array.dtype)
        elif kind == 1:
            target = rng.choice(
                ["U8", "U16", "U32", "U64", "I8", "I16", "I32", "I64", "F16", "F32", "F64", "BF16", "BOOL"]
            )
            with np.errstate(all="ignore"):
                array = array.astype(dtypes.numpy_of(target)) if array.dtype.kind != "V" else array.view(np.uint8)
        record["dtype"] = dtypes.name_of(array.dtype)
        record["shape"] = [int(array.size)] if rng.random() < 0.8 else [1, int(array.size)]
        stored, record["codec"] = encode_stored(rng, array)
        resign(model, record, stored)
        return f"part resize {record['key']} -> {record['dtype']}{record['shape']}"

    def op_part_codec(self, rng: random.Random, model: ArchiveModel) -> str:
        """A part's declared codec changed, or its bytes re-coded with another codec, re-signed."""
        picked = self._pick_part(rng, model)
        if picked is None:
            return "no part"
        record, entry = picked
        if rng.random() < 0.5:
            record["codec"] = rng.choice(
                [None, "zstd", "zstd+planes", "zstd+planes2", "zstd+bytegroup", "zstd+", "gzip", "zstd+planes3"]
            )
            return f"part codec {record['key']} declared {record['codec']}"
        try:
            array = logical_part(record, entry["data"])
        except Exception:  # noqa: BLE001
            return "part codec: undecodable"
        stored, record["codec"] = encode_stored(rng, array)
        resign(model, record, stored)
        return f"part recoded {record['key']} as {record['codec']}"

    def op_planes_header(self, rng: random.Random, model: ArchiveModel) -> str:
        """The byte-plane header of a ``zstd+planes``, ``zstd+planes2`` or ``zstd+planes3`` part edited
        (flags, plane count, methods, lengths; 2 and 3: a plane listed twice or out of range, a length's
        LEB128 bytes, or the payloads reordered consistently, which must decode the same; 3: a paired
        plane's own header), re-signed."""
        compact = ("zstd+planes2", "zstd+planes3")
        planes = [p for p in model.part_records() if p.get("codec") in ("zstd+planes", *compact)]
        if not planes:
            return self.op_part_codec(rng, model)
        record = rng.choice(planes)
        data = bytearray(model.entry(record["key"])["data"])
        k = data[1] if len(data) > 1 else 0
        fld = rng.randrange(6 if record["codec"] == "zstd+planes3" else 5 if record["codec"] in compact else 4)
        parsed = planes2_entries(bytes(data)) if record["codec"] in compact else None
        if fld == 5 and parsed is not None:
            return self._paired_payload(rng, model, record, data, parsed)
        if fld == 0:
            data[0] = rng.choice([0, 1, 2, 3, 0x80])
        elif fld == 1:
            data[1] = rng.choice([0, 1, 2, 3, 4, 8, 16, 255])
        elif record["codec"] == "zstd+planes" and k:
            if fld == 2:
                data[2 + 9 * rng.randrange(k)] = rng.choice([0, 1, 2, 3, 4, 255])
            else:
                j = 3 + 9 * rng.randrange(k)
                old = int.from_bytes(data[j : j + 8], "little")
                value = rng.choice([0, 1, old + 1, old - 1 if old else 0, 2**63, 2**64 - 1]) % 2**64
                data[j : j + 8] = value.to_bytes(8, "little")
        elif parsed is not None and parsed[0]:
            entries, head = parsed
            plane, method, length, at, length_at = rng.choice(entries)
            if fld == 2:  # the plane an entry names, or its method
                data[at + rng.randrange(2)] = rng.choice([0, 1, 2, 3, 4, k - 1, k, 255]) % 256
            elif fld == 3:  # a length rewritten (another value, or the same one in more LEB128 bytes)
                end = length_at + len(leb128(length))
                value = rng.choice([0, 1, length + 1, max(0, length - 1), 127, 128, 2**63 - 1, 2**70])
                coded = (
                    leb128(value) if rng.random() < 0.7 else leb128(length)[:-1] + bytes([leb128(length)[-1] | 0x80, 0])
                )
                data[length_at:end] = coded
            else:  # the payloads in another order, the header to match: the same part, read the same
                order = entries[:]
                rng.shuffle(order)
                payloads, offset = {}, head
                for entry in entries:
                    payloads[entry[3]] = bytes(data[offset : offset + entry[2]])
                    offset += entry[2]
                head_bytes = bytes(data[:2]) + b"".join(bytes((e[0], e[1])) + leb128(e[2]) for e in order)
                data = bytearray(head_bytes + b"".join(payloads[e[3]] for e in order) + bytes(data[offset:]))
                resign(model, record, bytes(data))
                return f"planes2 reordered {record['key']} {[e[0] for e in order]}"
        else:
            data, _ = mutate_bytes(rng, bytes(data))
        resign(model, record, bytes(data))
        return f"planes header {record['codec']} {record['key']} field {fld}"

    def _paired_payload(self, rng: random.Random, model: ArchiveModel, record, data: bytearray, parsed) -> str:
        """A paired plane's payload edited (window, escape coding, escape count, frame length, padding
        nibble, or its bytes), the part's header re-made to match, re-signed."""
        entries, head = parsed
        offset, spans = head, []
        for plane, method, length, _, _ in entries:
            spans.append((plane, method, offset, length))
            offset += length
        paired_spans = [s for s in spans if s[1] == 4]
        if not paired_spans:
            return f"planes3 {record['key']}: no paired plane"
        plane, _, start, length = rng.choice(paired_spans)
        payload = bytearray(data[start : start + length])
        what = rng.randrange(5)
        if what == 0 and payload:
            payload[0] = rng.choice([0, 1, 100, 240, 241, 255])
        elif what == 1 and len(payload) > 1:
            payload[1] = rng.choice([0, 1, 2, 255])
        elif what in (2, 3) and len(payload) > 2:  # the escape count or the frame length, rewritten
            spans_at = [2]
            for _ in range(2):
                end = spans_at[-1]
                while end < len(payload) and payload[end] & 0x80:
                    end += 1
                spans_at.append(end + 1)
            at, end = spans_at[what - 2], min(spans_at[what - 1], len(payload))
            payload[at:end] = leb128(rng.choice([0, 1, 2, 127, 128, 2**20, 2**63 - 1]))
        else:
            payload, _ = mutate_bytes(rng, bytes(payload))
            payload = bytearray(payload)
        lengths = {p: (len(payload) if p == plane else ln) for p, _, _, ln in spans}
        rebuilt = bytes(data[:2]) + b"".join(bytes((e[0], e[1])) + leb128(lengths[e[0]]) for e in entries)
        body = b"".join(bytes(payload) if p == plane else bytes(data[o : o + ln]) for p, _, o, ln in spans)
        resign(model, record, rebuilt + body)
        return f"paired plane {plane} of {record['key']} edited ({what})"

    def op_checksum(self, rng: random.Random, model: ArchiveModel) -> str:
        """A checksum string (docs/FORMAT.md §8.6) rewritten: in the other algorithm, correctly (which a
        reader must accept), or malformed, stale, or of the other algorithm's length (which it must refuse)."""
        candidates = [p for p in model.part_records() if isinstance(p.get("checksum"), str)]
        if not candidates:  # an archive of 2.x or 1.0: bare SHA-256 digests, nothing to rewrite
            return self.op_part_bytes(rng, model)
        record = rng.choice(candidates)
        stored = model.entry(record["key"])["data"]
        kind = rng.randrange(4)
        if kind == 0:
            other = "sha256" if _algorithm(record["checksum"]) == "xxh3" else "xxh3"
            sign(record, stored, algorithm=other)
            return f"checksum {record['key']} as {other}"
        value = record["checksum"]
        record["checksum"] = rng.choice(
            [
                value.upper(),
                value[:-1],
                value + "0",
                value + "\n",
                " " + value,
                value.replace(":", "-"),
                "sha256:" + value.split(":")[-1],
                "xxh3:" + hashlib.sha256(stored).hexdigest()[:16],
                checksum_string(stored + b"\0"),
                "crc32:" + "0" * 8,
            ]
        )
        return f"checksum {record['key']} damaged"

    def op_inline(self, rng: random.Random, model: ArchiveModel) -> str:
        """A source blob moved between ``source.inline`` (3.0: text in the manifest) and a stored part,
        correctly (it must read the same), into both or out of both (refused), or its text edited (what
        the manifest then holds is what a reader must return)."""
        source = model.manifest.get("source")
        if not isinstance(source, dict) or not isinstance(source.get("blobs"), dict):
            return "no source"
        inline = source.get("inline")
        if not isinstance(inline, dict):
            return self.op_manifest(rng, model)
        kind = rng.randrange(5)
        if kind == 0 and inline:  # inline -> a stored part (record and content checksum as a writer makes them)
            name = rng.choice(sorted(inline))
            if not isinstance(inline[name], str):
                return "inline: not text"
            data = inline.pop(name).encode("utf-8")
            stored, codec = (
                (zstandard.ZstdCompressor(level=9).compress(data), "zstd") if rng.random() < 0.7 else (data, None)
            )
            key = "__sparsify__/source/" + name
            record = {"name": name, "key": key, "dtype": "U8", "shape": [len(data)], "codec": codec}
            record.update(nbytes=len(stored), checksum=checksum_string(stored), content_checksum=checksum_string(data))
            source["blobs"][name] = record
            model.container.entries.insert(0, {"name": key, "dtype": "U8", "shape": [len(stored)], "data": stored})
            model.blobs_placed[name] = hashlib.sha256(data).hexdigest()  # the text as it was (perhaps edited)
            return f"inline {name} stored as a part ({codec})"
        stored_blobs = [r for r in source["blobs"].values() if isinstance(r, dict) and model.entry(r.get("key"))]
        if kind == 1 and stored_blobs:  # a stored part -> inline, when it is text
            record = rng.choice(stored_blobs)
            try:
                data = bytes(logical_part(record, model.entry(record["key"])["data"]).reshape(-1).view(np.uint8))
                text = data.decode("utf-8")
            except Exception:  # noqa: BLE001 - binary (an HDF5 skeleton) or damaged
                return "stored blob: not text"
            del source["blobs"][record["name"]]
            model.container.entries.remove(model.entry(record["key"]))
            inline[record["name"]] = text
            return f"blob {record['name']} inlined"
        if kind == 2:  # in both, or in neither
            if inline and rng.random() < 0.5:
                name = rng.choice(sorted(inline))
                del inline[name]
                return f"inline {name} dropped"
            if stored_blobs:
                inline[rng.choice(stored_blobs)["name"]] = "{}"
                return "blob both inline and stored"
            return "nothing to move"
        if inline:  # the text edited: JSON, bytes, non-text values
            name = rng.choice(sorted(inline))
            text = inline[name] if isinstance(inline[name], str) else ""
            inline[name] = rng.choice(
                [
                    text[: len(text) // 2],
                    text + " ",
                    text.replace('"', "'", 1),
                    text.encode("utf-8", "replace")[::-1].decode("utf-8", "replace"),
                    "",
                    "\x00",
                    None,
                    42,
                    [text],
                ]
            )
            return f"inline {name} text edited"
        inline[rng.choice(["header", "skeleton", "x"])] = rng.choice(["{}", "", "not json"])
        return "inline blob added"

    def op_frame(self, rng: random.Random, model: ArchiveModel) -> str:
        """A ``zstd`` part replaced by a frame that lies: another content size, none, two frames, junk
        after it, no checksum; re-signed."""
        zstd_parts = [p for p in model.part_records() if p.get("codec") == "zstd"]
        if not zstd_parts:
            return self.op_part_codec(rng, model)
        record = rng.choice(zstd_parts)
        raw = zstandard.ZstdDecompressor().decompress(model.entry(record["key"])["data"])
        kind = rng.randrange(6)
        if kind == 0:
            frame = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
        elif kind == 1:
            frame = zstandard.ZstdCompressor().compress(raw[: max(0, len(raw) - rng.randrange(1, 9))])
        elif kind == 2:
            frame = zstandard.ZstdCompressor().compress(raw + rng.randbytes(rng.randrange(1, 9)))
        elif kind == 3:
            frame = zstandard.ZstdCompressor().compress(raw) * 2
        elif kind == 4:
            frame = zstandard.ZstdCompressor(write_checksum=False).compress(raw) + rng.randbytes(4)
        else:
            frame = zstandard.ZstdCompressor().compress(b"\0" * (len(raw) + (1 << rng.randrange(10, 25))))
        resign(model, record, frame)
        return f"frame {record['key']} kind {kind}"

    # -- packed-layer mutators (after packing; each returns new bytes) --

    def op_envelope(self, rng: random.Random, model: ArchiveModel, packed: bytes) -> tuple[bytes, str]:
        """The envelope or what it packs damaged, the rest re-packed correctly around it."""
        text = model.pack_manifest()
        codec = model.envelope.get("manifest_codec") if isinstance(model.envelope, dict) else None
        kind = rng.randrange(10)
        if kind == 0:
            model.manifest_text, note = mutate_bytes(rng, text)
        elif kind == 1:
            depth = rng.choice([100, 1000, 100000])
            model.manifest_text = b"[" * depth + b"]" * depth
            note = f"nested {depth}"
        elif kind == 2:
            model.manifest_text = rng.choice(
                [
                    b"",
                    b"null",
                    b"[]",
                    b"{}",
                    b"\xff\xfe",
                    b'{"format":"sparsify","format_version":"2.0"}',
                    text[: len(text) // 2],
                ]
            )
            note = "replaced manifest text"
        elif kind == 3:
            frame = pack_frame(text, codec)
            model.frame, note = mutate_bytes(rng, frame)
        elif kind == 4:
            frame = bytearray(pack_frame(text, codec))
            # lie about the content size: the frame header's FCS field (after magic, FHD, window byte)
            frame[6:8] = rng.choice([b"\0\0", b"\xff\xff", b"\x01\x00"])
            model.frame, note = bytes(frame), "content size"
        elif kind == 5:
            model.frame = zstandard.ZstdCompressor(write_content_size=False).compress(text)
            note = "no content size"
        elif kind == 6:
            b64 = base64.b64encode(pack_frame(text, codec)).decode()
            i = rng.randrange(len(b64))
            model.b64 = rng.choice(
                [b64[:i] + " " + b64[i:], b64.rstrip("="), b64 + "=", b64[:i] + "*" + b64[i + 1 :], b64 + "\n"]
            )
            note = "base64"
        elif kind == 7:
            model.envelope = model.envelope or {
                "format": "sparsify",
                "format_version": rng.choice(["2.0", "3.0"]),
                "manifest_codec": rng.choice(["zstd+base64", DICT_CODEC]),
            }
            model.envelope = mutate_value(rng, model.envelope) if rng.random() < 0.3 else model.envelope
            if isinstance(model.envelope, dict) and model.envelope:
                key = rng.choice(list(model.envelope) + ["manifest"])
                model.envelope[key] = mutate_value(rng, model.envelope.get(key, ""))
            if not isinstance(model.envelope, dict) or not model.envelope:
                model.envelope_text = json.dumps(model.envelope)
            note = "envelope field"
        elif kind == 8 and model.envelope:
            # the other codec named: a frame made with the dictionary does not decode without it (refused);
            # one made without it decodes the same with it (read correctly: the dictionary is only history)
            dictionary = rng.random() < 0.5
            model.frame = pack_frame(text, dictionary=dictionary)
            model.envelope["manifest_codec"] = "zstd+base64" if dictionary else DICT_CODEC
            note = f"codec {model.envelope['manifest_codec']}, frame {'with' if dictionary else 'without'} dictionary"
        else:
            model.envelope_text, note = mutate_bytes(rng, model.metadata_text().encode())
            model.envelope_text = model.envelope_text.decode("utf-8", "replace")
        return model.pack(), f"envelope {kind} {note}"

    def op_header(self, rng: random.Random, model: ArchiveModel, packed: bytes) -> tuple[bytes, str]:
        """The container header's JSON edited (entries' dtype, shape, offsets; metadata), or its text."""
        container = Container.parse(packed)
        if rng.random() < 0.75:
            header = container.header()
            note = mutate_header_dict(rng, header)
            return container.pack(header=header), note
        (n,) = struct.unpack("<Q", packed[:8])
        text, note = mutate_bytes(rng, packed[8 : 8 + n])
        return container.pack(header_text=text), f"header text {note}"

    def op_bytes(self, rng: random.Random, model: ArchiveModel, packed: bytes) -> tuple[bytes, str]:
        """Plain byte edits anywhere, or the header length changed."""
        if rng.random() < 0.3:
            (n,) = struct.unpack("<Q", packed[:8])
            n2 = rng.choice([0, 1, n - 1, n + 1, n + 8, len(packed), 2**63, 100_000_001, n - 8]) % 2**64
            return struct.pack("<Q", n2) + packed[8:], f"header length {n2}"
        data, note = mutate_bytes(rng, packed)
        return data, f"bytes {note}"

    def op_truncate(self, rng: random.Random, model: ArchiveModel, packed: bytes) -> tuple[bytes, str]:
        """Cut at a boundary: in the length field, at the header's end, at each part's start and end."""
        try:
            container = Container.parse(packed)
            (n,) = struct.unpack("<Q", packed[:8])
            points = container.boundaries(n)
        except Exception:  # noqa: BLE001 - an earlier byte edit broke the structure
            points = [0, 8]
        if rng.random() < 0.15:
            return packed + rng.randbytes(rng.randrange(1, 64)), "trailing bytes"
        return truncate_at(rng, packed, points)

    # -- running --

    def run(self, path: Path, case: Case, rec: Recorder) -> None:
        import sparsify
        from sparsify.archive import Archive

        expect = case.expect
        archive = rec.step(lambda: Archive(path))
        if archive is None:
            return
        with archive:
            rec.step(lambda: sparsify.inspect(path))
            decoded = [rec.step(lambda t=t: archive.decode(t)) for t in archive.tensors]
            blobs = rec.step(archive.source_meta)
            complete = all(d is not None for d in decoded) and blobs is not None
            rec.step(lambda: self._compare(archive, decoded, blobs, expect, complete))
        if complete or int(case.digest, 16) % 4 == 0:
            out = path.with_name("decompressed" + {"hdf5": ".h5", "npz": ".npz"}.get(expect["format"], ".safetensors"))
            rec.step(lambda: sparsify.decompress(path, out, force=True))
            out.unlink(missing_ok=True)

    @staticmethod
    def _compare(archive, decoded, blobs, expect, complete: bool) -> None:
        """Every tensor that decoded equals the undamaged decode of the tensor at its place.

        Formats before 2.1 record no checksum of a lossy tensor's decoded bytes or of a source blob's
        content, so bytes re-signed at the part level cannot be told from genuine ones there: for those
        archives only the bit-exact tensors (checked against the original's checksum) are judged."""
        want = expect["tensors"]
        if _format_before(archive, (2, 1)):
            keep = [bool(t.get("metrics", {}).get("exact")) for t in archive.tensors]
            decoded = [d if exact else None for d, exact in zip(decoded, keep, strict=True)]
            blobs = None
        names = [t.get("name") if isinstance(t, dict) else None for t in archive.tensors]
        if complete and names != [t["name"] for t in want]:
            raise WrongOutput(f"tensor list differs: archive decodes {names}, expected {[t['name'] for t in want]}")
        for i, array in enumerate(decoded):
            if array is None:
                continue
            if i >= len(want) or names[i] != want[i]["name"]:
                raise WrongOutput(
                    f"tensor list differs: tensor {i} {names[i]!r} decoded, not in the original at this place"
                )
            expect_equal(f"tensor {names[i]!r}", array, want[i])
        if blobs is not None:  # stored blobs are the seed's; inline ones (3.0) the damaged manifest's text
            inline = (archive.manifest.get("source") or {}).get("inline") or {}
            got = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.blobs.items()}
            want_blobs = {
                **expect["blobs"],
                **{k: hashlib.sha256(str(v).encode("utf-8")).hexdigest() for k, v in inline.items()},
            }
            if got != want_blobs:
                differ = sorted(k for k in set(got) | set(want_blobs) if got.get(k) != want_blobs.get(k))
                raise WrongOutput(f"source blobs differ: {differ} (inline: {sorted(inline)})")


def _format_before(archive, version: tuple[int, int]) -> bool:
    try:
        return tuple(int(x) for x in archive.manifest["format_version"].split(".")) < version
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _weighted_index(rng: random.Random, weights: list[float]) -> int:
    return weighted(rng, [(i, w) for i, w in enumerate(weights)])


# -- weight-file readers ------------------------------------------------------------------------


def read_everything(path: Path, rec: Recorder) -> tuple[list, dict[str, np.ndarray], Any] | None:
    """``open_weights(path)``, then ``tensors()``, ``read`` of each and ``source_meta()``, each step
    recorded; the infos, the arrays read and the meta (None where a step failed)."""
    from sparsify.io import open_weights

    reader = rec.step(lambda: open_weights(path))
    if reader is None:
        return None
    with reader:
        infos = rec.step(reader.tensors) or []
        arrays = {}
        for info in infos:
            array = rec.step(lambda info=info: reader.read(info.name))
            if array is not None:
                arrays[info.name] = array
        meta = rec.step(reader.source_meta)
    return infos, arrays, meta


def check_read(name: str, info, array: np.ndarray, want: np.ndarray) -> None:
    """What a reader returned for ``name`` equals ``want`` (what the file holds): shape, element size,
    bytes, and the declared shape and dtype agree with the array."""
    from sparsify import dtypes

    numpy_dtype = dtypes.numpy_of(info.dtype)
    if numpy_dtype is None:  # packed sub-byte types come as their bytes
        info = type(info)(info.name, "U8", tuple(want.shape), info.layout)
    if tuple(info.shape) != tuple(array.shape):
        raise WrongOutput(f"shape differs: {name!r} listed as {tuple(info.shape)}, read as {array.shape}")
    if tuple(want.shape) != tuple(array.shape):
        raise WrongOutput(f"shape differs: {name!r} read as {array.shape}, the file holds {want.shape}")
    if numpy_dtype is not None and numpy_dtype.itemsize != array.dtype.itemsize:
        raise WrongOutput(f"dtype differs: {name!r} listed as {info.dtype}, read as {array.dtype}")
    got = np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()
    expected = np.ascontiguousarray(want).reshape(-1).view(np.uint8).tobytes()
    if got != expected:
        raise WrongOutput(f"bytes differ: {name!r}: {len(got)} bytes read, not the {len(expected)} the file holds")


SAFETENSORS_DTYPES = [
    ("BOOL", np.bool_),
    ("U8", np.uint8),
    ("I8", np.int8),
    ("I16", "<i2"),
    ("U16", "<u2"),
    ("F16", "<f2"),
    ("I32", "<i4"),
    ("U32", "<u4"),
    ("F32", "<f4"),
    ("I64", "<i8"),
    ("U64", "<u8"),
    ("F64", "<f8"),
    ("C64", "<c8"),
]


def safetensors_seeds() -> dict[str, bytes]:
    """Sample safetensors files plus small hand-built ones: every dtype, empty and 0-d tensors, packed
    sub-byte types, metadata, an empty file."""
    seeds = {
        p.stem: p.read_bytes() for p in (SAMPLES / "digits_mlp_bf16.safetensors", SAMPLES / "digits_mlp.safetensors")
    }
    r = np.random.default_rng(3)
    entries = []
    for name, dt in SAFETENSORS_DTYPES:
        array = (r.standard_normal(6) * 50).astype(dt) if np.dtype(dt).kind != "b" else r.standard_normal(6) > 0
        entries.append({"name": f"t.{name}", "dtype": name, "shape": [2, 3], "data": array.tobytes()})
    for name in ("BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"):
        width = 2 if name == "BF16" else 1
        entries.append({"name": f"t.{name}", "dtype": name, "shape": [4], "data": r.bytes(4 * width)})
    entries.append({"name": "packed.F4", "dtype": "F4", "shape": [6], "data": r.bytes(3)})
    entries.append({"name": "packed.F6", "dtype": "F6_E2M3", "shape": [4], "data": r.bytes(3)})
    entries.append({"name": "empty", "dtype": "F32", "shape": [0, 5], "data": b""})
    entries.append({"name": "scalar", "dtype": "F64", "shape": [], "data": r.bytes(8)})
    seeds["dtypes"] = Container({"format": "pt", "x": "y"}, entries).pack()
    seeds["empty"] = Container({}, []).pack()
    seeds["small"] = Container({}, entries[8:9] + entries[-2:]).pack()
    return seeds


class SafetensorsTarget:
    """``open_weights`` + ``tensors`` / ``read`` / ``source_meta`` on damaged safetensors files; the oracle
    parses the header itself and slices each tensor's bytes out of the file."""

    name = "safetensors"

    def __init__(self, workdir: Path) -> None:
        self.seeds = safetensors_seeds()
        self.names = sorted(self.seeds)

    def generate(self, rng: random.Random) -> Case:
        seed = rng.choice(self.names)
        container = Container.parse(self.seeds[seed])
        ops = []
        for _ in range(weighted(rng, [(1, 5), (2, 3), (3, 1)])):
            kind = weighted(
                rng, [("header", 4), ("data", 2), ("text", 1.5), ("length", 1), ("truncate", 1.5), ("raw", 1)]
            )
            ops.append(kind)
            if kind == "header":
                header = container.header()
                ops[-1] = mutate_header_dict(rng, header)
                data = container.pack(header=header)
                container = _reparse(data, container)
                if container is None:
                    return Case(self.name, data, seed, ops)
            elif kind == "data" and container.entries:
                entry = rng.choice(container.entries)
                entry["data"], note = mutate_bytes(rng, entry["data"])
                entry["data"] = entry["data"][: len(entry["data"])]
                ops[-1] = f"data {entry['name']} {note}"
            else:
                data = container.pack()
                (n,) = struct.unpack("<Q", data[:8])
                if kind == "text":
                    text, note = mutate_bytes(rng, data[8 : 8 + n])
                    data, ops[-1] = container.pack(header_text=text), f"header text {note}"
                elif kind == "length":
                    n2 = rng.choice([0, 1, n - 1, n + 1, len(data), 2**63, 2**64 - 1, 100_000_001]) % 2**64
                    data, ops[-1] = struct.pack("<Q", n2) + data[8:], f"length {n2}"
                elif kind == "truncate":
                    data, ops[-1] = truncate_at(rng, data, container.boundaries(n))
                else:
                    data, ops[-1] = mutate_bytes(rng, data)
                return Case(self.name, data, seed, ops)
        return Case(self.name, container.pack(), seed, ops)

    def run(self, path: Path, case: Case, rec: Recorder) -> None:
        result = read_everything(path, rec)
        if result is None:
            return
        infos, arrays, meta = result
        rec.step(lambda: self._compare(path.read_bytes(), infos, arrays, meta))

    @staticmethod
    def _compare(data: bytes, infos, arrays, meta) -> None:
        from sparsify import dtypes

        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        listed = [k for k in header if k != "__metadata__"]
        if sorted(i.name for i in infos) != sorted(listed):
            raise WrongOutput(f"tensor list differs: {[i.name for i in infos]} vs header {listed}")
        for info in infos:
            spec = header[info.name]
            if info.dtype != spec["dtype"] or list(info.shape) != spec["shape"]:
                raise WrongOutput(
                    f"dtype differs: {info.name!r} listed as {info.dtype}{list(info.shape)}, header {spec}"
                )
            if info.name not in arrays:
                continue
            begin, end = spec["data_offsets"]
            raw = np.frombuffer(data[8 + n + begin : 8 + n + end], dtype=np.uint8)
            numpy_dtype = dtypes.numpy_of(spec["dtype"])
            want = raw if numpy_dtype is None else raw.view(numpy_dtype).reshape(spec["shape"])
            check_read(info.name, info, arrays[info.name], want)
        if meta is not None:
            if meta.blobs.get("header") != data[8 : 8 + n]:
                raise WrongOutput("header blob differs: source_meta's header is not the file's header bytes")
            if meta.summary.get("metadata") != (header.get("__metadata__") or {}):
                raise WrongOutput("metadata differs: source_meta's metadata is not the header's")


def _reparse(data: bytes, fallback: Container) -> Container | None:
    """The container of ``data`` if it still parses loosely (so later edits build on it), else None."""
    try:
        return Container.parse(data)
    except Exception:  # noqa: BLE001 - damaged past loose parsing: the case ends here
        return None


# -- npz ----------------------------------------------------------------------------------------


def npz_seeds() -> dict[str, bytes]:
    """The sample npz, plus small ones of every kind numpy writes: stored and deflated, odd dtypes,
    Fortran order, 0-d and empty arrays, a 2.0 header, an object array (which must be refused)."""
    import ml_dtypes

    seeds = {"digits_mlp": (SAMPLES / "digits_mlp.npz").read_bytes()}
    arrays = {
        "f4": np.arange(12, dtype=np.float32).reshape(3, 4),
        "be": np.arange(6, dtype=">f8"),
        "c16": np.arange(4) * (1 - 2j),
        "b": np.array([True, False, True]),
        "i1": np.arange(-3, 3, dtype=np.int8),
        "u8": np.arange(3, dtype=np.uint64),
        "s": np.array([b"ab", b"c"]),
        "u": np.array(["x", "yz"]),
        "rec": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i2")]),
        "fort": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "bf16": np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16),
        "f2": np.arange(5, dtype=np.float16),
    }
    for compressed in (False, True):
        buf = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buf, **arrays)
        seeds[f"mixed-{'deflate' if compressed else 'stored'}"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, small=np.arange(3, dtype=np.float32), obj=np.array([{"a": 1}, None], dtype=object))
    seeds["object"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        member = io.BytesIO()
        np.lib.format.write_array(member, np.arange(4, dtype=np.float32), version=(2, 0))
        z.writestr("v2.npy", member.getvalue())
    seeds["v2"] = buf.getvalue()
    return seeds


def npz_members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    """Each member's zip info and uncompressed bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info, z.read(info)) for info in z.infolist()]


def build_npz(members: list[tuple[zipfile.ZipInfo, bytes]], comment: bytes = b"") -> bytes:
    """A zip of ``members`` written by zipfile (so sizes and CRCs are right)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.comment = comment
        for info, payload in members:
            fresh = zipfile.ZipInfo(info.filename, info.date_time)
            fresh.compress_type = info.compress_type
            fresh.external_attr = info.external_attr
            z.writestr(fresh, payload)
    return buf.getvalue()


_NPY_DESCRS = [
    "'<f4'",
    "'>f4'",
    "'<f8'",
    "'|b1'",
    "'|u1'",
    "'<c16'",
    "'|O'",
    "'<U3'",
    "'|S0'",
    "'|V0'",
    "'<U999999999'",
    "'|V4'",
    "[('a', '<f4')]",
    "[('a', '|O')]",
    "'<M8[s]'",
    "'<m8'",
    "'<f16'",
    "'bfloat16'",
    "'x'",
    "0",
    "'<i8'",
    "('<f4', (2, 3))",
    "'<f2'",
]
_NPY_SHAPES = [
    "()",
    "(0,)",
    "(1,)",
    "(3,)",
    "(2, 3)",
    "(2**40,)",
    "(1099511627776,)",
    "(-1,)",
    "(3, -1)",
    "(9223372036854775807,)",
    "(4294967296, 4294967296)",
    "(1,) * 40",
    "[3]",
    "(3.0,)",
    "('a',)",
    "(0, 10**30)",
]


def mutate_npy_header(rng: random.Random, payload: bytes) -> tuple[bytes, str]:
    """A member's .npy header edited: its dict (descr, shape, fortran_order), version or lengths."""
    if len(payload) < 10 or not payload.startswith(b"\x93NUMPY"):
        return mutate_bytes(rng, payload)
    major = payload[6]
    hlen_size = 2 if major == 1 else 4
    hlen = int.from_bytes(payload[8 : 8 + hlen_size], "little")
    start = 8 + hlen_size
    if start + hlen > len(payload):  # an earlier edit broke the length: edit bytes instead
        return mutate_bytes(rng, payload)
    text, body = payload[start : start + hlen].decode("latin1"), payload[start + hlen :]
    kind = rng.randrange(6)
    if kind <= 2:
        fld = ["descr", "shape", "fortran_order"][kind]
        value = {
            "descr": rng.choice(_NPY_DESCRS),
            "shape": rng.choice(_NPY_SHAPES),
            "fortran_order": rng.choice(["True", "False", "1", "None", "'yes'"]),
        }[fld]
        new = "{" + ", ".join(f"'{k}': {value if k == fld else v}" for k, v in _npy_fields(text).items()) + ", }"
        new = new.ljust(hlen if len(new) < hlen else len(new) + (-(len(new) + start) % 64) - 1) + "\n"
        size = len(new)
        if major == 1 and size > 65535:
            return payload, "npy header too long"
        head = payload[:8] + size.to_bytes(hlen_size, "little")
        return head + new.encode("latin1") + body, f"npy {fld}={value}"
    if kind == 3:
        version = rng.choice([(1, 0), (2, 0), (3, 0), (0, 0), (9, 9)])
        return payload[:6] + bytes(version) + payload[8:], f"npy version {version}"
    if kind == 4:
        new_len = rng.choice([0, 1, hlen - 1, hlen + 1, 2**16 - 1, len(payload)]) % 2 ** (8 * hlen_size)
        return payload[:8] + new_len.to_bytes(hlen_size, "little") + payload[start:], f"npy header length {new_len}"
    text2, note = mutate_bytes(rng, text.encode("latin1"))
    return payload[:8] + len(text2).to_bytes(hlen_size, "little")[:hlen_size] + text2 + body, f"npy header text {note}"


def _npy_fields(text: str) -> dict[str, str]:
    """The three fields of a .npy header dict, as source text."""
    import ast

    try:
        parsed = ast.literal_eval(text.strip())
        return {
            "descr": repr(parsed["descr"]),
            "fortran_order": repr(parsed["fortran_order"]),
            "shape": repr(parsed["shape"]),
        }
    except Exception:  # noqa: BLE001
        return {"descr": "'<f4'", "fortran_order": "False", "shape": "(3,)"}


def zip_boundaries(data: bytes) -> list[int]:
    """Offsets of local headers, member data ends, the central directory and its end record."""
    points = [0, 4, 30, len(data) - 22, len(data) - 2]
    for sig in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06"):
        i = data.find(sig)
        while i >= 0:
            points += [i, i + 4]
            i = data.find(sig, i + 1)
    return points


def mutate_zip_fields(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A field of a local header, a central directory entry or the end record set to a hostile value."""
    buf = bytearray(data)
    spots = []
    for sig, fields in (
        (
            b"PK\x03\x04",
            {
                "flags": (6, 2),
                "method": (8, 2),
                "crc": (14, 4),
                "csize": (18, 4),
                "usize": (22, 4),
                "namelen": (26, 2),
                "extralen": (28, 2),
            },
        ),
        (
            b"PK\x01\x02",
            {
                "flags": (8, 2),
                "method": (10, 2),
                "crc": (16, 4),
                "csize": (20, 4),
                "usize": (24, 4),
                "namelen": (28, 2),
                "extralen": (30, 2),
                "offset": (42, 4),
            },
        ),
        (
            b"PK\x05\x06",
            {
                "disk_entries": (8, 2),
                "entries": (10, 2),
                "cd_size": (12, 4),
                "cd_offset": (16, 4),
                "comment_len": (20, 2),
            },
        ),
    ):
        i = data.find(sig)
        while i >= 0:
            spots += [(sig, i, name, off, size) for name, (off, size) in fields.items()]
            i = data.find(sig, i + 1)
    if not spots:
        return mutate_bytes(rng, data)
    sig, i, name, off, size = rng.choice(spots)
    old = int.from_bytes(buf[i + off : i + off + size], "little")
    pool = [
        0,
        1,
        old + 1,
        max(old - 1, 0),
        2 ** (8 * size) - 1,
        8,
        12,
        14,
        99,
        old ^ 1,
        old ^ 8,
        0x10000 % 2 ** (8 * size),
    ]
    new = rng.choice(pool) % 2 ** (8 * size)
    buf[i + off : i + off + size] = new.to_bytes(size, "little")
    return bytes(buf), f"zip {sig[2:].hex()}@{i}.{name}={new}"


class NpzTarget:
    """``open_weights`` + ``tensors`` / ``read`` / ``source_meta`` on damaged npz files; the oracle reads
    each member with zipfile (CRC checked) and numpy's .npy header parser."""

    name = "npz"

    def __init__(self, workdir: Path) -> None:
        self.seeds = npz_seeds()
        self.names = sorted(self.seeds)

    def generate(self, rng: random.Random) -> Case:
        seed = weighted(rng, [(n, 0.3 if n == "digits_mlp" else 1.0) for n in self.names])
        data = self.seeds[seed]
        members = npz_members(data)
        ops = []
        # member-level edits, re-zipped correctly (so the damage reaches the .npy parser)
        for _ in range(weighted(rng, [(0, 2), (1, 4), (2, 2)])):
            index = rng.randrange(len(members))
            info, payload = members[index]
            kind = weighted(rng, [("npy", 4), ("body", 2), ("name", 1), ("method", 0.5), ("dup", 0.5), ("bomb", 0.3)])
            if kind == "npy":
                payload, note = mutate_npy_header(rng, payload)
            elif kind == "body":
                payload, note = mutate_bytes(rng, payload)
            elif kind == "name":
                info = copy.copy(info)
                info.filename = rng.choice(
                    [
                        "x",
                        "a.npy",
                        "../up.npy",
                        "/abs.npy",
                        "dir/k.npy",
                        ".npy",
                        "é.npy",
                        info.filename + "x",
                        members[0][0].filename,
                    ]
                )
                note = f"rename {info.filename}"
            elif kind == "method":
                info = copy.copy(info)
                info.compress_type = (
                    zipfile.ZIP_DEFLATED if info.compress_type == zipfile.ZIP_STORED else zipfile.ZIP_STORED
                )
                note = "recompress"
            elif kind == "dup":
                members.append((info, payload))
                note = "duplicate member"
            else:
                header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
                header["shape"] = (rng.choice([2**26, 2**28, 2**33]),)
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, header)
                info = copy.copy(info)
                info.compress_type = zipfile.ZIP_DEFLATED
                payload = head.getvalue() + b"\0" * rng.choice([2**20, 2**22])
                note = f"zeros bomb {header['shape']}"
            members[index] = (info, payload)
            ops.append(f"{info.filename}: {note}")
        data = build_npz(members, comment=rng.choice([b"", b"c"]))
        # zip-level edits, left as they are (so the damage reaches the zip parser)
        for _ in range(weighted(rng, [(0, 4), (1, 2), (2, 1)])):
            kind = weighted(rng, [("field", 3), ("truncate", 1.5), ("bytes", 1.5)])
            if kind == "field":
                data, note = mutate_zip_fields(rng, data)
            elif kind == "truncate":
                data, note = truncate_at(rng, data, zip_boundaries(data))
            else:
                data, note = mutate_bytes(rng, data)
            ops.append(note)
        return Case(self.name, data, seed, ops)

    def run(self, path: Path, case: Case, rec: Recorder) -> None:
        result = read_everything(path, rec)
        if result is None:
            return
        infos, arrays, meta = result
        rec.step(lambda: self._compare(path, infos, arrays))

    @staticmethod
    def _compare(path: Path, infos, arrays) -> None:
        for info in infos:
            if info.name not in arrays:
                continue
            try:
                want = reference_npy(path, info.name)
            except Exception as exc:  # noqa: BLE001 - the reference could not read it: neither should sparsify
                raise WrongOutput(
                    f"accepted invalid: {info.name!r} read, but zipfile/numpy refuse it: {_one_line(exc)}"
                ) from None
            check_read(info.name, info, arrays[info.name], want)


def _npy_header_reader():
    """numpy's own .npy header parser (all versions; it moved to a private module in numpy 2)."""
    try:
        from numpy.lib import _format_impl as impl
    except ImportError:  # numpy 1.x
        impl = np.lib.format
    return impl._read_array_header


def reference_npy(path: Path, key: str) -> np.ndarray:
    """Member ``<key>.npy`` read by zipfile (CRC checked) and numpy's safe header parser, no pickles."""
    with zipfile.ZipFile(path) as z:
        names = [i.filename for i in z.infolist()]
        if names.count(key + ".npy") != 1:
            raise ValueError(f"{names.count(key + '.npy')} members named {key}.npy")
        payload = z.read(key + ".npy")
    stream = io.BytesIO(payload)
    version = np.lib.format.read_magic(stream)
    shape, fortran, dtype = _npy_header_reader()(stream, version, max_header_size=10000)
    if dtype.hasobject:
        raise ValueError("object array")
    count = math.prod(shape)
    body = payload[stream.tell() :]
    need = count * dtype.itemsize
    if len(body) != need:
        raise ValueError(f"member holds {len(body)} data bytes, the header declares {need}")
    array = np.frombuffer(body, dtype=dtype, count=count) if dtype.itemsize else np.zeros(count, dtype)
    return array.reshape(shape, order="F" if fortran else "C")


# -- HDF5 ---------------------------------------------------------------------------------------

COMPANION_BYTES = bytes(range(256)) * 16  # "outside.bin": what external storage points at
COMPANION_NAMES = ("outside.bin", "other.h5")


def write_companions(directory: Path) -> None:
    """The files hostile HDF5 cases point at (external storage, external links, virtual sources)."""
    import h5py

    (directory / "outside.bin").write_bytes(COMPANION_BYTES)
    if not (directory / "other.h5").exists():
        with h5py.File(directory / "other.h5", "w") as f:
            f.create_dataset("data", data=np.arange(64, dtype=np.float32).reshape(8, 8))
            f["loop"] = h5py.ExternalLink("case.h5", "/")


def _h5_dtypes(rng: random.Random):
    """An HDF5 element type and a small array of it (None: write nothing)."""
    import h5py
    import ml_dtypes

    kind = rng.randrange(16)
    if kind <= 4:
        dt = np.dtype(
            rng.choice(["<f4", ">f4", "<f8", ">f8", "<f2", "|i1", "<i2", ">i4", "<u8", "|u1", "|b1", "<c8", ">c16"])
        )
        return dt, None
    if kind == 5:
        return h5py.string_dtype(), np.array(["a", "bc"], dtype=object)
    if kind == 6:
        return h5py.vlen_dtype(np.int32), None
    if kind == 7:
        return np.dtype([("a", "<f4"), ("b", "<i2")]), None
    if kind == 8:
        return h5py.enum_dtype({"RED": 0, "GREEN": 1}, basetype="i1"), None
    if kind == 9:
        return np.dtype("(2,3)<f4"), None
    if kind == 10:
        return np.dtype("V4"), None
    if kind == 11:
        return h5py.ref_dtype, None
    if kind == 12:
        return np.dtype("S5"), None
    if kind == 13:
        return np.dtype(ml_dtypes.bfloat16), None  # stored by h5py as opaque
    if kind == 14:
        return np.dtype("<f4"), None
    return np.dtype("<M8[s]") if rng.random() < 0.2 else np.dtype("<i8"), None


def _h5_fill(dt: np.dtype, shape: tuple[int, ...], rng: random.Random) -> np.ndarray:
    n = math.prod(shape)
    raw = np.frombuffer(rng.randbytes(n * dt.itemsize), dtype=np.uint8)
    if dt.kind == "b":
        return (raw > 127).reshape(shape)
    if dt.kind in "fc":
        return np.arange(n, dtype=dt).reshape(shape)
    return raw.view(dt).reshape(shape)


def build_hdf5(rng: random.Random, path: Path) -> list[str]:
    """An HDF5 file with a random, often hostile layout; returns what was put in it."""
    import h5py

    notes = []
    libver = rng.choice([None, "earliest", "latest", ("earliest", "v108")])
    kwargs = {"libver": libver} if libver else {}
    if rng.random() < 0.15:
        kwargs["userblock_size"] = rng.choice([512, 1024])
    with h5py.File(path, "w", track_order=rng.random() < 0.3, **kwargs) as f:
        f.attrs["keras_version"] = "2.15.0"
        for i in range(weighted(rng, [(1, 3), (2, 3), (4, 2), (8, 0.5)])):
            group = f.require_group(rng.choice(["/", "model_weights/dense", "a/b/c", "g"])) if rng.random() < 0.6 else f
            name = f"d{i}" + rng.choice(["", ":0", ".weight", "/x"])
            if name in group:
                continue
            notes.append(_h5_dataset(rng, f, group, name))
        for _ in range(weighted(rng, [(0, 3), (1, 2), (3, 1)])):
            notes.append(_h5_extra(rng, f))
    return notes


def _h5_dataset(rng: random.Random, f, group, name: str) -> str:
    import h5py

    dt, data = _h5_dtypes(rng)
    layout = weighted(
        rng,
        [
            ("plain", 3),
            ("chunked", 3),
            ("filtered", 3),
            ("huge", 1.5),
            ("external", 1.5),
            ("virtual", 1),
            ("compact", 1),
            ("null", 0.3),
            ("resizable", 0.7),
        ],
    )
    shape = rng.choice([(), (0,), (5,), (3, 4), (2, 3, 4), (1, 1, 1, 1), (7, 1)])
    if data is not None:
        shape = data.shape
    try:
        if layout == "huge":
            big = rng.choice([(2**31,), (2**20, 2**20), (2**40,), (2**62 // 8,)])
            group.create_dataset(
                name, shape=big, dtype=dt if dt.kind in "fiub" else "<f4", chunks=True, fillvalue=rng.choice([0, 1])
            )
        elif layout == "external":
            size = math.prod(shape or (1,)) * max(dt.itemsize, 1)
            target = rng.choice(["outside.bin", "/dev/zero", "missing.bin"])
            dt = dt if dt.kind in "fiu" else np.dtype("<f4")
            size = math.prod(shape or (1,)) * dt.itemsize
            extent = rng.choice([size, size, h5py.h5f.UNLIMITED])
            group.create_dataset(name, shape=shape, dtype=dt, external=[(target, rng.choice([0, 1, 4096]), extent)])
        elif layout == "virtual":
            source = rng.choice(["other.h5", "case.h5", "missing.h5"])
            vlayout = h5py.VirtualLayout(shape=(8, 8), dtype="<f4")
            vlayout[:] = h5py.VirtualSource(source, "data", shape=(8, 8))
            group.create_virtual_dataset(name, vlayout, fillvalue=-1)
        elif layout == "compact":
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            dt = dt if dt.kind in "fiu" else np.dtype("<f4")
            space = h5py.h5s.create_simple(shape or (1,))
            h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(dt), space, dcpl=dcpl)
            group[name][...] = _h5_fill(dt, shape or (1,), rng)
        elif layout == "null":
            group.create_dataset(name, data=h5py.Empty("<f4"))
        else:
            kwargs: dict[str, Any] = {}
            if layout in ("chunked", "filtered", "resizable") and shape and math.prod(shape):
                kwargs["chunks"] = tuple(rng.choice([1, d, max(1, d // 2), d + 3]) for d in shape)
                if layout == "resizable":
                    kwargs["maxshape"] = tuple(None for _ in shape)
                if layout == "filtered":
                    kwargs.update(
                        rng.choice(
                            [
                                {"compression": "gzip", "compression_opts": rng.randrange(10)},
                                {"compression": "lzf"},
                                {"shuffle": True, "fletcher32": True},
                                {"scaleoffset": 2} if dt.kind == "f" else {"scaleoffset": 0},
                                {"compression": "gzip", "shuffle": True},
                            ]
                        )
                    )
            if data is None and rng.random() < 0.8 and dt.kind in "fiucbSV" and not dt.subdtype:
                data = _h5_fill(dt, shape, rng)
            if data is not None:
                group.create_dataset(name, data=data, dtype=dt, **kwargs)
            else:
                group.create_dataset(name, shape=shape, dtype=dt, **kwargs)
        ds = group[name] if name in group else None
        if ds is not None and rng.random() < 0.3:
            ds.attrs["dtype"] = rng.choice(["bfloat16", "float8_e4m3fn", "float32", "x"])
        return f"{group.name}/{name}: {layout} {dt} {shape}"
    except Exception as exc:  # noqa: BLE001 - h5py refused this combination: note it, carry on
        return f"{name}: {layout} {dt} not made ({type(exc).__name__})"


def _h5_extra(rng: random.Random, f) -> str:
    """Links, loops, named types and odd attributes."""
    import h5py

    kind = rng.randrange(8)
    try:
        if kind == 0:
            f["soft_loop"] = h5py.SoftLink("/soft_loop")
            f.require_group("s")["up"] = h5py.SoftLink("/s")
            return "soft-link loops"
        if kind == 1:
            f["ext"] = h5py.ExternalLink(
                rng.choice(["other.h5", "case.h5", "missing.h5"]), rng.choice(["/data", "/", "/loop"])
            )
            return "external link"
        if kind == 2:
            g = f.require_group("cycle")
            g["parent"] = f["/"]
            g["self"] = g
            return "hard-link cycle"
        if kind == 3:
            f["named_type"] = np.dtype([("x", "<f8"), ("y", "S3")])
            return "named datatype"
        if kind == 4:
            f.attrs["big"] = np.arange(rng.choice([10, 20000]), dtype=np.float64)
            f.attrs["empty"] = h5py.Empty("f4")
            f.attrs["vlen"] = (
                np.array([b"x", b"yy"], dtype=h5py.vlen_dtype(np.dtype("S1")))[:0] if False else "vlen string"
            )
            f.attrs.create("ref", f.ref, dtype=h5py.ref_dtype)
            return "odd attributes"
        if kind == 5:
            f.attrs[rng.choice(["\u00e9t\u00e9", "a" * 300, "x/y", " "])] = rng.choice(
                [b"\xff\xfe", "s" * 300, np.float64("nan"), [1, 2]]
            )
            return "odd attribute names/values"
        if kind == 6:
            f.require_group("deep/" * 30)
            return "deep groups"
        f["dangling"] = h5py.SoftLink("/nowhere")
        return "dangling soft link"
    except Exception as exc:  # noqa: BLE001
        return f"extra {kind} not made ({type(exc).__name__})"


def hdf5_boundaries(data: bytes) -> list[int]:
    """Offsets of HDF5 structures found by signature (superblock, object headers, B-trees, heaps)."""
    points = [0, 8, len(data) // 2]
    for sig in (b"\x89HDF", b"OHDR", b"TREE", b"HEAP", b"SNOD", b"BTHD", b"FRHP", b"GCOL", b"OCHK"):
        i = data.find(sig)
        while i >= 0 and len(points) < 200:
            points += [i, i + 4, i + 16]
            i = data.find(sig, i + 1)
    return points


class HDF5Target:
    """``open_weights`` + ``tensors`` / ``read`` / ``source_meta`` on HDF5 files with hostile layouts,
    built with h5py per case and sometimes damaged byte-wise. Oracle: h5py reads each dataset; data kept
    outside the file (external storage, virtual datasets, external links) must not be read."""

    name = "hdf5"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / "hdf5-build"
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_companions(self.workdir)
        self.keras = (SAMPLES / "digits_mlp.h5").read_bytes()

    def generate(self, rng: random.Random) -> Case:
        if rng.random() < 0.08:
            data, seed, ops = self.keras, "digits_mlp.h5", []
        else:
            path = self.workdir / "case.h5"
            path.unlink(missing_ok=True)
            cwd = os.getcwd()
            os.chdir(self.workdir)
            try:
                ops = build_hdf5(rng, path)
            finally:
                os.chdir(cwd)
            data, seed = path.read_bytes(), "generated"
        if rng.random() < 0.3:
            if rng.random() < 0.5:
                data, note = truncate_at(rng, data, hdf5_boundaries(data))
            else:
                data, note = mutate_bytes(rng, data, rng.randrange(1, 6))
            ops.append(note)
        return Case(self.name, data, seed, ops)

    def run(self, path: Path, case: Case, rec: Recorder) -> None:
        write_companions(path.parent)
        cwd = os.getcwd()
        os.chdir(path.parent)  # external storage names resolve against the working directory
        try:
            result = read_everything(path, rec)
            if result is not None:
                infos, arrays, meta = result
                rec.step(lambda: self._compare(path, infos, arrays))
        finally:
            os.chdir(cwd)

    @staticmethod
    def _compare(path: Path, infos, arrays) -> None:
        import h5py

        with h5py.File(path, "r") as f:
            for info in infos:
                if info.name not in arrays:
                    continue
                ds = f[info.name]
                dcpl = ds.id.get_create_plist()
                if dcpl.get_layout() == h5py.h5d.VIRTUAL:
                    raise WrongOutput(f"read outside the file: {info.name!r} is a virtual dataset")
                if dcpl.get_external_count():
                    raise WrongOutput(f"read outside the file: {info.name!r} has external storage")
                if os.path.abspath(ds.file.filename) != os.path.abspath(path):
                    raise WrongOutput(f"read outside the file: {info.name!r} is in {ds.file.filename}")
                try:
                    dtype = ds.dtype if ds.dtype.subdtype is None else np.dtype(f"V{ds.dtype.itemsize}")
                    want = np.empty(ds.shape, dtype=dtype)
                    if want.size:
                        ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, want, mtype=ds.id.get_type())
                except Exception as exc:  # noqa: BLE001
                    raise WrongOutput(
                        f"accepted invalid: {info.name!r} read, but h5py cannot: {_one_line(exc)}"
                    ) from None
                check_read(info.name, info, arrays[info.name], want)


# -- pipeline and rules parsers -----------------------------------------------------------------

_VALUES = [
    "0",
    "1",
    "-1",
    "0.5",
    "1e-9",
    "1e309",
    "-0",
    "nan",
    "inf",
    "-inf",
    "1_0",
    "0x10",
    " 3 ",
    "\u0663",
    "1e400",
    "9" * 5000,
    "true",
    "false",
    "yes",
    "",
    "=",
    "2**8",
    "0.9999999999999999",
    "8.0",
    "128",
    "2147483648",
    "first",
    "last",
    "dct",
    "learned",
    "auto",
    "exact",
    "\x00",
    "\u00e9",
    "1.5e3",
    "+4",
    "4 2",
]


def pipeline_seeds() -> list[str]:
    """Valid pipelines for every method, value coder and coder (canonical and short forms)."""
    return ARCHIVE_PIPELINES + [
        "threshold:max_error=0.05+zstd",
        "svd:energy=0.9,solver=randomized,oversample=4,power_iters=1",
        "lasso:nnz=2,debias=false,view=last",
        "ksvd:max_error=0.1,iters=2,sample=0.5",
        "quant:max_error=0.01",
        "threshold:threshold=0.1+fp32+zstd:level=22,bytegroup=false",
        "svd:max_error=0.1,block=4+codebook:k=256",
    ]


def generate_pipeline_text(rng: random.Random) -> tuple[str, list[str]]:
    """A pipeline string: a valid one edited, or one assembled from stage names, keys and values."""
    from sparsify.methods import CODERS, METHODS, VALUE_CODERS

    roll = rng.random()
    if roll < 0.4:
        text = rng.choice(pipeline_seeds())
        pieces = re.split(r"(=[^,+]*)", text)
        values = [i for i, piece in enumerate(pieces) if piece.startswith("=")]
        for _ in range(rng.randrange(3) if values else 0):
            pieces[rng.choice(values)] = "=" + rng.choice(_VALUES)
        return "".join(pieces), ["values replaced"]
    if roll < 0.65:
        text = rng.choice(pipeline_seeds())
        data, note = mutate_bytes(rng, text.encode())
        return data.decode("utf-8", "replace"), [note]
    classes = {**METHODS, **VALUE_CODERS, **CODERS}
    stages = []
    for _ in range(weighted(rng, [(1, 3), (2, 3), (3, 2), (5, 1)])):
        name = rng.choice(list(classes) + ["", "x", " keep", "KEEP", "zstd "])
        cls = classes.get(name.strip())
        keys = [p.name for p in cls.params] if cls is not None else []
        args = [
            f"{rng.choice(keys + ['x', ''])}={rng.choice(_VALUES)}"
            for _ in range(rng.randrange(4))
            if keys or rng.random() < 0.5
        ]
        stages.append(name + (":" + rng.choice([",", ", ", ",,"]).join(args) if args or rng.random() < 0.2 else ""))
    return rng.choice(["+", " + ", "++"]).join(stages), ["assembled"]


class PipelineTarget:
    """``parse_pipeline`` and ``parse_rule`` on generated text; a parsed pipeline prints as text that
    parses to the same pipeline."""

    name = "pipeline"

    def __init__(self, workdir: Path) -> None:
        pass

    def generate(self, rng: random.Random) -> Case:
        text, ops = generate_pipeline_text(rng)
        if rng.random() < 0.3:
            text = rng.choice(["*", "*.weight", "", "=", "[a-", "l1.*", "**"]) + rng.choice(["=", "", "=="]) + text
            ops.append("as rule")
        return Case(self.name, text.encode("utf-8", "surrogatepass"), "text", ops)

    def run(self, path: Path, case: Case, rec: Recorder) -> None:
        from sparsify.pipeline import parse_pipeline
        from sparsify.rules import parse_rule

        text = case.data.decode("utf-8", "replace")
        if "as rule" in case.ops:
            rule = rec.step(lambda: parse_rule(text))
            if rule is not None:
                rec.step(lambda: check_round_trip(rule.pipeline))
            return
        pipeline = rec.step(lambda: parse_pipeline(text))
        if pipeline is not None:
            rec.step(lambda: check_round_trip(pipeline))


def check_round_trip(pipeline) -> None:
    """The canonical text of a parsed pipeline parses back to the same canonical text."""
    from sparsify.pipeline import parse_pipeline, short_text

    text = str(pipeline)
    again = parse_pipeline(text)
    if str(again) != text:
        raise WrongOutput(f"round trip differs: {text!r} parses back as {str(again)!r}")
    if str(parse_pipeline(short_text(text))) != text:
        raise WrongOutput(f"round trip differs: short form {short_text(text)!r} of {text!r}")


_TOML_VALUES = [
    '"keep"',
    '"threshold:sparsity=0.9+zstd"',
    "1",
    "-1",
    "1.5",
    "true",
    "[]",
    "{}",
    '["keep"]',
    "1979-05-27T07:32:00Z",
    "nan",
    "inf",
    "9223372036854775807",
    '""',
    "'literal'",
    '"""multi\nline"""',
    '"\\u00e9"',
    '{ match = "*", pipeline = "keep" }',
    "0x10",
    "1e400",
]


def generate_rules_toml(rng: random.Random) -> tuple[bytes, list[str]]:
    """A rules file: valid keys and tables with values of every TOML type, often hostile."""
    lines, ops = [], []
    if rng.random() < 0.7:
        value = rng.choice(_TOML_VALUES) if rng.random() < 0.4 else json.dumps(generate_pipeline_text(rng)[0])
        lines.append(f"pipeline = {value}")
    if rng.random() < 0.5:
        lines.append(f"min_size = {rng.choice(_TOML_VALUES + ['0', '1024', '-5', '1.0'])}")
    if rng.random() < 0.1:
        lines.append(f"{rng.choice(['rules', 'x', 'Pipeline'])} = 1")
    for _ in range(rng.randrange(4)):
        lines.append(rng.choice(["[[rule]]", "[[rule]]", "[rule]", "[[rule.x]]"]))
        for key in rng.sample(["match", "pipeline", "extra"], rng.randrange(4)):
            value = (
                json.dumps(generate_pipeline_text(rng)[0])
                if key == "pipeline" and rng.random() < 0.6
                else rng.choice(_TOML_VALUES)
            )
            lines.append(f"{key} = {value}")
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if rng.random() < 0.3:
        data, note = mutate_bytes(rng, data)
        ops.append(note)
    return data, ops


class RulesTarget:
    """``load_rules_file`` on generated TOML; what it returns is well typed and its pipelines round-trip."""

    name = "rules"

    def __init__(self, workdir: Path) -> None:
        pass

    def generate(self, rng: random.Random) -> Case:
        data, ops = generate_rules_toml(rng)
        return Case(self.name, data, "toml", ops)

    def run(self, path: Path, case: Case, rec: Recorder) -> None:
        from sparsify.rules import load_rules_file

        rules = rec.step(lambda: load_rules_file(path))
        if rules is None:
            return
        rec.step(lambda: self._check(rules))

    @staticmethod
    def _check(rules) -> None:
        if rules.min_size is not None and (type(rules.min_size) is not int or rules.min_size < 0):
            raise WrongOutput(f"min_size differs: {rules.min_size!r} accepted")
        for rule in rules.rules:
            if not isinstance(rule.pattern, str):
                raise WrongOutput(f"pattern differs: {rule.pattern!r} accepted")
            check_round_trip(rule.pipeline)
        if rules.pipeline is not None:
            check_round_trip(rules.pipeline)


TARGETS = {
    "archive": ArchiveTarget,
    "safetensors": SafetensorsTarget,
    "npz": NpzTarget,
    "hdf5": HDF5Target,
    "pipeline": PipelineTarget,
    "rules": RulesTarget,
}


def make_target(name: str, workdir: Path, **kwargs):
    """The target ``name`` with its seeds built under ``workdir``."""
    return TARGETS[name](workdir, **kwargs)


# -- reproducers --------------------------------------------------------------------------------


def save_case(case: Case, outcome: Outcome, directory: Path) -> Path:
    """Write ``case`` as ``<target>-<hash>.<ext>`` with a JSON sidecar saying how it was made and found."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / case.filename
    path.write_bytes(case.data)
    sidecar = case.sidecar()
    sidecar["found"] = {
        "kind": outcome.kind,
        "detail": outcome.detail,
        "where": outcome.where,
        "message": outcome.message,
        "seconds": round(outcome.seconds, 3),
    }
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=1, allow_nan=True) + "\n")
    return path


def load_case(path: Path) -> Case:
    """A saved reproducer (see :func:`save_case`)."""
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    return Case(sidecar["target"], path.read_bytes(), sidecar["seed"], sidecar["ops"], sidecar["expect"])


def saved_cases(directory: Path = CASES) -> list[Path]:
    return sorted(p for p in directory.glob("*") if p.suffix != ".json" and p.with_name(p.name + ".json").exists())
