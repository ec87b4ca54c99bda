"""Importance files for ``bench/task.py``: AntiBERTy on its 64 calibration sequences, three ways.

All three use ``sparsify.importance.recorder.record_importance`` on the calibration sequences of
``bench/task_sequences.py`` (disjoint from the test sequences), tokenised as the test inputs are
(``task_model.make_inputs``, batches of ``task_model.BATCH``) with their own seeded 15 % masks:

* ``activations``: no loss, so the second moment of each ``nn.Linear``'s input per input channel and
  the token frequencies of each embedding, over the unmasked and the masked calibration batches (the
  two kinds of input the task metrics run);
* ``fisher``: the masked-LM cross-entropy against the true residues at the masked positions (the
  empirical Fisher), so K-FAC's diagonal factors per row and column of every linear weight, and the
  embeddings' and LayerNorms' squared gradients;
* ``fisher-inputs``: the same loss on the same batches with ``inputs=True``: each linear weight's
  per-column factor replaced by its input's full second-moment matrix E[x xᵀ] (``NAME:inputs``,
  whose diagonal is that factor).

Padding tokens count in the activation moments as in any hook on the model's inputs (the recorder
does not see the attention mask); the calibration batches pad to their longest sequence, which is
within a few residues of the others'.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from task_model import make_inputs
from task_sequences import SEED, calibration_sequences

from sparsify.importance.recorder import record_importance, save_importance

CALIBRATION_MASK_SEED = SEED + 2  # the calibration sequences' masked positions (the test's: SEED + 1)
MODES = ("activations", "fisher", "fisher-inputs")
IGNORED_LABEL = -100  # transformers' cross-entropy ignores these positions


def calibration_batches(package: Path) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """(unmasked batches, masked batches with their ``labels``) of the calibration sequences."""
    inputs = make_inputs(list(calibration_sequences()), package, CALIBRATION_MASK_SEED)
    labelled = []
    for plain, masked, where in zip(inputs.plain, inputs.masked, inputs.positions, strict=True):
        labels = torch.where(where, plain["input_ids"], torch.full_like(plain["input_ids"], IGNORED_LABEL))
        labelled.append({**masked, "labels": labels})
    return inputs.plain, labelled


def masked_lm_loss(output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own masked-LM loss (it is given ``labels``): mean cross-entropy at masked positions."""
    return output.loss


def record(model: torch.nn.Module, package: Path, mode: str, path: Path) -> dict[str, Any]:
    """Record ``mode``'s importance of ``model`` into ``path``; its figures (entries, seconds)."""
    plain, labelled = calibration_batches(package)
    start = time.perf_counter()
    if mode == "activations":
        unlabelled = [{k: v for k, v in batch.items() if k != "labels"} for batch in labelled]
        entries = record_importance(model, plain + unlabelled)
    elif mode in ("fisher", "fisher-inputs"):
        entries = record_importance(model, labelled, loss=masked_lm_loss, inputs=mode == "fisher-inputs")
    else:
        raise ValueError(f"unknown importance mode {mode!r} (expected one of {MODES})")
    seconds = time.perf_counter() - start
    save_importance(entries, path)
    return {
        "mode": mode,
        "entries": len(entries),
        "values": int(sum(v.size for v in entries.values())),
        "calibration_sequences": len(calibration_sequences()),
        "batches": 2 * len(plain) if mode == "activations" else len(plain),
        "seconds": seconds,
        "file_bytes": path.stat().st_size,
    }
