"""The targets of issue 12 and the Markdown of ``bench/task.py`` (``bench/results/task.md``).

Targets (whole archive bits per weight, AntiBERTy, one run):

* data-free, at <= ``DATA_FREE_BITS`` bits: 1 − cosine <= RTN int6 g128's;
* data-free, at <= RTN int4 g128's bits: 1 − cosine <= ``INT4_FACTOR`` × RTN int4 g128's;
* with an importance file, at <= ``IMPORTANCE_BITS`` bits: 1 − cosine <= RTN int6 g128's;
* digits MLP: at every ``--target-ratio`` of the digits sweep, <= ``DIGITS_BITS`` bits and test accuracy
  within ``DIGITS_DROP`` of the original's.

The RTN levels are their own measured points of the run (no interpolation of the RTN curve is needed:
each target names one RTN point). A verdict is the best *measured* sparsify point within the budget.
Beside it, for each set of sparsify options swept over ``target_ratio`` (at least two points), the
curve interpolated at the budget and the bits at which it reaches the level: the points sorted by
bits, log(1 − cosine) linear in bits between neighbours (no extrapolation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

REFERENCE_INT6, REFERENCE_INT4 = "RTN int6 g128", "RTN int4 g128"
DATA_FREE_BITS = 4.5
INT4_FACTOR = 0.25
IMPORTANCE_BITS = 4.0
DIGITS_BITS, DIGITS_DROP = 2.5, 0.005
DATA_FREE = ("sweep", "data-free")  # families of sparsify settings that use no data


# --- targets ------------------------------------------------------------------------------------


def options_of(point: dict[str, Any]) -> str:
    """The point's sparsify options other than its target ratio (``default options`` when none)."""
    rest = {k: v for k, v in point["call"].items() if k != "target_ratio"}
    return ", ".join(f"{k}={v}" for k, v in rest.items()) or "default options"


def value_at(line: list[tuple[float, float]], bits: float) -> float | None:
    """1 − cosine at ``bits`` on ``line`` (sorted (bits, 1 − cosine)), log-linear; None outside it."""
    for (b0, e0), (b1, e1) in zip(line, line[1:], strict=False):
        if b0 <= bits <= b1:
            t = (bits - b0) / (b1 - b0) if b1 > b0 else 0.0
            return math.exp(math.log(e0) + t * (math.log(e1) - math.log(e0)))
    return None


def bits_for(line: list[tuple[float, float]], level: float) -> float | None:
    """The fewest bits at which ``line`` reaches ``level`` (interpolated as in :func:`value_at`): the
    cheapest point's bits if it already does; None if no point does."""
    if line and line[0][1] <= level:
        return line[0][0]
    for (b0, e0), (b1, e1) in zip(line, line[1:], strict=False):
        if e0 > level >= e1:
            return b0 + (math.log(e0) - math.log(level)) / (math.log(e0) - math.log(e1)) * (b1 - b0)
    return None


def target(points: list[dict[str, Any]], budget: float, level: float, measured: bool = True) -> dict[str, Any]:
    """The best measured point at <= ``budget`` bits against ``level``, and each option curve's figures."""
    within = [p for p in points if p["bits"] <= budget]
    best = min(within, key=lambda p: p["one_minus_cosine"], default=None)
    curves: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if "target_ratio" in p["call"]:
            curves.setdefault(options_of(p), []).append((p["bits"], max(p["one_minus_cosine"], 1e-300)))
    return {
        "budget_bits": budget,
        "level": level,
        "measured": measured,
        "best": best and {k: best[k] for k in ("label", "bits", "one_minus_cosine")},
        "met": measured and best is not None and best["one_minus_cosine"] <= level,
        "ratio_to_level": best and best["one_minus_cosine"] / level,
        "curves": {
            name: {"at_budget": value_at(sorted(line), budget), "bits_for_level": bits_for(sorted(line), level)}
            for name, line in curves.items()
            if len(line) >= 2
        },
    }


def targets(entry: dict[str, Any]) -> dict[str, Any]:
    ok = [p for p in entry["points"] if p.get("status") == "ok"]
    by = {p["label"]: p for p in ok}
    int6, int4 = by[REFERENCE_INT6], by[REFERENCE_INT4]
    data_free = [p for p in ok if p["family"] in DATA_FREE]
    importance = [p for p in ok if p["family"] == "importance"]
    return {
        "data_free_4_5": target(data_free, DATA_FREE_BITS, int6["one_minus_cosine"]),
        "data_free_int4": target(data_free, int4["bits"], INT4_FACTOR * int4["one_minus_cosine"]),
        # no importance setting measured: the data-free figures, the gap an importance file has to close
        "importance_4_0": target(importance or data_free, IMPORTANCE_BITS, int6["one_minus_cosine"], bool(importance)),
    }


def digits_met(digits: dict[str, Any]) -> bool:
    ok = [p for p in digits["points"] if p["status"] == "ok"]
    return len(ok) == len(digits["points"]) and all(
        p["bits_archive"] <= DIGITS_BITS and p["accuracy"] >= digits["original_accuracy"] - DIGITS_DROP - 1e-12
        for p in ok
    )


# --- output -------------------------------------------------------------------------------------


def sci(x: float | None) -> str:
    return "–" if x is None else "0" if x == 0 else f"{x:.3e}"


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def points_table(entry: dict[str, Any]) -> list[str]:
    lines = [
        "| setting | bits/w | 1 − cosine | mean cosine | MLM top-1 agreement | KL (nats) | MLM acc. (true) "
        "| weight rel. error | lossy tensors | compress s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in entry["points"]:
        if p.get("status") != "ok":
            continue
        seconds = fmt(p["seconds"], 1) if p["family"] not in ("original", "nf4") else "–"
        lines.append(
            f"| {p['label']} | {p['bits']:.3f} | {sci(p['one_minus_cosine'])} | {p['cosine']:.6f} "
            f"| {p['top1_agreement']:.4f} | {sci(p['kl'])} | {p['mlm_accuracy']:.4f} "
            f"| {sci(p['weighted_rel_error'])} | {p['lossy_tensors']} | {seconds} |"
        )
    skipped = [p for p in entry["points"] if p.get("status") != "ok"]
    if skipped:
        lines += ["", "Not measured (planned settings, or failures):", ""]
        lines += [f"* {p['label']}: {p['status']}" for p in skipped]
    return lines


def target_line(name: str, spec: str, r: dict[str, Any]) -> str:
    verdict = ("met" if r["met"] else "missed") if r["measured"] else "not measured"
    head = f"* **{name}** ({spec}): **{verdict}**"
    best = r["best"]
    if best is None:
        return f"{head} -- no point at ≤ {r['budget_bits']:.3f} bits."
    text = (
        f"{head} -- best {'' if r['measured'] else 'data-free '}point at ≤ {r['budget_bits']:.3f} bits: "
        f"{best['label']}, {best['bits']:.3f} bits, 1 − cosine {sci(best['one_minus_cosine'])} = "
        f"{r['ratio_to_level']:.2f} × the level {sci(r['level'])}."
    )
    for options, c in r["curves"].items():
        need = c["bits_for_level"]
        reach = (
            "does not reach the level in the sweep"
            if need is None
            else f"reaches the level at {need:.3f} bits ({need - r['budget_bits']:+.3f} bits from the budget)"
        )
        text += (
            f" `--target-ratio` sweep, {options}: {sci(c['at_budget'])} at {r['budget_bits']:.3f} bits "
            f"(interpolated); it {reach}."
        )
    return text


def target_lines(entry: dict[str, Any]) -> list[str]:
    t = entry["targets"]
    by = {p["label"]: p for p in entry["points"] if p.get("status") == "ok"}
    int6, int4 = by[REFERENCE_INT6], by[REFERENCE_INT4]
    importance = "1 − cosine ≤ RTN int6 g128's" + (
        ""
        if t["importance_4_0"]["measured"]
        else "; no importance setting ran, so the figures are the data-free ones: the gap an importance file "
        "has to close"
    )
    return [
        f"RTN int6 g128: {int6['bits']:.3f} bits/weight, 1 − cosine {sci(int6['one_minus_cosine'])}; RTN int4 g128: "
        f"{int4['bits']:.3f} bits/weight, 1 − cosine {sci(int4['one_minus_cosine'])}. The levels are these measured "
        "points (each target names one RTN point, so the RTN curve is not interpolated). A verdict is the best "
        "measured sparsify point within the budget (any data-free option); each `--target-ratio` sweep of one set "
        "of options is then interpolated at the budget and at the level: its points sorted by bits, "
        "log(1 − cosine) linear in bits between neighbours, no extrapolation.",
        "",
        target_line(
            f"Data-free, ≤ {DATA_FREE_BITS} bits",
            f"1 − cosine ≤ RTN int6 g128's {sci(int6['one_minus_cosine'])}",
            t["data_free_4_5"],
        ),
        target_line(
            "Data-free, at RTN int4 g128's bits",
            f"≤ {int4['bits']:.3f} bits, 1 − cosine ≤ {INT4_FACTOR} × RTN int4's = {sci(t['data_free_int4']['level'])}",
            t["data_free_int4"],
        ),
        target_line(f"With an importance file, ≤ {IMPORTANCE_BITS} bits", importance, t["importance_4_0"]),
    ]


def equal_bits_lines(entry: dict[str, Any]) -> list[str]:
    """Each RTN point beside the default ``--target-ratio`` sweep interpolated at its bits."""
    ok = [p for p in entry["points"] if p.get("status") == "ok"]
    sweep = sorted((p["bits"], max(p["one_minus_cosine"], 1e-300)) for p in ok if p["family"] == "sweep")
    lines = [
        "| RTN point | bits/w | its 1 − cosine | default sweep at those bits | ÷ RTN | sweep bits at RTN's 1 − cosine "
        "| bits saved |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in ok:
        if p["family"] != "rtn":
            continue
        at, need = value_at(sweep, p["bits"]), bits_for(sweep, p["one_minus_cosine"])
        lines.append(
            f"| {p['label']} | {p['bits']:.3f} | {sci(p['one_minus_cosine'])} | {sci(at)} "
            f"| {fmt(at and at / p['one_minus_cosine'], 2)} | {fmt(need)} | {fmt(need and p['bits'] - need)} |"
        )
    return lines


def gap_lines(entry: dict[str, Any]) -> list[str]:
    """What the run says about closing the AntiBERTy gaps (figures from this run)."""
    ok = [p for p in entry["points"] if p.get("status") == "ok"]
    sweep = sorted((p["bits"], max(p["one_minus_cosine"], 1e-300)) for p in ok if p["family"] == "sweep")
    rtn = [p for p in ok if p["family"] == "rtn"]
    ratios = [a / p["one_minus_cosine"] for p in rtn if (a := value_at(sweep, p["bits"])) is not None]
    saved = [p["bits"] - b for p in rtn if (b := bits_for(sweep, p["one_minus_cosine"])) is not None]
    t = entry["targets"]
    missing = [
        f"{r['ratio_to_level']:.2f} × lower 1 − cosine at {r['budget_bits']:.3f} bits"
        for r in (t["data_free_4_5"], t["data_free_int4"])
        if r["best"] is not None and not r["met"]
    ]
    if not ratios or not missing:
        return []
    lossy = [p for p in ok if p["family"] != "original"]
    ranks = [np.argsort(np.argsort([p[k] for p in lossy])) for k in ("weighted_rel_error", "one_minus_cosine")]
    rho = float(np.corrcoef(*ranks)[0, 1])  # Spearman's rank correlation (no ties among these figures)
    return [
        f"Reading: at equal bits the default rate control's 1 − cosine is {min(ratios):.2f}-{max(ratios):.2f} × "
        f"RTN's ({min(saved):+.3f} to {max(saved):+.3f} bits saved at RTN's fidelity), while the data-free targets "
        f"missed here ask for {' and '.join(missing)} than the best point within the budget. Task fidelity follows "
        f"the weights' error here (Spearman's ρ = {rho:.3f} between weight rel. error and 1 − cosine over the "
        f"{len(lossy)} lossy settings), and choosing steps for the least total "
        "(or relative) squared error does not buy that much: closing the gaps needs the error weighted by its "
        "effect on the outputs (the `--importance` rows: how far a calibration set gets) or a codec that stores "
        "the same weight error in about the bits the sweep is short by."
    ]


def digits_lines(digits: dict[str, Any]) -> list[str]:
    o = digits["original_accuracy"]
    lines = [
        f"`{digits['model']}`, original test accuracy {o:.4f} (450 test images: one image = 0.22 point); "
        '`sparsify.compress(..., pipeline="auto", target_ratio=R)` through `bench/lossy.py`\'s `sparsify_point`.',
        "",
        "| target ratio | bits/w | accuracy | drop (points) | weighted rel. error |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in digits["points"]:
        if p["status"] != "ok":
            lines.append(f"| {p['setting']} | {p['status']} | | | |")
            continue
        lines.append(
            f"| {p['setting']} | {p['bits_archive']:.3f} | {p['accuracy']:.4f} | {p['drop_points']:+.2f} "
            f"| {p['weighted_rel_error']:.4f} |"
        )
    ok = [p for p in digits["points"] if p["status"] == "ok"]
    verdict = "met" if digits["met"] else "missed"
    text = (
        f"**Digits target (every target ratio {digits['points'][0]['setting']}-{digits['points'][-1]['setting']}: "
        f"≤ {DIGITS_BITS} bits/weight and within {100 * DIGITS_DROP:.1f} point): {verdict}**"
    )
    if ok:
        worst = max(ok, key=lambda p: p["drop_points"])
        most = max(ok, key=lambda p: p["bits_archive"])
        within = sum(p["accuracy"] >= o - DIGITS_DROP - 1e-12 for p in ok)
        text += (
            f" -- {within} of {len(digits['points'])} within {100 * DIGITS_DROP:.1f} point; largest drop "
            f"{worst['drop_points']:+.2f} points (`{worst['setting']}`); most bits {most['bits_archive']:.3f} "
            f"(`{most['setting']}`)."
        )
    if ok:
        file_bits = ok[0]["bits_archive"] * ok[0]["ratio"]  # bits per weight of the source file itself
        least = file_bits / DIGITS_BITS
        feasible = [p for p in ok if float(p["setting"]) >= least]
        text += (
            f" A target ratio R is of the file ({file_bits:.3f} bits per weight), so a met target gives "
            f"{file_bits:.3f} / R bits: R < {least:.2f} cannot be at ≤ {DIGITS_BITS} bits whatever the codec; of the "
            f"{len(feasible)} ratios that can, {sum(p['accuracy'] >= o - DIGITS_DROP - 1e-12 for p in feasible)} "
            f"are within {100 * DIGITS_DROP:.1f} point."
        )
    return [*lines, "", text]


def importance_lines(entry: dict[str, Any]) -> list[str]:
    """How the run's importance files were made (``bench/task_importance.py``)."""
    made = {f["mode"]: f for f in entry.get("importance_files", [])}
    if not made:
        return ["Importance files: none made in this run."]
    described = {
        "activations": "no loss: E[x_j²] per input channel of every linear layer and token frequencies per "
        "embedding row, over the unmasked and the masked calibration batches, each entry scaled to mean 1",
        "fisher": "the masked-LM cross-entropy against the true residues at a seeded 15 % of the calibration "
        "residues (the empirical Fisher): K-FAC's diagonal factors, E[g_i²] per row × E[x_j²] per column of "
        "every linear weight, summed g² per embedding weight, the LayerNorms' E[(g x̂)²] and E[g²]; mean 1",
        "fisher-inputs": "the same loss and batches as fisher, each linear weight's per-column factor replaced by "
        "its input's full second-moment matrix E[x xᵀ] (`NAME:inputs`, n² values per layer), × E[g_i²] per row; "
        "mean 1",
    }
    parts = [
        f"`{mode}.safetensors` ({described.get(mode, mode)}; {f['entries']} entries, {f['values']:,} values, "
        f"{f['file_bytes']:,} bytes, recorded in {f['seconds']:.1f} s from {f['batches']} batches)"
        for mode, f in made.items()
    ]
    return [
        "Importance files (`sparsify.importance.recorder.record_importance` on the "
        f"{entry['calibration_sequences']} calibration sequences, `bench/task_importance.py`): "
        f"{'; '.join(parts)}. The `--importance` settings below compress with one of them: the rate control "
        "minimises the importance-weighted squared error, and its candidates include `quant:step=d,weighted=true` "
        "(format 3.2: a step per row and column of each weight, ∝ a^(−1/2) in quarter octaves); with "
        "`fisher-inputs` every step is tried with error feedback instead, `quant:step=d,feedback=true` (format 3.3: "
        "GPTQ's column-by-column rounding with each column's error fed forward by E[x xᵀ], `sparsify.feedback`)."
    ]


def render(data: dict[str, Any]) -> str:
    m, e = data["machine"], data["antiberty"]
    ok = [p for p in e["points"] if p.get("status") == "ok"]
    passes = [e["forward_s"], *(p["forward_s"] for p in ok)]
    lines = [
        f"# sparsify task-fidelity benchmark: AntiBERTy ({data['date']})",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable, load average "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])} at the start), Python {m['python']}, numpy {m['numpy']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, "
        f"sparsify {m['sparsify']}. Command: `{data['command']}` (in `make bench`). Run time {data['elapsed_s']} s "
        f"(load average {', '.join(f'{x:.2f}' for x in data['load_average_end'])} at the end: other work shares "
        f"the machine; one pass over the test set, unmasked + masked, took {min(passes):.1f}-{max(passes):.1f} s). "
        "Method: the docstrings of `bench/task.py`, `bench/task_model.py`, `bench/task_report.py`.",
        "",
        f"Model: AntiBERTy 0.1.3 (`antiberty-fp32.safetensors`, converted by `bench/antiberty.py` into the system "
        f"temp's cache), {e['numel']:,} weights in {e['tensors']} tensors, {e['source_bytes']:,} bytes, run as "
        "`transformers.BertForMaskedLM` on CPU in float32 (decoder untied from the word embedding; checkpoint keys "
        f"it does not use: {', '.join(f'`{k}`' for k in e['keys']['unused'])}; none missing). Every lossy setting "
        f"{'quantises' if all(p['lossy_as_quantisable'] for p in ok) else 'was meant to quantise (see lossy tensors)'} "
        f"the same {e['quantisable_tensors']} tensors (≥ 2-D, ≥ 1,024 elements: "
        f"{e['quantisable_numel']:,} weights, the pooler and the unused heads included); 1-D tensors and "
        "`position_ids` stay lossless, by sparsify's default min_size rule (NF4: the same rule).",
        "",
        f"Sequences (regenerated every run by `bench/task_sequences.py`, not stored): "
        f"`numpy.random.default_rng({data['seed']})`; draw i mutates AntiBERTy's README sequence i mod 3 (its three "
        "unmasked example sequences, checked verbatim against the wheel's README) at k = max(1, round(r × length)) "
        "distinct positions, r ~ U[1 %, 5 %), each to one of the 19 other standard amino acids; repeats dropped. The "
        f"first {e['test_sequences']} distinct draws are the test set (lengths {e['sequence_lengths'][0]}-"
        f"{e['sequence_lengths'][1]}), the next {e['calibration_sequences']} the calibration set "
        "(`calibration_sequences()`, disjoint: the importance files' only input). MLM inputs: "
        f"`default_rng({data['mask_seed']})`, "
        f"round(15 % × length) residue positions of each test sequence set to [MASK] "
        f"({e['masked_positions']:,} positions, the same for every setting).",
        "",
        "Metrics, each against the original weights: 1 − cosine and mean cosine of the attention-mask-weighted "
        "mean-pooled last hidden state of the unmasked sequences (means over sequences; 1 − cosine computed as "
        "½‖â − b̂‖²); MLM top-1 agreement at the masked positions and mean KL(p_original ‖ p_compressed) in nats, "
        "over the 20 amino-acid tokens; MLM acc. (true): share of masked positions predicted as the true residue. "
        "Bits/w: 8 × archive bytes / all weights of the file (a target ratio R is of the file's bytes, header "
        "included: R gives 32.006 / R bits). NF4 (no archive, no header): 4 bits per value + a float32 absmax per "
        "64 consecutive values on the quantised tensors (4.5 bits on them), the other tensors at their stored bits "
        "(32, and 64 for `position_ids`), over all weights. The RTN rows are sparsify's own `quant` pipelines "
        "(symmetric, a float16 scale per row for int8, per group of 128 otherwise) + zstd, so their bits are "
        "entropy-coded: below the nominal 8.0 / 6.125 / 5.125 / 4.125 on the quantised tensors.",
        "",
        *importance_lines(e),
        "",
        "## AntiBERTy: every setting",
        "",
        *points_table(e),
        "",
        "## Targets (whole archive bits per weight, AntiBERTy, this run)",
        "",
        *target_lines(e),
        "",
        "Task fidelity at equal bits, RTN against the default rate control (the sweep interpolated as above):",
        "",
        *equal_bits_lines(e),
        "",
        *gap_lines(e),
        "",
        "## Digits MLP: test accuracy at --target-ratio 12-14",
        "",
        *digits_lines(data["digits"]),
        "",
        "## CREPE",
        "",
        "`bench/lossy.py` has no task-level fidelity measure for CREPE (its CREPE rows are weight errors per bit "
        "budget), so the CREPE rows stay in [lossy.md](lossy.md).",
    ]
    return "\n".join(lines) + "\n"
