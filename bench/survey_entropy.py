"""Codes below the scalar floor, for ``bench/methods_survey.py``: context-adaptive code lengths and
trellis-coded quantisation. numpy only.

Context-adaptive entropy coding (:func:`adaptive_bits`). The integer codes of a quantiser are coded
one after another in row-major order; each symbol's probability comes from the counts of the symbols
seen before it *in the same context* (Krichevsky-Trofimov-style estimator with a pseudo-count
``ALPHA`` per symbol of the alphabet), and the code length is the sum of -log2 of those
probabilities. That is the output length of an adaptive arithmetic coder driven by the same model
(which is within 2 bits per stream of it, plus the loss of its finite precision), computed exactly
instead of running a coder; a decoder knows every context before it decodes the symbol, so the
model needs no side information but the alphabet's range (two 32-bit integers, counted). Contexts:

* ``none``: one adaptive model for the whole tensor (adaptive order 0);
* ``row``: one model per row (output channel): per-row statistics;
* ``neighbours``: the magnitudes of the two causal neighbours, the code to the left and the code
  above, each capped at 2: 9 contexts (as image coders condition on the causal neighbourhood);
* ``state`` (trellis codes only): the trellis state's quantiser (Q0 or Q1) times ``neighbours``.

Trellis-coded quantisation (:func:`tcq`). The 4-state trellis of VVC's dependent quantisation
(Schwarz, Nguyen, Marpe & Wiegand, DCC 2019; the TCQ of Marcellin & Fischer 1990, with the union
codebook of two scalar quantisers): Q0 reconstructs even multiples of the step Δ (2kΔ), Q1 odd ones
and zero ((2k - sgn k)Δ); the state, 0..3, picks the quantiser (0, 1 -> Q0; 2, 3 -> Q1) and moves
to ``NEXT[state][k & 1]`` after each code k. A Viterbi search along each piece of ``SEQUENCE`` codes
of a row (from state 0) chooses the codes that minimise Σ (w - ŵ)² + λ·R(k), with R(k) a rate model
(bits of |k| under a geometric fit to the codes of the scalar quantiser at step 2Δ, plus a sign bit
when k ≠ 0) and λ = ``lam`` · Δ². Only the codes k and Δ are stored; the decoder replays the state
machine (:func:`tcq_decode`, which the benchmark runs to measure the error of what would be decoded).

The adaptive arithmetic coder at the end (:func:`arithmetic_encode` / :func:`arithmetic_decode`,
pure Python) realises the ``neighbours`` and ``state x neighbours`` models, so that their computed
lengths can be checked against real coded bytes and a round trip.
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.5  # pseudo-count per alphabet symbol of the adaptive estimator (Krichevsky-Trofimov)
RANGE_BITS = 64  # the alphabet's range (min and max code), as two 32-bit integers

NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]])  # next state by (state, parity of k)
QUANTISER = np.array([0, 0, 1, 1])  # state -> quantiser (0: Q0, 1: Q1)
SEQUENCE = 256  # codes per trellis piece (see sequence_length)


# --- adaptive code lengths -----------------------------------------------------------------------


def adaptive_bits(codes: np.ndarray, contexts: np.ndarray) -> float:
    """Bits of an adaptive arithmetic code of ``codes`` (flat, coding order) given ``contexts``.

    Symbol t in context c costs -log2((n_c(s) + ALPHA) / (n_c + ALPHA·A)), where n_c(s) and n_c count
    the earlier symbols in context c (equal to s, and all) and A is the alphabet size max - min + 1.
    """
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    contexts = np.asarray(contexts, dtype=np.int64).reshape(-1)
    if codes.size == 0:
        return 0.0
    symbols = codes - codes.min()
    alphabet = int(symbols.max()) + 1
    position = np.arange(codes.size)
    # earlier symbols in the same context: rank of the position within its context
    by_context = np.lexsort((position, contexts))
    n_context = _ranks(contexts[by_context])
    # earlier equal symbols in the same context: rank within (context, symbol)
    key = contexts * alphabet + symbols
    by_key = np.lexsort((position, key))
    n_symbol = _ranks(key[by_key])
    before_context = np.empty(codes.size)
    before_context[by_context] = n_context
    before_symbol = np.empty(codes.size)
    before_symbol[by_key] = n_symbol
    p = (before_symbol + ALPHA) / (before_context + ALPHA * alphabet)
    return float(-np.log2(p).sum()) + RANGE_BITS


def _ranks(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal keys of a sorted array."""
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    index = np.arange(sorted_keys.size)
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def static_bits(codes: np.ndarray) -> float:
    """Order-0 static code: N·H(codes) for the empirical distribution, plus its table (a 32-bit count
    per symbol of the range) -- the floor of any memoryless coder of these codes."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    counts = np.bincount(codes - codes.min())
    used = counts[counts > 0]
    return float(-(used * np.log2(used / codes.size)).sum()) + 32 * counts.size + RANGE_BITS


def neighbour_contexts(codes: np.ndarray) -> np.ndarray:
    """9 contexts of a code matrix: 3 · min(|left|, 2) + min(|above|, 2) (0 beyond the edges)."""
    mag = np.minimum(np.abs(codes), 2)
    left = np.zeros_like(mag)
    left[:, 1:] = mag[:, :-1]
    above = np.zeros_like(mag)
    above[1:, :] = mag[:-1, :]
    return 3 * left + above


def context_bits(codes: np.ndarray) -> dict[str, float]:
    """Code lengths (bits) of a code matrix under each context model of the module docstring."""
    rows = np.broadcast_to(np.arange(codes.shape[0])[:, None], codes.shape)
    return {
        "static order 0": static_bits(codes),
        "adaptive, one context": adaptive_bits(codes, np.zeros(codes.size, dtype=np.int64)),
        "adaptive, per row": adaptive_bits(codes, rows),
        "adaptive, neighbours": adaptive_bits(codes, neighbour_contexts(codes)),
    }


# --- trellis-coded quantisation ------------------------------------------------------------------


def _rate_model(matrix: np.ndarray, step: float) -> tuple[float, float]:
    """(bits of a nonzero's sign and first level, bits per further level) of a geometric fit of |k|
    to the scalar codes at step 2Δ (the spacing of each of the two quantisers)."""
    k = np.abs(np.rint(matrix / (2 * step)))
    mean = max(float(k.mean()), 1e-3)
    q = mean / (1 + mean)  # geometric P(|k| = j) = (1 - q) q^j, fitted by the mean
    return float(-np.log2(1 - q)), float(-np.log2(q))


def _reconstruct(k: np.ndarray, quantiser: np.ndarray | int, step: float) -> np.ndarray:
    """ŵ of code k in quantiser 0 (2kΔ) or 1 ((2k - sgn k)Δ)."""
    return (2 * k - quantiser * np.sign(k)) * step


def sequence_length(cols: int) -> int:
    """The trellis runs along pieces of ``SEQUENCE`` consecutive codes of a row (the whole row when
    the row length is not a multiple): the pieces are searched in parallel, each from state 0."""
    return SEQUENCE if cols % SEQUENCE == 0 else cols


def tcq(matrix: np.ndarray, step: float, lam: float = 0.0) -> np.ndarray:
    """Trellis codes (int64, the matrix's shape) of ``matrix`` at step Δ = ``step``: the Viterbi
    path of least Σ (w - ŵ)² + lam·Δ²·R(k) along each piece of a row, every piece from state 0."""
    shape = matrix.shape
    matrix = matrix.reshape(-1, sequence_length(shape[1]))
    m, n = matrix.shape
    base, per_level = _rate_model(matrix, step)
    weight = lam * step * step
    cost = np.full((m, 4), np.inf)
    cost[:, 0] = 0.0
    back_state = np.zeros((n, m, 4), dtype=np.int8)  # predecessor state of each state at each column
    back_code = np.zeros((n, m, 4), dtype=np.int64)  # the code taken into it
    rows = np.arange(m)
    for j in range(n):
        w = matrix[:, j]
        new = np.full((m, 4), np.inf)
        new_state = np.zeros((m, 4), dtype=np.int8)
        new_code = np.zeros((m, 4), dtype=np.int64)
        for q in (0, 1):
            # candidates in quantiser q: the two codes whose levels bracket w, and zero
            if q == 0:
                low = np.floor(w / (2 * step))
            else:
                low = np.where(w >= 0, np.floor((w / step + 1) / 2), np.ceil((w / step - 1) / 2) - 1)
            for k in (low, low + 1, np.zeros(m)):
                rate = np.where(k != 0, base + 1 + per_level * (np.abs(k) - 1), base)
                d = (w - _reconstruct(k, q, step)) ** 2 + weight * rate
                parity = (k.astype(np.int64) & 1).astype(np.int64)
                for s in np.flatnonzero(QUANTISER == q):
                    total = cost[:, s] + d
                    target = NEXT[s][parity]
                    better = total < new[rows, target]
                    new[rows[better], target[better]] = total[better]
                    new_state[rows[better], target[better]] = s
                    new_code[rows[better], target[better]] = k[better]
        cost = new
        back_state[j] = new_state
        back_code[j] = new_code
    codes = np.zeros((m, n), dtype=np.int64)
    state = np.argmin(cost, axis=1)
    for j in range(n - 1, -1, -1):
        codes[:, j] = back_code[j, rows, state]
        state = back_state[j, rows, state].astype(np.int64)
    return codes.reshape(shape)


def tcq_states(codes: np.ndarray) -> np.ndarray:
    """The state (0..3) in which each code is decoded (every piece of a row starts in state 0)."""
    pieces = codes.reshape(-1, sequence_length(codes.shape[1]))
    states = np.zeros(pieces.shape, dtype=np.int64)
    state = np.zeros(pieces.shape[0], dtype=np.int64)
    for j in range(pieces.shape[1]):
        states[:, j] = state
        state = NEXT[state, pieces[:, j] & 1]
    return states.reshape(codes.shape)


def tcq_decode(codes: np.ndarray, step: float) -> np.ndarray:
    """The matrix a decoder rebuilds from the trellis codes and Δ."""
    return _reconstruct(codes.astype(np.float64), QUANTISER[tcq_states(codes)], step)


def tcq_context_bits(codes: np.ndarray) -> dict[str, float]:
    """Code lengths of trellis codes: the models of :func:`context_bits` plus ``state`` contexts."""
    out = context_bits(codes)
    quantiser = QUANTISER[tcq_states(codes)]
    out["adaptive, state x neighbours"] = adaptive_bits(codes, 9 * quantiser + neighbour_contexts(codes))
    return out


# --- a real adaptive arithmetic coder, to check the code lengths ---------------------------------

_BITS = 32
_FULL = (1 << _BITS) - 1
_HALF = 1 << (_BITS - 1)
_QUARTER = 1 << (_BITS - 2)


class _Counts:
    """One context's adaptive model: frequencies 2·n(s) + 1 (the estimator above with ALPHA = 1/2) in
    a Fenwick tree, so cumulative counts and the symbol search take O(log A)."""

    def __init__(self, alphabet: int) -> None:
        self.size = alphabet
        self.tree = [0] * (alphabet + 1)
        for i in range(1, alphabet + 1):  # every frequency 1
            self.tree[i] += 1
            parent = i + (i & -i)
            if parent <= alphabet:
                self.tree[parent] += self.tree[i]
        self.total = alphabet
        self.top = 1 << (alphabet.bit_length() - 1)

    def below(self, symbol: int) -> int:
        """Sum of the frequencies of the symbols < ``symbol``."""
        total, i = 0, symbol
        while i > 0:
            total += self.tree[i]
            i -= i & -i
        return total

    def find(self, target: int) -> int:
        """The symbol s with below(s) <= target < below(s + 1)."""
        position, step = 0, self.top
        while step:
            nxt = position + step
            if nxt <= self.size and self.tree[nxt] <= target:
                position = nxt
                target -= self.tree[nxt]
            step >>= 1
        return position

    def add(self, symbol: int) -> None:
        i = symbol + 1
        while i <= self.size:
            self.tree[i] += 2
            i += i & -i
        self.total += 2


def arithmetic_encode(symbols: list[int], contexts: list[int], alphabet: int) -> bytes:
    """Adaptive arithmetic code (Witten, Neal & Cleary 1987, 32-bit registers) of ``symbols``
    (0..alphabet-1), each under the model of its context."""
    models: dict[int, _Counts] = {}
    low, high, pending = 0, _FULL, 0
    bits: list[int] = []

    def emit(bit: int) -> None:
        nonlocal pending
        bits.append(bit)
        bits.extend([1 - bit] * pending)
        pending = 0

    for symbol, context in zip(symbols, contexts, strict=True):
        model = models.get(context) or models.setdefault(context, _Counts(alphabet))
        start = model.below(symbol)
        span = high - low + 1
        high = low + span * (start + _freq(model, symbol, start)) // model.total - 1
        low = low + span * start // model.total
        while True:
            if high < _HALF:
                emit(0)
            elif low >= _HALF:
                emit(1)
                low -= _HALF
                high -= _HALF
            elif low >= _QUARTER and high < _HALF + _QUARTER:
                pending += 1
                low -= _QUARTER
                high -= _QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
        model.add(symbol)
    pending += 1
    emit(0 if low < _QUARTER else 1)
    bits.extend([0] * (-len(bits) % 8))
    return np.packbits(np.array(bits, dtype=np.uint8)).tobytes()


def _freq(model: _Counts, symbol: int, start: int) -> int:
    return model.below(symbol + 1) - start


def arithmetic_decode(data: bytes, count: int, alphabet: int, context) -> list[int]:
    """The ``count`` symbols of :func:`arithmetic_encode`; ``context(i, decoded)`` gives symbol i's
    context from the symbols decoded before it (as a decoder must)."""
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
    stream += [0] * _BITS
    position = _BITS
    value = int("".join(map(str, stream[:_BITS])), 2)
    models: dict[int, _Counts] = {}
    low, high = 0, _FULL
    out: list[int] = []
    for i in range(count):
        c = context(i, out)
        model = models.get(c) or models.setdefault(c, _Counts(alphabet))
        span = high - low + 1
        target = ((value - low + 1) * model.total - 1) // span
        symbol = model.find(target)
        start = model.below(symbol)
        high = low + span * (start + _freq(model, symbol, start)) // model.total - 1
        low = low + span * start // model.total
        while True:
            if high < _HALF:
                pass
            elif low >= _HALF:
                low -= _HALF
                high -= _HALF
                value -= _HALF
            elif low >= _QUARTER and high < _HALF + _QUARTER:
                low -= _QUARTER
                high -= _QUARTER
                value -= _QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
            value = 2 * value + (stream[position] if position < len(stream) else 0)
            position += 1
        model.add(symbol)
        out.append(symbol)
    return out


def coded_neighbours(codes: np.ndarray, trellis: bool = False) -> tuple[int, bool]:
    """Bytes of the codes under the ``neighbours`` model (``trellis``: ``state x neighbours``) by the
    arithmetic coder, plus 8 bytes for the alphabet's range; and whether decoding gives them back."""
    rows, cols = codes.shape
    offset = int(codes.min())
    alphabet = int(codes.max()) - offset + 1
    contexts = neighbour_contexts(codes)
    if trellis:
        contexts = 9 * QUANTISER[tcq_states(codes)] + contexts
    flat = (codes - offset).reshape(-1).tolist()
    data = arithmetic_encode(flat, contexts.reshape(-1).tolist(), alphabet)
    piece = sequence_length(cols)
    state = [0]

    def context(i: int, decoded: list[int]) -> int:
        left = abs(decoded[i - 1] + offset) if i % cols else 0
        above = abs(decoded[i - cols] + offset) if i >= cols else 0
        c = 3 * min(left, 2) + min(above, 2)
        if not trellis:
            return c
        if i % piece == 0:
            state[0] = 0
        else:
            state[0] = int(NEXT[state[0], (decoded[i - 1] + offset) & 1])
        return 9 * int(QUANTISER[state[0]]) + c

    decoded = arithmetic_decode(data, rows * cols, alphabet, context)
    return len(data) + RANGE_BITS // 8, decoded == flat
