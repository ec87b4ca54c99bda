"""Antibody sequences for the task benchmark (``bench/task.py``), made reproducibly from a seed.

The recipe (numpy only, no files): the three distinct unmasked sequences of AntiBERTy's README
(``README_SEQUENCES``: one heavy chain, one light chain and the same light chain with ``SS``
inserted) are mutated at random in one stream, ``numpy.random.default_rng(SEED)``. Draw ``i`` takes
``README_SEQUENCES[i % 3]``, a mutation rate r uniform in [1 %, 5 %), k = max(1, round(r × length))
distinct positions (uniform, without replacement), and at each a residue drawn uniformly from the 19
standard amino acids other than the one there. A draw equal to a README sequence or to an earlier
draw is dropped. The first ``TEST_COUNT`` distinct draws are the test sequences, the next
``CALIBRATION_COUNT`` the calibration ones, so the two sets are disjoint by construction.

>>> len(test_sequences()), len(calibration_sequences())
(200, 64)
>>> set(test_sequences()).isdisjoint(calibration_sequences())
True
"""

from __future__ import annotations

from functools import cache

import numpy as np

SEED = 12  # issue 12
TEST_COUNT = 200
CALIBRATION_COUNT = 64
MUTATION_RATE = (0.01, 0.05)  # [low, high) fraction of positions changed per sequence
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard residues, as in AntiBERTy's vocab.txt

# The unmasked example sequences of AntiBERTy's README (antiberty 0.1.3, METADATA), in order of appearance.
README_SEQUENCES = (
    "EVQLVQSGPEVKKPGTSVKVSCKASGFTFMSSAVQWVRQARGQRLEWIGWIVIGSGNTNY"
    "AQKFQERVTITRDMSTSTAYMELSSLRSEDTAVYYCAAPYCSSISCNDGFDIWGQGTMVTVS",
    "DVVMTQTPFSLPVSLGDQASISCRSSQSLVHSNGNTYLHWYLQKPGQSPKLLIYKVSNRFSGVPDRFSGSGSGTDFTLKISRVEAEDLGVYFCSQSTHVPYTFGGGTKLEIK",
    "DVVMTQSSTPFSLPVSLGDQASISCRSSQSLVHSNGNTYLHWYLQKPGQSPKLLIYKVSNRFSGVPDRFSGSGSGTDFTLKISRVEAEDLGVYFCSQSTHVPYTFGGGTKLEIK",
)


def mutate(sequence: str, rng: np.random.Generator) -> str:
    """``sequence`` with k = max(1, round(r × length)) point substitutions, r ~ U[MUTATION_RATE)."""
    rate = rng.uniform(*MUTATION_RATE)
    count = max(1, round(rate * len(sequence)))
    residues = list(sequence)
    for position in rng.choice(len(residues), size=count, replace=False):
        others = [a for a in AMINO_ACIDS if a != residues[position]]
        residues[position] = others[rng.integers(len(others))]
    return "".join(residues)


@cache
def _draws(count: int, seed: int) -> tuple[str, ...]:
    """The first ``count`` distinct mutants of the stream (see the module docstring)."""
    rng = np.random.default_rng(seed)
    seen = set(README_SEQUENCES)
    out: list[str] = []
    index = 0
    while len(out) < count:
        mutant = mutate(README_SEQUENCES[index % len(README_SEQUENCES)], rng)
        index += 1
        if mutant not in seen:
            seen.add(mutant)
            out.append(mutant)
    return tuple(out)


def test_sequences(seed: int = SEED) -> list[str]:
    """The ``TEST_COUNT`` test sequences (distinct, none a README sequence)."""
    return list(_draws(TEST_COUNT + CALIBRATION_COUNT, seed)[:TEST_COUNT])


def calibration_sequences(seed: int = SEED) -> list[str]:
    """The ``CALIBRATION_COUNT`` calibration sequences, disjoint from :func:`test_sequences`."""
    return list(_draws(TEST_COUNT + CALIBRATION_COUNT, seed)[TEST_COUNT:])
