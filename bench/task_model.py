"""AntiBERTy as a ``transformers.BertForMaskedLM`` on CPU, and the task metrics of ``bench/task.py``.

The model is built from the checkpoint's ``config.json`` with ``tie_word_embeddings=False`` (the file
holds the word embedding and the MLM decoder weight as two tensors; compressed, they may differ, and
each is loaded where the checkpoint had it) and loaded from a safetensors file with the checkpoint's
names. The checkpoint is AntiBERTy's own class (a BERT with a pooler and species / chain / graft
heads); ``BertForMaskedLM`` has no pooler and none of those heads, so exactly the keys in
``UNUSED_KEYS`` are left unused (and ``bert.embeddings.position_ids``, a non-persistent buffer here,
which must hold 0..511). Anything else missing or unexpected, a wrong shape, or a config that is not
AntiBERTy's raises :class:`ModelMismatch`.

Tokens: as ``AntiBERTyRunner`` does, a sequence's residues joined by spaces through
``BertTokenizer(vocab.txt, do_lower_case=False)``: ``[CLS] residues [SEP]``, padded per batch.

Metrics (:func:`compare`), each of a model against the original weights' outputs:

* cosine: per sequence, the cosine (float64) of the mean-pooled last hidden state (mean over the
  tokens the attention mask keeps, [CLS] and [SEP] included) of the *unmasked* sequence; the mean
  over sequences, and the mean of 1 − cosine (computed as ½‖â − b̂‖² of the unit vectors, which has
  no cancellation near 1);
* MLM: on masked copies of the same sequences (a fixed seeded 15 % of the residue positions of each,
  round(0.15 × length), replaced by [MASK]; special tokens never), the log-softmax (float64) of the
  MLM logits over the 20 amino-acid tokens only (special tokens left out, as ``AntiBERTyRunner``'s
  ``fill_masks`` does); top-1 agreement = share of masked positions whose argmax equals the
  original's; KL = mean over masked positions of KL(p_original ‖ p_model) in nats; also the share of
  masked positions where the argmax is the true residue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file

MASK_FRACTION = 0.15
BATCH = 25
EXPECTED_CONFIG = {"num_hidden_layers": 8, "hidden_size": 512, "vocab_size": 25, "num_attention_heads": 8}
UNUSED_KEYS = frozenset(
    {
        "bert.embeddings.position_ids",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "cls.species.weight",
        "cls.species.bias",
        "cls.chain.weight",
        "cls.chain.bias",
        "cls.graft.weight",
        "cls.graft.bias",
    }
)


class ModelMismatch(RuntimeError):
    """The weights or config are not AntiBERTy's as expected (the message says how)."""


@dataclass(frozen=True)
class Inputs:
    """Tokenised test sequences, unmasked and masked, in batches (torch tensors)."""

    plain: list[dict[str, torch.Tensor]]  # input_ids, token_type_ids, attention_mask per batch
    masked: list[dict[str, torch.Tensor]]
    positions: list[torch.Tensor]  # per batch: bool (batch, tokens), the masked positions
    truth: np.ndarray  # true residue (index into amino_acids) at every masked position, in order
    amino_acids: torch.Tensor  # vocabulary ids of the 20 residues
    masked_count: int


@dataclass(frozen=True)
class Outputs:
    """What a model's metrics need: pooled embeddings and MLM log-probabilities at masked positions."""

    pooled: np.ndarray  # (sequences, hidden) float64
    log_probs: np.ndarray  # (masked positions, 20) float64


def tokenizer(package: Path) -> transformers.BertTokenizer:
    return transformers.BertTokenizer(vocab_file=str(package / "vocab.txt"), do_lower_case=False)


def make_inputs(sequences: list[str], package: Path, seed: int) -> Inputs:
    """Tokenise ``sequences`` (batches of ``BATCH``) and mask a seeded ``MASK_FRACTION`` of each one's
    residues; ``numpy.random.default_rng(seed)``, one ``choice`` per sequence in order."""
    tok = tokenizer(package)
    amino = [tok.convert_tokens_to_ids(a) for a in "ACDEFGHIKLMNPQRSTVWY"]
    index_of = {token: i for i, token in enumerate(amino)}
    rng = np.random.default_rng(seed)
    plain, masked, positions, truth = [], [], [], []
    for start in range(0, len(sequences), BATCH):
        chunk = sequences[start : start + BATCH]
        encoded = tok([" ".join(s) for s in chunk], return_tensors="pt", padding=True)
        ids = encoded["input_ids"]
        where = torch.zeros_like(ids, dtype=torch.bool)
        for row, sequence in enumerate(chunk):
            tokens = ids[row, 1 : 1 + len(sequence)].tolist()
            if ids[row, 0] != tok.cls_token_id or ids[row, 1 + len(sequence)] != tok.sep_token_id:
                raise ModelMismatch(f"unexpected tokenisation of sequence {start + row}")
            if any(t not in index_of for t in tokens):
                raise ModelMismatch(f"sequence {start + row} has tokens outside the 20 amino acids")
            chosen = rng.choice(len(sequence), size=round(MASK_FRACTION * len(sequence)), replace=False)
            where[row, 1 + np.sort(chosen)] = True
        masked_ids = ids.clone()
        masked_ids[where] = tok.mask_token_id
        truth += [index_of[t] for t in ids[where].tolist()]  # row-major, as boolean indexing reads
        plain.append(dict(encoded))
        masked.append({**encoded, "input_ids": masked_ids})
        positions.append(where)
    return Inputs(plain, masked, positions, np.array(truth), torch.tensor(amino), len(truth))


def build_model(package: Path) -> transformers.BertForMaskedLM:
    """An untrained ``BertForMaskedLM`` of AntiBERTy's config, untied, eval mode (weights: :func:`load`)."""
    config = transformers.BertConfig.from_json_file(str(package / "config.json"))
    wrong = {k: getattr(config, k) for k, v in EXPECTED_CONFIG.items() if getattr(config, k) != v}
    if wrong:
        raise ModelMismatch(f"config.json is not AntiBERTy's: {wrong} (expected {EXPECTED_CONFIG})")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    if model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight:
        raise ModelMismatch("the MLM decoder is still tied to the word embedding")
    return model


def load(model: transformers.BertForMaskedLM, weights: Path | dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load a safetensors file (or a name -> tensor dict) into ``model``; the unused keys, or
    :class:`ModelMismatch` when any model key is missing or a key other than ``UNUSED_KEYS`` is left."""
    state = load_file(str(weights)) if isinstance(weights, Path) else weights
    result = model.load_state_dict(state, strict=False)  # a shape mismatch raises here
    unexpected = set(result.unexpected_keys)
    if result.missing_keys or unexpected != UNUSED_KEYS:
        raise ModelMismatch(
            f"not AntiBERTy's weights: missing {sorted(result.missing_keys)}, "
            f"unexpected beyond the heads BertForMaskedLM lacks {sorted(unexpected - UNUSED_KEYS)}, "
            f"absent {sorted(UNUSED_KEYS - unexpected)}"
        )
    positions = state["bert.embeddings.position_ids"]
    if not torch.equal(positions.reshape(-1), torch.arange(positions.numel())):
        raise ModelMismatch("bert.embeddings.position_ids is not 0..511")
    return {"missing": sorted(result.missing_keys), "unused": sorted(unexpected)}


@torch.inference_mode()
def run(model: transformers.BertForMaskedLM, inputs: Inputs) -> Outputs:
    """The model's pooled embeddings (unmasked inputs) and MLM log-probabilities (masked inputs)."""
    pooled = []
    for batch in inputs.plain:
        hidden = model.bert(**batch).last_hidden_state.double()
        mask = batch["attention_mask"].unsqueeze(-1).double()
        pooled.append((hidden * mask).sum(dim=1) / mask.sum(dim=1))
    log_probs = []
    for batch, where in zip(inputs.masked, inputs.positions, strict=True):
        logits = model(**batch).logits[where][:, inputs.amino_acids]
        log_probs.append(torch.log_softmax(logits.double(), dim=-1))
    return Outputs(torch.cat(pooled).numpy(), torch.cat(log_probs).numpy())


def compare(reference: Outputs, outputs: Outputs, truth: np.ndarray) -> dict[str, float]:
    """The metrics of ``outputs`` against ``reference`` (the original weights'), see the docstring."""
    a = reference.pooled / np.linalg.norm(reference.pooled, axis=1, keepdims=True)
    b = outputs.pooled / np.linalg.norm(outputs.pooled, axis=1, keepdims=True)
    one_minus = 0.5 * np.sum(np.square(a - b), axis=1)  # = 1 - cosine, without the cancellation near 1
    cosine = 1.0 - one_minus
    p, q = reference.log_probs, outputs.log_probs
    kl = np.sum(np.exp(p) * (p - q), axis=1)
    top = q.argmax(axis=1)
    return {
        "cosine": float(np.mean(cosine)),
        "one_minus_cosine": float(np.mean(one_minus)),
        "min_cosine": float(np.min(cosine)),
        "top1_agreement": float(np.mean(top == p.argmax(axis=1))),
        "kl": float(np.mean(kl)),
        "mlm_accuracy": float(np.mean(top == truth)),
    }
