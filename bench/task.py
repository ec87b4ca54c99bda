"""Task-fidelity benchmark (issue 12): AntiBERTy's outputs after compression, against the original's.

Model: AntiBERTy (PyPI ``antiberty==0.1.3``, MIT; a BERT of 8 layers, hidden size 512, 26,040,892
weights in 149 tensors), its checkpoint converted to safetensors by ``bench/antiberty.py`` (torch
``weights_only=True``, into the system temp's cache, never the repository) and run as a
``transformers.BertForMaskedLM`` on CPU in float32, eval mode, no grad (``bench/task_model.py``).

Inputs (``bench/task_sequences.py``, regenerated from the seed every run): 200 test sequences,
seeded point mutations (1-5 % of positions) of the three unmasked sequences in AntiBERTy's README;
64 calibration sequences from the same stream, disjoint, from which ``bench/task_importance.py`` records
the three importance files (activation second moments; the masked-LM loss's K-FAC Fisher factors; the
same with each linear weight's full input second-moment matrix, ``fisher-inputs``).
The MLM inputs mask a fixed seeded 15 % of each test sequence's residues (the same for every setting).

Settings (``SETTINGS``, one line each; all in one run): the original; RTN through sparsify's own
pipelines (``quant:bits=B[,group=128]+zstd``: round to nearest, symmetric, a float16 scale per row
or per group of 128, the codes and scales then zstd-coded); an NF4 reference (``bench/task_nf4.py``,
numpy, not sparsify); sparsify rate control ``target_ratio=R`` with default options, swept; and
other sparsify options, ``importance=`` one of the three recorded files among them. Every sparsify
setting is a real archive: ``sparsify.compress`` of the fp32 file, ``sparsify.decompress``, the
decompressed file loaded into the model. As sparsify applies any
pipeline, 1-D tensors and tensors under 1,024 elements (biases, LayerNorms, ``position_ids``) stay
lossless; NF4 quantises the same tensors (>= 2-D float, >= 1,024 elements). A setting whose keyword
``sparsify.compress`` does not accept (yet) is listed as planned and skipped.

Bits per weight = 8 x archive bytes / 26,040,892 (every tensor of the file). NF4 has no archive: its
figure is the same whole-model count, 4 bits per quantised value + 32 bits per block of 64 on the
quantised tensors, the other tensors at their stored bits (32, or 64 for the int64 ``position_ids``),
and no header at all.

Metrics (``bench/task_model.py``): mean cosine of the mean-pooled last hidden state and mean 1 − cosine,
MLM top-1 agreement at the masked positions, mean KL(p_original ‖ p_compressed) of the MLM
distributions over the 20 amino acids, all against the original weights; also the MLM accuracy
against the true residues and the weights' weighted rel. error.

Digits MLP (``sample_models/digits_mlp.safetensors``): test accuracy at ``target_ratio`` 12-14
through ``bench/lossy.py``'s own functions. CREPE: ``bench/lossy.py`` has no task metric for CREPE
(its CREPE rows are weight errors), so they stay in ``bench/results/lossy.md``.

Writes ``<output-dir>/task.md`` (also printed) and ``task.json``; progress on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests"), str(REPO / "sample_models")]

import numpy as np  # noqa: E402
import rtn  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from antiberty import AntiBERTyUnavailable, antiberty_files, wheel_path  # noqa: E402
from common import log, machine  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from task_importance import MODES, record  # noqa: E402
from task_model import build_model, compare, load, make_inputs, run  # noqa: E402
from task_nf4 import quantise  # noqa: E402
from task_report import digits_met, render, targets  # noqa: E402
from task_sequences import SEED, calibration_sequences, test_sequences  # noqa: E402

import sparsify  # noqa: E402

MASK_SEED = SEED + 1  # the masked positions
MIN_MLM_ACCURACY = 0.5  # the original must predict this share of masked residues (a random BERT: ~0.05)


@dataclass(frozen=True)
class Setting:
    label: str
    kind: str  # "original", "sparsify" (sparsify.compress keywords in call) or "nf4"
    family: str  # "original", "rtn", "nf4", "sweep" (target_ratio, defaults), "data-free", "importance"
    call: dict[str, Any] = field(default_factory=dict)  # importance: the mode; its file is made in the run


def rate(ratio: float, family: str = "sweep", **options: Any) -> Setting:
    """A rate-control setting: ``sparsify.compress(..., target_ratio=ratio, **options)``."""
    flags = "".join(
        f" --{k} {v + '.safetensors' if k == 'importance' else v}".replace("_", "-") for k, v in options.items()
    )
    return Setting(f"sparsify --target-ratio {ratio}{flags}", "sparsify", family, {"target_ratio": ratio, **options})


def rtn_pipeline(label: str, pipeline: str) -> Setting:
    return Setting(label, "sparsify", "rtn", {"pipeline": pipeline})


# R gives 32.006 / R bits (the ratio is of the file, header included): 8.00, 5.33, 4.495, 3.996, 3.517
SWEEP = (4, 6, 7.12, 8.01, 9.1)
SETTINGS = [
    Setting("original (fp32)", "original", "original"),
    rtn_pipeline("RTN int8 per channel", "quant:bits=8+zstd"),
    rtn_pipeline("RTN int6 g128", "quant:bits=6,group=128+zstd"),
    rtn_pipeline("RTN int5 g128", "quant:bits=5,group=128+zstd"),
    rtn_pipeline("RTN int4 g128", "quant:bits=4,group=128+zstd"),
    Setting("NF4 b64 absmax (numpy reference)", "nf4", "nf4"),
    *(rate(r) for r in SWEEP),
    *(rate(r, "data-free", objective="relative") for r in (7.12, 8.01, 9.1)),
    *(rate(r, "importance", importance=mode) for mode in MODES for r in (6, 7.12, 8.01, 9.1, 10.5)),
]
DIGITS_RATIOS = (12, 12.5, 13, 13.5, 14)  # the targets: bench/task_report.py


# --- the AntiBERTy settings ---------------------------------------------------------------------


def missing_keywords(setting: Setting) -> list[str]:
    accepted = inspect.signature(sparsify.compress).parameters
    return [k for k in setting.call if k not in accepted]


def importance_file(work: Path, mode: str) -> Path:
    return work / f"{mode}.safetensors"


def sparsify_weights(source: Path, setting: Setting, work: Path, numel: int) -> tuple[Path, dict[str, Any]]:
    """Compress ``source`` as ``setting`` says and decompress it: (restored file, the point's figures)."""
    archive, restored = work / "model.sparsify", work / "restored.safetensors"
    call = dict(setting.call)
    if "importance" in call:
        call["importance"] = importance_file(work, call["importance"])
    start = time.perf_counter()
    report = sparsify.compress(source, archive, force=True, **call)
    seconds = time.perf_counter() - start
    sparsify.decompress(archive, restored, force=True)
    totals = report["totals"]
    lossy = [t["name"] for t in report["tensors"] if not t["exact"]]
    point = {
        "bits": 8 * archive.stat().st_size / numel,
        "report_bits_per_weight": totals["bits_per_weight"],
        "archive_bytes": archive.stat().st_size,
        "weighted_rel_error": totals["weighted_rel_error"],
        "seconds": seconds,
        "lossy_tensors": lossy,
    }
    if "plan" in report and report["plan"]:
        point["plan_met"] = report["plan"].get("met")
        chosen: dict[str, int] = {}
        for t in report["tensors"]:
            chosen[t["pipeline"]] = chosen.get(t["pipeline"], 0) + 1
        point["pipelines_chosen"] = chosen
    return restored, point


def nf4_weights(tensors: list[rtn.Tensor], numel: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """NF4 of the quantisable tensors (the others as stored): (state dict, the point's figures)."""
    start = time.perf_counter()
    state, bits, err_sq, ref_sq, lossy = {}, 0, 0.0, 0.0, []
    for t in tensors:
        original = t.array.astype(np.float64)
        ref_sq += float(np.sum(np.square(original)))
        if t.compressible:
            restored, stored = quantise(t.array)
            err_sq += float(np.sum(np.square(restored.astype(np.float64) - original)))
            lossy.append(t.name)
        else:
            restored, stored = t.array, 8 * t.array.nbytes
        bits += stored
        state[t.name] = torch.from_numpy(np.ascontiguousarray(restored))
    point = {
        "bits": bits / numel,
        "weighted_rel_error": math.sqrt(err_sq / ref_sq),
        "seconds": time.perf_counter() - start,
        "lossy_tensors": lossy,
    }
    return state, point


def bench_antiberty(files, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    tensors = rtn.read_weights(files.fp32)
    numel = sum(t.array.size for t in tensors)
    quantisable = sorted(t.name for t in tensors if t.compressible)
    sequences = test_sequences()
    inputs = make_inputs(sequences, files.package, MASK_SEED)
    model = build_model(files.package)
    keys = load(model, files.fp32)
    log(f"antiberty: {len(sequences)} test sequences, {inputs.masked_count} masked positions; original ...")
    start = time.perf_counter()
    reference = run(model, inputs)
    forward_s = time.perf_counter() - start
    accuracy = float(np.mean(reference.log_probs.argmax(axis=1) == inputs.truth))
    if accuracy < MIN_MLM_ACCURACY:  # an untrained BERT predicts ~5 % of the masked residues
        raise RuntimeError(f"the original weights predict {accuracy:.1%} of masked residues: not AntiBERTy's")
    entry: dict[str, Any] = {
        "numel": numel,
        "tensors": len(tensors),
        "quantisable_tensors": len(quantisable),
        "quantisable_numel": sum(t.array.size for t in tensors if t.compressible),
        "source_bytes": files.fp32.stat().st_size,
        "keys": keys,
        "test_sequences": len(sequences),
        "calibration_sequences": len(calibration_sequences()),
        "sequence_lengths": [min(map(len, sequences)), max(map(len, sequences))],
        "masked_positions": inputs.masked_count,
        "forward_s": forward_s,
        "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="sparsify-task-") as tmp:
        entry["importance_files"] = []
        for mode in MODES:
            figures = record(model, files.package, mode, importance_file(Path(tmp), mode))
            log(f"antiberty: importance {mode}: {figures['entries']} entries in {figures['seconds']:.1f} s")
            entry["importance_files"].append(figures)
        for setting in SETTINGS:
            point: dict[str, Any] = {"label": setting.label, "family": setting.family, "call": setting.call}
            entry["points"].append(point)
            absent = missing_keywords(setting)
            if absent:
                point["status"] = f"planned: sparsify.compress has no {', '.join(absent)} keyword yet"
            if "status" in point:
                log(f"antiberty: {setting.label}: {point['status']}")
                continue
            try:
                if setting.kind == "original":
                    weights, figures = files.fp32, {"bits": 8 * files.fp32.stat().st_size / numel}
                    figures.update(weighted_rel_error=0.0, seconds=0.0, lossy_tensors=[])
                elif setting.kind == "nf4":
                    weights, figures = nf4_weights(tensors, numel)
                else:
                    weights, figures = sparsify_weights(files.fp32, setting, Path(tmp), numel)
                load(model, weights)
                start = time.perf_counter()
                metrics = compare(reference, run(model, inputs), inputs.truth)
                metrics["forward_s"] = time.perf_counter() - start
            except Exception as error:  # noqa: BLE001 -- a benchmark records a failure and goes on
                point["status"] = f"failed: {type(error).__name__}: {error}"
                log(f"antiberty: {setting.label}: {point['status']}")
                continue
            point.update(figures, **metrics, status="ok")
            point["lossy_tensors"] = len(figures["lossy_tensors"])
            point["lossy_as_quantisable"] = (
                setting.kind == "original" or sorted(figures["lossy_tensors"]) == quantisable
            )
            log(
                f"antiberty: {setting.label}: {point['bits']:.3f} bits, 1-cos {point['one_minus_cosine']:.3e}, "
                f"top-1 {point['top1_agreement']:.4f}, KL {point['kl']:.3e}"
            )
    return entry


# --- the digits MLP (bench/lossy.py's functions) -------------------------------------------------


def bench_digits() -> dict[str, Any]:
    import lossy  # imports scikit-learn through sample_models/make_samples.py

    source = lossy.SAMPLES / lossy.ACCURACY_MODEL
    family = next(name for name, (template, _) in lossy.FAMILIES.items() if template == "auto")
    tensors = rtn.read_weights(source)
    sq = lossy.norms(tensors)
    original = lossy.evaluate(load_file(str(source)))
    points = []
    with tempfile.TemporaryDirectory(prefix="sparsify-task-digits-") as tmp:
        for ratio in DIGITS_RATIOS:
            point = lossy.sparsify_point(source, family, ratio, tensors, sq, Path(tmp), True)
            point["drop_points"] = 100 * (original - point["accuracy"]) if point["status"] == "ok" else None
            log(f"digits: target_ratio {ratio}: {point['status']} {point.get('bits_archive')} {point.get('accuracy')}")
            points.append(point)
    digits = {"model": lossy.ACCURACY_MODEL, "original_accuracy": original, "points": points}
    return {**digits, "met": digits_met(digits)}


def check_readme_sequences() -> None:
    """The README sequences of task_sequences.py are in the wheel's METADATA (the README), verbatim."""
    from task_sequences import README_SEQUENCES

    with zipfile.ZipFile(wheel_path(download=False)) as archive:
        readme = archive.read("antiberty-0.1.3.dist-info/METADATA").decode()
    absent = [s[:20] for s in README_SEQUENCES if f'"{s}"' not in readme]
    if absent:
        raise RuntimeError(f"sequences not in AntiBERTy's README: {absent}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        files = antiberty_files()
    except AntiBERTyUnavailable as error:
        log(f"task: AntiBERTy not available ({error}); nothing written")
        return 1
    check_readme_sequences()
    data: dict[str, Any] = {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(torch=torch.__version__, transformers=transformers.__version__, torch_threads=args.threads),
        "command": ".venv/bin/python bench/task.py",
        "seed": SEED,
        "mask_seed": MASK_SEED,
    }
    data["antiberty"] = bench_antiberty(files, args.threads)
    data["antiberty"]["targets"] = targets(data["antiberty"])
    data["digits"] = bench_digits()
    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    data["load_average_end"] = list(os.getloadavg())
    markdown = render(data)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "task.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (args.output_dir / "task.md").write_text(markdown)
    print(markdown, end="")
    log(f"wrote {args.output_dir / 'task.json'} and task.md in {data['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
