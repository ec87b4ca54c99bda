"""Scale benchmark: peak memory and multi-core speed-up of the CLI on generated multi-GB model folders.

Measures the issue's two targets on Hugging Face-style folders that this script generates (seeded,
streamed shard by shard, so generation itself never holds more than one 64 MiB chunk):

1. **Memory.** On a four-shard model of ≥ 8 GB whose largest tensor (an fp32 embedding) is ≥ 512 MiB,
   the real CLI runs ``compress`` (lossless, ``--jobs 1`` and ``--jobs 2``), ``inspect``, ``verify
   --against`` the source and ``decompress``. Each is started by a small launcher process, and the
   launcher's descendants (the CLI and the pool's resource tracker, fork server and workers) are
   sampled every ``--interval`` seconds through ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``).
   Reported: the peak of the tree's summed RSS (the limit applies to it; it counts pages shared
   between processes once per process), the peak of the largest single process, the CLI's own peak,
   and the kernel's ``ru_maxrss`` of ``getrusage(RUSAGE_CHILDREN)`` in the launcher after waiting (the
   largest single process among the CLI and the descendants it reaped; the launcher keeps it per
   command and free of the benchmark's own peak, which a forked child inherits). The limit is
   ``jobs × 2 × largest tensor + 300 MB``; each run is PASS or MISS with its margin. The jobs-1 and
   jobs-2 archives must be byte-identical and the decompressed folder byte-identical to the source.
2. **Speed-up.** On a ~1.1 GB folder of many 8–64 MB bf16/fp32 tensors: lossless compress with
   ``--jobs 1`` and ``--jobs 2`` alternately (ABAB..., ``--repeats`` of each, best time kept), and the
   same with ``--target-ratio 8`` on a model of ``--ratio-model-mb`` (rate control is slow, so it gets
   its own size and ``--ratio-repeats``). Target: best jobs-1 time / best jobs-2 time ≥ 1.8. Every
   archive of a mode must be byte-identical (jobs 1 against jobs 2, and across repetitions).

CPU ÷ wall: CPU seconds of the whole tree (the larger of ``RUSAGE_CHILDREN``'s user + system time and
the sum of the last ``/proc/<pid>/stat`` times seen of every process in the tree, which also counts
workers that nobody reaps) / wall seconds; wall seconds are timed by the launcher around the CLI.
Subprocesses get ``OPENBLAS/OMP/MKL/BLIS_NUM_THREADS=1`` (so ``--jobs 1`` is one core; ``--all-threads``
leaves them alone) and run with ``-q`` (stdout, where ``--json`` reports go, is kept for the figures).
MB = 1e6 bytes; MB/s = the source's weight-file bytes / 1e6 / wall seconds, for every command. Source
files are read once before the timed runs so that every run starts from a warm page cache.

Generated models live under ``--workdir`` (default ``/var/tmp/sparsify-bench-scale``) and are reused
when their ``<folder>.manifest.json`` matches (delete both to regenerate); archives and decompressed
folders are deleted after measuring unless ``--keep``. ``--quick`` scales everything down (a 600 MB model
with a 128 MiB largest tensor, a 200 MB speed-up model, a 40 MB rate-control model) to check that the
script works; it writes ``scale-quick.md/.json`` so the real results are never overwritten.

Writes ``<output-dir>/scale.json`` (every figure, the machine, the date) and ``scale.md`` (the tables),
and prints the Markdown to stdout; progress goes to stderr. Exits 1 if a command fails, an archive
differs between runs or a round trip is not byte-identical (a missed target is reported, not fatal).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from common import log, machine  # noqa: E402

MB = 1_000_000
MIB = 1 << 20
# the installed console script beside this interpreter (the real CLI), else ``python -m sparsify``
SPARSIFY_SCRIPT = Path(sys.executable).with_name("sparsify")
SPARSIFY = [str(SPARSIFY_SCRIPT)] if SPARSIFY_SCRIPT.exists() else [sys.executable, "-m", "sparsify"]
THREAD_LIMIT_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
GENERATOR_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"  # beside the folder, so the folder holds only the model
SHARDS = 4
CHUNK_BYTES = 64 * MIB  # float32 working set of the generator
FIXED_MEMORY_MB = 300
SPEEDUP_TARGET = 1.8
TARGET_RATIO = 8.0
DEFAULT_WORKDIR = Path("/var/tmp/sparsify-bench-scale")

FULL = {"big_mb": 8000, "largest_mib": 512, "speed_mb": 1100, "ratio_mb": 1100}
QUICK = {"big_mb": 600, "largest_mib": 128, "speed_mb": 200, "ratio_mb": 40}
ISSUE = {"big_bytes": 8 * 10**9, "largest_bytes": 512 * MIB, "speed_bytes": 10**9}


# --- the generated models -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """One generated tensor: normal values with a scale per row (``scale`` × a log-normal factor);
    ``offset`` is added (1.0 for LayerNorm weights)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype: "F32" or "BF16"
    scale: float
    offset: float = 0.0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * (4 if self.dtype == "F32" else 2)


@dataclass(frozen=True)
class Model:
    """A generated model folder: its name (unique per content) and tensors in file order."""

    kind: str
    tensors: tuple[Tensor, ...]
    seed: int = 0

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def largest(self) -> Tensor:
        return max(self.tensors, key=lambda t: t.nbytes)

    def manifest(self) -> dict[str, Any]:
        return {
            "generator_version": GENERATOR_VERSION,
            "kind": self.kind,
            "seed": self.seed,
            "shards": SHARDS,
            "tensors": [asdict(t) | {"shape": list(t.shape)} for t in self.tensors],
        }

    @property
    def name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.kind}-{self.weight_bytes // MB}MB-{digest}"


def layer_tensors(i: int, hidden: int, inter: int, attn_dtype: str, mlp_dtype: str) -> list[Tensor]:
    """One Llama-style decoder layer: attention and MLP projections and two LayerNorm vectors."""
    p = f"model.layers.{i}."
    scale_h, scale_i = hidden**-0.5, inter**-0.5
    out = [Tensor(p + "input_layernorm.weight", (hidden,), "F32", 0.02, 1.0)]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        out.append(Tensor(p + f"self_attn.{proj}.weight", (hidden, hidden), attn_dtype, scale_h))
    out.append(Tensor(p + "post_attention_layernorm.weight", (hidden,), "F32", 0.02, 1.0))
    out.append(Tensor(p + "mlp.gate_proj.weight", (inter, hidden), mlp_dtype, scale_h))
    out.append(Tensor(p + "mlp.up_proj.weight", (inter, hidden), mlp_dtype, scale_h))
    out.append(Tensor(p + "mlp.down_proj.weight", (hidden, inter), mlp_dtype, scale_i))
    return out


def decoder_model(
    kind: str, target_bytes: int, hidden: int, inter: int, vocab: int, fp32_layer: int
) -> tuple[Tensor, ...]:
    """An fp32 embedding (vocab × hidden), decoder layers until ``target_bytes`` is reached (every
    ``fp32_layer``-th layer's attention, and in ``speed`` models its MLP too, in fp32; the rest bf16),
    a final norm and a bf16 LM head."""
    tensors = [Tensor("model.embed_tokens.weight", (vocab, hidden), "F32", 0.02)]
    tail = [
        Tensor("model.norm.weight", (hidden,), "F32", 0.02, 1.0),
        Tensor("lm_head.weight", (vocab, hidden), "BF16", hidden**-0.5),
    ]
    i = 0
    while sum(t.nbytes for t in tensors + tail) < target_bytes:
        wide = i % fp32_layer == fp32_layer - 1
        attn = "F32" if wide else "BF16"
        mlp = "F32" if wide and kind == "speed" else "BF16"
        tensors += layer_tensors(i, hidden, inter, attn, mlp)
        i += 1
    return tuple(tensors + tail)


def big_model(target_mb: int, largest_mib: int) -> Model:
    """The memory model: hidden 4096 (2048 below 2 GB); the fp32 embedding is the largest tensor."""
    hidden, inter = (4096, 11008) if target_mb >= 2000 else (2048, 5504)
    vocab = largest_mib * MIB // (hidden * 4)
    return Model("big", decoder_model("big", target_mb * MB, hidden, inter, vocab, fp32_layer=3))


def speed_model(target_mb: int) -> Model:
    """The speed-up model: many 8–64 MB tensors (hidden 2048; 1024 below 500 MB), every second layer fp32."""
    hidden, inter = (2048, 5632) if target_mb >= 500 else (1024, 2816)
    vocab = 8192 if target_mb >= 500 else 4096
    return Model("speed", decoder_model("speed", target_mb * MB, hidden, inter, vocab, fp32_layer=2))


def shard_groups(tensors: tuple[Tensor, ...], shards: int) -> list[list[Tensor]]:
    """Contiguous groups of about equal bytes, in file order (the last group takes the rest)."""
    total = sum(t.nbytes for t in tensors)
    groups: list[list[Tensor]] = [[]]
    done = 0
    for t in tensors:
        if groups[-1] and len(groups) < shards and done + t.nbytes / 2 > total * len(groups) / shards:
            groups.append([])
        groups[-1].append(t)
        done += t.nbytes
    assert len(groups) == shards, f"{len(tensors)} tensors do not fill {shards} shards"
    return groups


def tensor_chunks(t: Tensor, rng: np.random.Generator):
    """The tensor's values as numpy arrays of at most ``CHUNK_BYTES`` of float32, in row order."""
    rows = t.shape[0] if len(t.shape) > 1 else 1
    cols = t.nbytes // rows // (4 if t.dtype == "F32" else 2)
    row_scales = (t.scale * np.exp(0.25 * rng.standard_normal(rows))).astype(np.float32)
    step = max(1, CHUNK_BYTES // (cols * 4))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        values = rng.standard_normal((stop - start, cols), dtype=np.float32)
        values *= row_scales[start:stop, None]
        values += np.float32(t.offset)
        yield values if t.dtype == "F32" else values.astype(ml_dtypes.bfloat16)


def write_shard(path: Path, tensors: list[Tensor], seed: int, first_index: int) -> None:
    """A safetensors file written tensor by tensor: 8-byte little-endian header length, the JSON
    header (padded with spaces to a multiple of 8), then the raw little-endian bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for k, t in enumerate(tensors):
            rng = np.random.default_rng([seed, first_index + k])
            for chunk in tensor_chunks(t, rng):
                f.write(np.ascontiguousarray(chunk).view(np.uint8))  # little-endian on x86 and arm


def shard_name(i: int) -> str:
    return f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"


def write_side_files(root: Path, model: Model, weight_map: dict[str, str]) -> None:
    """``model.safetensors.index.json``, ``config.json`` and a small ``tokenizer.json``."""
    index = {"metadata": {"total_size": model.weight_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    embed = model.tensors[0]
    layers = sum(t.name.endswith("q_proj.weight") for t in model.tensors)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": embed.shape[1],
        "num_hidden_layers": layers,
        "vocab_size": embed.shape[0],
        "torch_dtype": "bfloat16",
        "note": "generated by sparsify's bench/scale.py: random weights",
    }
    (root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    vocab = {f"tok{i}": i for i in range(2000)}
    tokenizer = {"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": []}}
    (root / "tokenizer.json").write_text(json.dumps(tokenizer))


def expected_files(model: Model) -> dict[str, int]:
    """Shard name -> size in bytes (header included), without writing anything."""
    sizes = {}
    for i, group in enumerate(shard_groups(model.tensors, SHARDS)):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in group:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        length = len(json.dumps(header, separators=(",", ":")).encode())
        sizes[shard_name(i)] = 8 + length + (-length % 8) + offset
    return sizes


def manifest_path(root: Path) -> Path:
    return root.with_name(root.name + MANIFEST_SUFFIX)


def is_complete(root: Path, model: Model) -> bool:
    """True if ``root`` holds this model: its manifest matches and every shard has its size."""
    try:
        manifest = json.loads(manifest_path(root).read_text())
    except (OSError, ValueError):
        return False
    files = expected_files(model)
    if manifest != model.manifest() | {"files": files}:
        return False
    return all((root / name).is_file() and (root / name).stat().st_size == size for name, size in files.items())


def ensure_model(model: Model, workdir: Path) -> Path:
    """The model's folder under ``workdir``, generated (into ``*.partial``, then renamed) unless a
    complete one is there; its manifest (``<folder>.manifest.json``) is written last."""
    root = workdir / model.name
    if is_complete(root, model):
        log(f"reusing {root} ({model.weight_bytes / MB:,.0f} MB)")
        return root
    manifest_path(root).unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    weight_map: dict[str, str] = {}
    index = 0
    for i, group in enumerate(shard_groups(model.tensors, SHARDS)):
        size = sum(t.nbytes for t in group)
        log(f"generating {partial.name}/{shard_name(i)}: {len(group)} tensors, {size / MB:,.0f} MB")
        write_shard(partial / shard_name(i), group, model.seed, index)
        weight_map.update(dict.fromkeys((t.name for t in group), shard_name(i)))
        index += len(group)
    write_side_files(partial, model, weight_map)
    partial.rename(root)
    manifest_path(root).write_text(json.dumps(model.manifest() | {"files": expected_files(model)}, indent=1) + "\n")
    log(f"generated {root} in {time.perf_counter() - started:.0f} s")
    return root


def model_record(model: Model, root: Path) -> dict[str, Any]:
    """What the tables say about a model."""
    by_dtype: dict[str, int] = defaultdict(int)
    for t in model.tensors:
        by_dtype[t.dtype] += t.nbytes
    return {
        "name": model.name,
        "path": str(root),
        "shards": SHARDS,
        "tensors": len(model.tensors),
        "weight_bytes": model.weight_bytes,
        "file_bytes": weight_file_bytes(root),
        "bytes_by_dtype": dict(by_dtype),
        "largest": {"name": model.largest.name, "shape": list(model.largest.shape), "dtype": model.largest.dtype}
        | {"bytes": model.largest.nbytes},
        "tensor_bytes_range": [min(t.nbytes for t in model.tensors if len(t.shape) > 1), model.largest.nbytes],
    }


def weight_file_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*.safetensors"))


# --- measuring one CLI run ------------------------------------------------------------------------


# Starts the CLI as its own child and, once it has exited, writes the wall time and
# getrusage(RUSAGE_CHILDREN) to argv[1]. On Linux a child inherits its parent's peak RSS across
# fork and exec, so the CLI must be forked from this small process, not from the benchmark (which
# holds numpy and generation buffers): then ru_maxrss is the CLI's own (and that of any descendant
# it reaped), for this command alone.
LAUNCHER = """
import os, resource, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
status = os.waitpid(pid, 0)[1]
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    f.write(f"{wall} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def scan_processes() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, user + system CPU in clock ticks), from ``/proc/<pid>/stat``."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def descendants(processes: dict[int, tuple[int, int]], root: int) -> list[int]:
    """The live descendants of ``root`` (not ``root`` itself), parents before children."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in processes.items():
        children[ppid].append(pid)
    tree: list[int] = []
    todo = sorted(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo += sorted(children.get(pid, []))
    return tree


def rss_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, RssAnon)`` of a process in KiB; zeros if it is gone or a zombie."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"RssAnon:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return rss, anon


@dataclass
class Peaks:
    """Peaks over the samples of the CLI's process tree (the launcher's descendants), in KiB; and
    the last CPU time seen of every process in it (missing at most one period of each)."""

    tree_rss: int = 0
    tree_anon: int = 0
    parent_rss: int = 0
    single_rss: int = 0
    processes: int = 0
    samples: int = 0
    cpu_ticks: dict[int, int] | None = None

    def sample(self, launcher: int) -> None:
        processes = scan_processes()
        tree = descendants(processes, launcher)
        if not tree:
            return
        figures = {pid: rss_kib(pid) for pid in tree}
        self.tree_rss = max(self.tree_rss, sum(r for r, _ in figures.values()))
        self.tree_anon = max(self.tree_anon, sum(a for _, a in figures.values()))
        self.parent_rss = max(self.parent_rss, figures[tree[0]][0])
        self.single_rss = max(self.single_rss, max(r for r, _ in figures.values()))
        self.processes = max(self.processes, sum(r > 0 for r, _ in figures.values()))
        self.samples += 1
        self.cpu_ticks = (self.cpu_ticks or {}) | {pid: processes[pid][1] for pid in tree if pid in processes}

    @property
    def cpu_s(self) -> float:
        return sum((self.cpu_ticks or {}).values()) / CLOCK_TICKS


def run_cli(args: list[str], env: dict[str, str], interval: float, stdout: Path | None = None) -> dict[str, Any]:
    """Run ``sparsify ARGS`` (through ``LAUNCHER``) and return its exit code, wall time, CPU time,
    peak memory and stderr's tail."""
    with (
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as usage,
        open(stdout or os.devnull, "wb") as out,
    ):
        command = [sys.executable, "-S", "-c", LAUNCHER, usage.name, *SPARSIFY, *args]
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=REPO)
        peaks = Peaks()
        while proc.poll() is None:
            peaks.sample(proc.pid)
            time.sleep(interval)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
        figures = usage.read().split()
    wall, maxrss_kib, rusage_cpu = (float(figures[0]), int(figures[1]), float(figures[2])) if figures else (0, 0, 0)
    return {
        "argv": ["sparsify", *args],
        "returncode": proc.returncode,
        "wall_s": round(wall, 3),
        "peak_tree_rss_bytes": peaks.tree_rss * 1024,
        "peak_tree_anon_bytes": peaks.tree_anon * 1024,
        "peak_parent_rss_bytes": peaks.parent_rss * 1024,
        "peak_single_rss_bytes": peaks.single_rss * 1024,
        "rusage_children_maxrss_bytes": maxrss_kib * 1024,
        "rusage_children_cpu_s": round(rusage_cpu, 3),
        "sampled_tree_cpu_s": round(peaks.cpu_s, 3),
        "cpu_per_wall": round(max(rusage_cpu, peaks.cpu_s) / wall, 3) if wall else None,
        "max_processes": peaks.processes,
        "samples": peaks.samples,
        "stderr_tail": tail,
    }


def child_env(all_threads: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not all_threads:
        env.update(dict.fromkeys(THREAD_LIMIT_VARS, "1"))
    return env


# --- comparing folders ----------------------------------------------------------------------------


def folder_digest(root: Path) -> str:
    """SHA-256 over every file's relative name and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(8 * MIB):
                digest.update(block)
    return digest.hexdigest()


def same_folders(a: Path, b: Path) -> str:
    """``byte-identical``, or what differs (files present in one only, or the first differing file)."""
    names_a = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    names_b = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    if names_a != names_b:
        return f"DIFFERENT files: {sorted(names_a ^ names_b)[:5]}"
    for name in sorted(names_a):
        with open(a / name, "rb") as fa, open(b / name, "rb") as fb:
            while True:
                block_a, block_b = fa.read(8 * MIB), fb.read(8 * MIB)
                if block_a != block_b:
                    return f"DIFFERENT bytes in {name}"
                if not block_a:
                    break
    return "byte-identical"


def warm_cache(root: Path) -> None:
    """Read every file once, so the timed runs start from a warm page cache."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            while f.read(8 * MIB):
                pass


def compress_report(path: Path) -> dict[str, Any] | None:
    """The ratio and rate-control figures of a ``--json`` compress report (None if unreadable)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    plan = report.get("plan") or {}
    return {
        "ratio": report["totals"]["ratio"],
        "archive_bytes": report["archive"]["bytes"],
        "weighted_rel_error": report["totals"]["weighted_rel_error"],
        "target_met": plan.get("met"),
    }


# --- part 1: memory -------------------------------------------------------------------------------


def memory_limit(largest: int, jobs: int) -> int:
    """``jobs × 2 × largest tensor + 300 MB``."""
    return jobs * 2 * largest + FIXED_MEMORY_MB * MB


def judge(run: dict[str, Any], limit: int) -> None:
    """Add the limit, the margin (limit − peak tree RSS) and PASS/MISS to ``run``."""
    run["limit_bytes"] = limit
    run["margin_bytes"] = limit - run["peak_tree_rss_bytes"]
    run["result"] = "PASS" if run["margin_bytes"] >= 0 else "MISS"


def memory_part(model: Model, root: Path, work: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Compress (jobs 1 and 2), inspect, verify and decompress the big model, each measured."""
    source_bytes = weight_file_bytes(root)
    largest = model.largest.nbytes
    a1, a2, restored = work / "big-j1.sparsify", work / "big-j2.sparsify", work / "big-restored"
    for path in (a1, a2, restored):
        shutil.rmtree(path, ignore_errors=True)
    steps = [
        ("compress", 1, ["compress", str(root), "-o", str(a1), "-j", "1", "-q", "--json"]),
        ("compress", 2, ["compress", str(root), "-o", str(a2), "-j", "2", "-q", "--json"]),
        ("inspect", 1, ["inspect", str(a1)]),
        ("verify --against", 1, ["verify", str(a1), "--against", str(root), "-q"]),
        ("decompress", 1, ["decompress", str(a1), "-o", str(restored), "-q"]),
    ]
    warm_cache(root)
    runs = []
    for command, jobs, argv in steps:
        log(f"memory: sparsify {' '.join(argv)}")
        report_path = work / "report.json"
        run = run_cli(argv, env, args.interval, stdout=report_path if command == "compress" else None)
        run.update(command=command, jobs=jobs, mb_per_s=source_bytes / MB / run["wall_s"])
        run["report"] = compress_report(report_path) if command == "compress" else None
        judge(run, memory_limit(largest, jobs))
        run["check"] = memory_check(command, jobs, run, root, a1, a2, restored)
        log(f"  {run['wall_s']:.1f} s, peak tree RSS {run['peak_tree_rss_bytes'] / MB:,.0f} MB: {run['result']}")
        runs.append(run)
        if command == "compress" and jobs == 2 and not args.keep:
            shutil.rmtree(a2, ignore_errors=True)  # compared with a1 already: no need for both on disk
    if not args.keep:
        shutil.rmtree(a1, ignore_errors=True)
        shutil.rmtree(restored, ignore_errors=True)
    return {"model": model_record(model, root), "largest_tensor_bytes": largest, "runs": runs}


def memory_check(command: str, jobs: int, run: dict[str, Any], root: Path, a1: Path, a2: Path, restored: Path) -> str:
    """The correctness check after a step: exit code; jobs-2 archive == jobs-1 archive; round trip."""
    if run["returncode"] != 0:
        return f"FAILED: exit {run['returncode']}: {run['stderr_tail'].strip()[-300:]}"
    if command == "compress" and jobs == 2:
        return "archive " + same_folders(a1, a2) + " to jobs 1"
    if command == "decompress":
        return "folder " + same_folders(root, restored) + " to the source"
    return "exit 0"


# --- part 2: speed-up -----------------------------------------------------------------------------


# A fixed amount of pure-Python work, run in one process and in two at once (machine_capacity).
CAPACITY_LOOP = "x = 0\nfor k in range(20_000_000):\n    x += k\n"


def machine_capacity(repeats: int = 2) -> dict[str, float]:
    """How much more CPU work two processes get done than one on this machine right now:
    2 × best wall time of one loop / best wall time of two loops at once (2.0 on two free cores,
    about 1.0 when the machine gives two processes one core's worth). Bounds any ``--jobs 2`` speed-up."""

    def wall(processes: int) -> float:
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-S", "-c", CAPACITY_LOOP]) for _ in range(processes)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - start

    one, two = [], []
    for _ in range(repeats):
        one.append(wall(1))
        two.append(wall(2))
    return {"one_s": round(min(one), 3), "two_s": round(min(two), 3), "capacity": round(2 * min(one) / min(two), 3)}


def timed_compress(
    mode: str, jobs: int, root: Path, work: Path, args: argparse.Namespace, env: dict[str, str]
) -> tuple[dict[str, Any], str | None]:
    """One measured compress of ``root`` (lossless or ``--target-ratio``) with ``jobs`` workers;
    returns the run and the archive's digest (None if the run failed)."""
    out = work / f"{mode}-j{jobs}.sparsify"
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--target-ratio", f"{TARGET_RATIO:g}"] if mode == "target-ratio" else []
    argv = ["compress", str(root), "-o", str(out), "-j", str(jobs), "-q", "--json", *extra]
    log(f"{mode}: sparsify {' '.join(argv)}")
    report_path = work / "report.json"
    run = run_cli(argv, env, args.speed_interval, stdout=report_path)
    run.update(jobs=jobs, report=compress_report(report_path))
    log(f"  {run['wall_s']:.1f} s, CPU ÷ wall {fmt(run['cpu_per_wall'])}")
    # exit 1 with a report: --target-ratio not reached, which the table shows
    ok = run["returncode"] == 0 or (mode == "target-ratio" and run["returncode"] == 1 and run["report"])
    if not ok:
        run["check"] = f"FAILED: exit {run['returncode']}: {run['stderr_tail'].strip()[-300:]}"
        return run, None
    run["check"] = f"exit {run['returncode']}"
    digest = folder_digest(out)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return run, digest


def speedup_part(
    mode: str, model: Model, root: Path, work: Path, repeats: int, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """Compress with ``--jobs 1`` and ``--jobs 2`` alternately, ``repeats`` times each; best times,
    their ratio, whether every archive is byte-identical, and the machine's capacity before and after."""
    warm_cache(root)
    capacity_before = machine_capacity()
    log(f"{mode}: machine capacity for two processes {capacity_before['capacity']:.2f}")
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    digests = set()
    for rep in range(repeats):
        for jobs in (1, 2):
            run, digest = timed_compress(mode, jobs, root, work, args, env)
            run["repeat"] = rep + 1
            runs[jobs].append(run)
            digests |= {digest} if digest else set()
    capacity_after = machine_capacity()
    source_bytes = weight_file_bytes(root)
    best = {jobs: min(r["wall_s"] for r in rs) for jobs, rs in runs.items()}
    speedup = best[1] / best[2]
    failed = any(r["check"].startswith("FAILED") for rs in runs.values() for r in rs)
    return {
        "mode": mode,
        "model": model_record(model, root),
        "source_bytes": source_bytes,
        "runs": runs[1] + runs[2],
        "best_s": {str(j): b for j, b in best.items()},
        "mb_per_s": {str(j): source_bytes / MB / b for j, b in best.items()},
        "speedup": speedup,
        "target": SPEEDUP_TARGET,
        "result": "PASS" if speedup >= SPEEDUP_TARGET else "MISS",
        "machine_capacity": {"before": capacity_before, "after": capacity_after},
        "archives": "FAILED run" if failed else ("byte-identical" if len(digests) == 1 else "DIFFERENT"),
        "archive_digest": next(iter(digests)) if len(digests) == 1 else None,
    }


# --- the report -----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def mb(n: int | float | None, digits: int = 0) -> str:
    return "–" if n is None else f"{n / MB:,.{digits}f}"


def model_line(label: str, m: dict[str, Any], required: int | None = None) -> str:
    """One line describing a model, and whether it is as large as the issue asks."""
    big = m["largest"]
    dtypes = ", ".join(f"{k} {mb(v)} MB" for k, v in sorted(m["bytes_by_dtype"].items()))
    line = (
        f"* {label}: `{m['name']}`, {m['shards']} shards, {m['tensors']} tensors, {mb(m['file_bytes'])} MB of "
        f"weight files ({dtypes}); largest tensor `{big['name']}` {big['dtype']} "
        f"{'×'.join(map(str, big['shape']))} = {big['bytes']:,} B"
    )
    if required is not None:
        line += f" (the issue asks ≥ {mb(required)} MB: {'yes' if m['file_bytes'] >= required else 'NO'})"
    return line


def memory_table(part: dict[str, Any]) -> list[str]:
    largest = part["largest_tensor_bytes"]
    lines = [
        "## Memory: peak RSS against 2 × largest tensor + 300 MB (× jobs for the per-tensor part)",
        "",
        f"Largest tensor {largest:,} B ({mb(largest, 1)} MB); limit = jobs × 2 × {mb(largest, 1)} MB + "
        f"{FIXED_MEMORY_MB} MB, compared with the peak summed RSS of the process tree. Issue: largest tensor "
        f"≥ 512 MiB: {'yes' if largest >= ISSUE['largest_bytes'] else 'NO'}.",
        "",
        "| command | jobs | wall s | MB/s | CPU ÷ wall | peak RSS tree MB | peak RssAnon tree MB "
        "| peak RSS largest process MB | peak RSS CLI process MB | ru_maxrss MB | processes | limit MB "
        "| result (margin MB) | check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in part["runs"]:
        cells = [
            f"`{r['command']}`",
            str(r["jobs"]),
            f"{r['wall_s']:.1f}",
            f"{r['mb_per_s']:.1f}",
            fmt(r["cpu_per_wall"]),
            mb(r["peak_tree_rss_bytes"]),
            mb(r["peak_tree_anon_bytes"]),
            mb(r["peak_single_rss_bytes"]),
            mb(r["peak_parent_rss_bytes"]),
            mb(r["rusage_children_maxrss_bytes"]),
            str(r["max_processes"]),
            mb(r["limit_bytes"]),
            f"{r['result']} ({mb(r['margin_bytes'])})",
            r["check"] + ratio_note(r.get("report")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def capacity_cell(capacity: dict[str, dict[str, float]]) -> str:
    return f"{capacity['before']['capacity']:.2f} / {capacity['after']['capacity']:.2f}"


def ratio_note(report: dict[str, Any] | None) -> str:
    return "" if not report else f"; ratio {report['ratio']:.3f}"


def speedup_table(parts: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"## Speed-up of `--jobs 2` over `--jobs 1` (target ≥ {SPEEDUP_TARGET:g}×)",
        "",
        "Runs alternate jobs 1 and jobs 2 (ABAB...); the best time of each is kept; speed-up = best jobs-1 "
        "time / best jobs-2 time. Archives: every archive of the mode (both jobs, every repetition) compared. "
        "Machine capacity: how much more pure-Python work two processes did than one, measured just before and "
        "just after the mode's runs (2.00 on two free cores); no `--jobs 2` speed-up can exceed it.",
        "",
        "| mode | model MB | jobs | runs s | best s | MB/s | CPU ÷ wall (best run) | peak RSS tree MB | ratio "
        "| speed-up | result | machine capacity before / after | archives |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for part in parts:
        for jobs in ("1", "2"):
            runs = [r for r in part["runs"] if str(r["jobs"]) == jobs]
            report = runs[-1]["report"]
            ratio = f"{report['ratio']:.3f}" if report else "–"
            if report and report["target_met"] is False:
                ratio += " (target not met)"
            first = jobs == "1"
            cells = [
                f"`{'lossless' if part['mode'] == 'lossless' else f'--target-ratio {TARGET_RATIO:g}'}`",
                mb(part["source_bytes"]),
                jobs,
                " / ".join(f"{r['wall_s']:.1f}" for r in runs),
                f"{part['best_s'][jobs]:.1f}",
                f"{part['mb_per_s'][jobs]:.1f}",
                fmt(min(runs, key=lambda r: r["wall_s"])["cpu_per_wall"]),
                mb(max(r["peak_tree_rss_bytes"] for r in runs)),
                ratio,
                f"{part['speedup']:.2f}×" if not first else "",
                part["result"] if not first else "",
                capacity_cell(part["machine_capacity"]) if not first else "",
                part["archives"] if not first else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    failures = [r["check"] for part in parts for r in part["runs"] if r["check"].startswith("FAILED")]
    lines += ["", *(f"* {f}" for f in failures)] if failures else []
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    m, s = data["machine"], data["settings"]
    threads = "BLAS/OpenMP threads = 1" if s["thread_limit"] else "BLAS/OpenMP threads not limited"
    lines = [
        f"# sparsify scale benchmark{' (quick)' if s['quick'] else ''} ({data['date']})",
        "",
        f"Machine: {m['cpu_model']}, nproc {m['nproc']} ({m['cpu_count']} CPUs), {m['platform']}, Python "
        f"{m['python']}, numpy {m['numpy']}, sparsify {m['sparsify']}; the CLI in a subprocess with {threads}, "
        f"process tree sampled every {s['interval']} s (memory) / {s['speed_interval']} s (speed-up) from "
        "/proc/<pid>/status; ru_maxrss = getrusage(RUSAGE_CHILDREN) of a launcher per command. "
        "MB = 1e6 B; MB/s = weight-file bytes / wall s. "
        f"Load average {load(m['load_average'])} at the start, {load(data['load_average_end'])} at the end; "
        f"run time {data['elapsed_s']} s. Definitions: the docstring of `bench/scale.py`.",
        "",
        "Models (generated, seeded: normal values with per-row log-normal scales):",
        "",
    ]
    if data["memory"]:
        lines.append(model_line("memory", data["memory"]["model"], ISSUE["big_bytes"]))
    for part in data["speedup"]:
        lines.append(model_line(part["mode"], part["model"], ISSUE["speed_bytes"]))
    if data["memory"]:
        lines += ["", *memory_table(data["memory"])]
    if data["speedup"]:
        lines += ["", *speedup_table(data["speedup"])]
    return "\n".join(lines) + "\n"


def load(values: list[float] | None) -> str:
    return "–" if values is None else "/".join(f"{v:.1f}" for v in values)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down models; writes scale-quick.md/.json")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"default {DEFAULT_WORKDIR}")
    parser.add_argument("--keep", action="store_true", help="keep the archives and decompressed folders")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the memory part")
    parser.add_argument("--skip-speedup", action="store_true", help="leave out the lossless speed-up")
    parser.add_argument("--skip-ratio", action="store_true", help="leave out the --target-ratio speed-up")
    parser.add_argument("--big-model-mb", type=int, help="memory model size (default 8000; quick 600)")
    parser.add_argument("--largest-mib", type=int, help="its largest tensor in MiB (default 512; quick 128)")
    parser.add_argument("--speed-model-mb", type=int, help="lossless speed-up model (default 1100; quick 200)")
    parser.add_argument("--ratio-model-mb", type=int, help="--target-ratio speed-up model (default 1100; quick 40)")
    parser.add_argument("--repeats", type=int, default=2, help="lossless runs per jobs value (default 2)")
    parser.add_argument("--ratio-repeats", type=int, default=1, help="--target-ratio runs per jobs value (default 1)")
    parser.add_argument("--interval", type=float, default=0.05, help="memory sampling period, s (default 0.05)")
    parser.add_argument(
        "--speed-interval", type=float, default=0.25, help="sampling period in the speed-up runs, s (default 0.25)"
    )
    parser.add_argument("--all-threads", action="store_true", help="do not set BLAS/OpenMP threads to 1")
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results", help="default bench/results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.big_model_mb = args.big_model_mb or sizes["big_mb"]
    args.largest_mib = args.largest_mib or sizes["largest_mib"]
    args.speed_model_mb = args.speed_model_mb or sizes["speed_mb"]
    args.ratio_model_mb = args.ratio_model_mb or sizes["ratio_mb"]
    return args


def failures(data: dict[str, Any]) -> list[str]:
    """Every failed command, differing archive or broken round trip."""
    out = []
    if data["memory"]:
        out += [
            f"{r['command']} -j {r['jobs']}: {r['check']}" for r in data["memory"]["runs"] if "FAILED" in r["check"]
        ]
        out += [r["check"] for r in data["memory"]["runs"] if "DIFFERENT" in r["check"]]
    for part in data["speedup"]:
        out += [f"{part['mode']}: {r['check']}" for r in part["runs"] if r["check"].startswith("FAILED")]
        if part["archives"] != "byte-identical":
            out.append(f"{part['mode']}: archives {part['archives']}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    env = child_env(args.all_threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = args.workdir / f"outputs-{os.getpid()}"
    work.mkdir()
    data: dict[str, Any] = {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(cpu_model=cpu_model(), nproc=len(os.sched_getaffinity(0))),
        "settings": {
            "quick": args.quick,
            "thread_limit": not args.all_threads,
            "interval": args.interval,
            "speed_interval": args.speed_interval,
            "repeats": args.repeats,
            "ratio_repeats": args.ratio_repeats,
            "target_ratio": TARGET_RATIO,
            "speedup_target": SPEEDUP_TARGET,
            "memory_limit": f"jobs * 2 * largest tensor bytes + {FIXED_MEMORY_MB} MB",
            "mb": MB,
            "workdir": str(args.workdir),
        },
        "memory": None,
        "speedup": [],
    }
    try:
        if not args.skip_memory:
            model = big_model(args.big_model_mb, args.largest_mib)
            data["memory"] = memory_part(model, ensure_model(model, args.workdir), work, args, env)
        modes = [("lossless", args.speed_model_mb, args.repeats, args.skip_speedup)]
        modes.append(("target-ratio", args.ratio_model_mb, args.ratio_repeats, args.skip_ratio))
        for mode, size, repeats, skip in modes:
            if not skip:
                model = speed_model(size)
                root = ensure_model(model, args.workdir)
                data["speedup"].append(speedup_part(mode, model, root, work, repeats, args, env))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    data["load_average_end"] = list(os.getloadavg())
    markdown = render_markdown(data)
    stem = "scale-quick" if args.quick else "scale"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.output_dir / f"{stem}.md").write_text(markdown)
    print(markdown, end="")
    log(f"wrote {args.output_dir / stem}.json and .md in {data['elapsed_s']} s")
    problems = failures(data)
    for problem in problems:
        log(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
