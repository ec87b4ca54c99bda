"""Record an importance file (:mod:`sparsify.importance`) for a torch model, with hooks on a few batches.

Needs torch (``pip install sparsify[task]``, or any torch); imported only when a recording starts.

Without a loss, the importance is the second moment of each layer's input -- what the layer's
output error E‖ΔW x‖² weighs the weights by:

* ``nn.Linear`` weight (out, in): per input channel E[x_j²] over every token of every batch;
* ``nn.Embedding`` weight (vocab, dim): per row, how often the token occurs (``NAME:rows``);

biases and norms are left out (they add to the output as they are: a weight of 1 per value). Each
tensor's entry is scaled to mean 1: a layer's output error reaches the model's output through
normalisations and residual sums that the activations alone do not measure (on AntiBERTy at 4 bits
per weight, weighing the layers against each other by their input energies gave an 8.5 % higher
1 − cosine than scaling each to mean 1), so without a loss the importance shapes the error within
each tensor and the allocation between tensors stays the plain squared error's.

With ``loss`` (a function of the model's output and the batch, e.g. the masked-LM loss), the
diagonal of the Fisher information instead, from the gradients of the loss: K-FAC's factors for a
linear weight (per row E[g_i²] of the output's gradient, per column E[x_j²]), E[g²] per value of a
linear bias, the summed g² of each embedding row, E[(g x̂)²] and E[g²] for a LayerNorm's weight and
bias. These are in units of the loss; they are scaled so that their mean over the recorded weights
is 1, which is what a weight the file does not name counts as.

With ``inputs=True`` (with or without a loss), each ``nn.Linear`` weight (out, in) has ``NAME:inputs``
instead of its per-column ``NAME``: the full second moment E[x xᵀ] (in, in) of its input (K-FAC's
"A" factor; GPTQ's Hessian up to a factor), exactly symmetric, whose diagonal is the per-column
entry it replaces, scaled as that entry is (without a loss, the diagonal to mean 1; with one, the
diagonal counts in the mean, and the ``:rows`` entry carries the scale). It costs n² floats per
linear layer of n inputs, against n.

Example::

    import torch
    from transformers import AutoModelForMaskedLM
    from sparsify.importance.recorder import record_importance, save_importance

    model = AutoModelForMaskedLM.from_pretrained("my-model").eval()
    batches = [tokenizer(text, return_tensors="pt") for text in calibration_texts]
    importance = record_importance(model, batches)        # activation second moments
    save_importance(importance, "importance.safetensors")
    # or: record_importance(model, batches, loss=loss, inputs=True)  # K-FAC rows x full E[x xᵀ]
    # then: sparsify compress model.safetensors --target-ratio 8 --importance importance.safetensors
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sparsify.importance import INPUTS_SUFFIX, ROWS_SUFFIX


def record_importance(
    model: Any,
    batches: Iterable[Any],
    loss: Callable[[Any, Any], Any] | None = None,
    prefix: str = "",
    inputs: bool = False,
) -> dict[str, np.ndarray]:
    """The importance entries of ``model`` (a ``torch.nn.Module``) over ``batches``, named after
    its parameters (``prefix`` + the name ``model.named_parameters()`` gives, the first one for a
    tied parameter), as float32 arrays. A batch is passed as ``model(**batch)`` if it is a mapping,
    ``model(*batch)`` if a tuple or list, else ``model(batch)``; with ``loss``, ``loss(output,
    batch)`` is back-propagated (module docstring). With ``inputs``, each linear weight has its full
    input second-moment matrix ``NAME:inputs`` instead of its per-column entry. The model is not
    changed (its gradients are cleared afterwards)."""
    import torch

    names = {}
    for name, parameter in model.named_parameters(remove_duplicate=True):
        names.setdefault(id(parameter), prefix + name)
    recorder = _Recorder(names, fisher=loss is not None, inputs=inputs)
    handles = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)):
            handles.append(module.register_forward_hook(recorder.forward))
    try:
        for batch in batches:
            if loss is None:
                with torch.no_grad():
                    _call(model, batch)
            else:
                model.zero_grad(set_to_none=True)
                loss(_call(model, batch), batch).backward()
    finally:
        for handle in handles:
            handle.remove()
        if loss is not None:
            model.zero_grad(set_to_none=True)
    return recorder.entries()


def save_importance(importance: dict[str, np.ndarray], path: str | Path) -> None:
    """Write ``importance`` (name -> array) as a safetensors importance file, atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in importance.items()}, str(temp))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _call(model: Any, batch: Any) -> Any:
    if hasattr(batch, "keys"):  # a dict, or transformers' BatchEncoding
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


class _Recorder:
    """Sums of squares (``:inputs``: of outer products) per parameter, filled by the forward hooks
    (and the gradient hooks they set)."""

    def __init__(self, names: dict[int, str], fisher: bool, inputs: bool) -> None:
        self.names = names
        self.fisher = fisher
        self.inputs = inputs
        self.sums: dict[str, Any] = {}  # entry name -> float64 torch tensor of sums
        self.counts: dict[str, float] = {}  # entry name -> how many tokens were summed
        self.owners: dict[str, int] = {}  # parameter name -> the module that records it

    def add(self, key: str, values: Any, count: float) -> None:
        import torch

        values = values.detach().to(torch.float64)
        self.sums[key] = self.sums[key] + values if key in self.sums else values
        self.counts[key] = self.counts.get(key, 0.0) + count

    def _own(self, module: Any, attribute: str) -> str | None:
        """The name of ``module``'s parameter ``attribute`` if this module records it: a tied
        parameter (an embedding shared with an output layer) is weighed by its first module only."""
        parameter = getattr(module, attribute, None)
        name = self.names.get(id(parameter)) if parameter is not None else None
        if name is None or self.owners.setdefault(name, id(module)) != id(module):
            return None
        return name

    def forward(self, module: Any, inputs: tuple, output: Any) -> None:
        import torch

        weight, bias = self._own(module, "weight"), self._own(module, "bias")
        x = inputs[0]
        if isinstance(module, torch.nn.Embedding):
            tokens = x.reshape(-1)
            if weight is not None and not self.fisher:
                counts = torch.bincount(tokens, minlength=module.num_embeddings)
                self.add(weight + ROWS_SUFFIX, counts, float(tokens.numel()))
            elif weight is not None and output.requires_grad:
                output.register_hook(lambda g: self._embedding_grad(weight, tokens, g, module.num_embeddings))
            return
        if isinstance(module, torch.nn.LayerNorm):
            if self.fisher and output.requires_grad:
                shape = tuple(module.normalized_shape)
                normalised = torch.nn.functional.layer_norm(x.detach(), shape, None, None, module.eps)
                output.register_hook(lambda g: self._norm_grad(weight, bias, shape, normalised, g))
            return
        # nn.Linear
        if weight is None:
            return
        flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if self.inputs:
            moments = flat.T @ flat
            moments.diagonal().copy_((flat * flat).sum(0))  # summed as the per-column entry: equal to it
            self.add(weight + INPUTS_SUFFIX, moments, float(flat.shape[0]))
        else:
            self.add(weight, (flat * flat).sum(0), float(flat.shape[0]))
        if self.fisher and output.requires_grad:
            output.register_hook(lambda g: self._linear_grad(weight, bias, g))

    def _linear_grad(self, weight: str, bias: str | None, grad: Any) -> None:
        import torch

        g = grad.detach().reshape(-1, grad.shape[-1]).to(torch.float64)
        squares = (g * g).sum(0)
        self.add(weight + ROWS_SUFFIX, squares, float(g.shape[0]))
        if bias is not None:
            self.add(bias, squares, float(g.shape[0]))

    def _embedding_grad(self, weight: str, tokens: Any, grad: Any, vocab: int) -> None:
        import torch

        g = grad.detach().reshape(-1, grad.shape[-1]).to(torch.float64)
        total = torch.zeros((vocab, g.shape[1]), dtype=torch.float64).index_add_(0, tokens, g * g)
        self.add(weight, total, float(g.shape[0]))

    def _norm_grad(self, weight: str | None, bias: str | None, shape: tuple, normalised: Any, grad: Any) -> None:
        import torch

        g = grad.detach().to(torch.float64).reshape((-1,) + shape)
        xhat = normalised.to(torch.float64).reshape((-1,) + shape)
        if weight is not None:
            self.add(weight, ((g * xhat) ** 2).sum(0), float(g.shape[0]))
        if bias is not None:
            self.add(bias, (g * g).sum(0), float(g.shape[0]))

    def entries(self) -> dict[str, np.ndarray]:
        """Means per token (embedding rows: frequencies), as float32; with a loss, scaled to mean 1
        over the recorded weights, without one, each entry to mean 1 (module docstring)."""
        entries = {k: (v / max(self.counts[k], 1.0)).numpy() for k, v in self.sums.items()}
        for key in entries:
            if key.endswith(INPUTS_SUFFIX):
                entries[key] = (entries[key] + entries[key].T) / 2  # exactly symmetric; the diagonal as it was
        if self.fisher and entries:
            entries = _unit_mean(entries)
        elif entries:
            entries = {k: _unit_entry(k, v) for k, v in entries.items()}
        return {k: v.astype(np.float32) for k, v in sorted(entries.items())}


def _unit_entry(key: str, values: np.ndarray) -> np.ndarray:
    """An entry scaled to mean 1 (a ``:inputs`` matrix: its diagonal; all ones, or the identity, if 0)."""
    inputs = key.endswith(INPUTS_SUFFIX)
    mean = np.diagonal(values).copy().mean() if inputs else values.mean()
    if mean > 0:
        return values / mean
    return np.eye(len(values)) if inputs else np.ones_like(values)


def _name(key: str) -> str:
    for suffix in (ROWS_SUFFIX, INPUTS_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _unit_mean(entries: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fisher entries scaled by one factor so that the mean importance per recorded weight is 1
    (a linear weight's is the product of its rows' and columns' means; a ``:inputs`` matrix's
    columns are its diagonal)."""
    total, count = 0.0, 0
    seen = set()
    for key in entries:
        name = _name(key)
        if name in seen:
            continue
        seen.add(name)
        cols, rows = entries.get(name), entries.get(name + ROWS_SUFFIX)
        if name + INPUTS_SUFFIX in entries:
            cols = np.diagonal(entries[name + INPUTS_SUFFIX]).copy()
        if cols is not None and rows is not None and cols.ndim == 1:
            total += float(rows.sum()) * float(cols.sum())
            count += rows.size * cols.size
        else:
            one = cols if cols is not None else rows
            total += float(one.sum())
            count += one.size
    scale = count / total if total > 0 else 1.0
    # rows carry the scale for a factored weight; a lone entry carries it itself
    scaled = {}
    for key, values in entries.items():
        name = _name(key)
        columns = name + INPUTS_SUFFIX if name + INPUTS_SUFFIX in entries else name  # the column factor
        one_d = columns != name or (name in entries and entries[name].ndim == 1)
        factored = columns in entries and name + ROWS_SUFFIX in entries and one_d
        scaled[key] = values if factored and key == columns else values * scale
    return scaled
