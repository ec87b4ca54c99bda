"""Render a report as a PNG: the model's rate–distortion curves and per-tensor bits and errors.

Pure rendering: takes the report dict (docs/REPORT.md) and a list of curves, writes one PNG. matplotlib
is an optional dependency (``pip install 'sparsify[plot]'``), imported only when a plot is drawn, and
only through its object API (``Figure`` + the Agg canvas): no pyplot, no global state, no display.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from sparsify.atomic import atomic_output
from sparsify.errors import UsageError
from sparsify.report.names import elide, shorten_names

MISSING_MATPLOTLIB = "plotting needs matplotlib: pip install 'sparsify[plot]'"

MAX_BARS = 40
"""Tensors shown in the bottom panel at most: the largest by element count, kept in file order."""
SMALL_TENSOR = 1024
"""Tensors with fewer elements are left out of the bottom panel when larger ones exist."""

FIGSIZE = (12.0, 9.0)
DPI = 120

_KIND_ORDER = ("values", "indices", "scales", "dictionary", "codes", "overhead")
_KIND_COLORS = {
    "values": "#4c72b0",
    "indices": "#dd8452",
    "scales": "#55a868",
    "dictionary": "#8172b3",
    "codes": "#937860",
    "overhead": "#8c8c8c",
}
_OTHER_COLORS = ("#da8bc3", "#ccb974", "#64b5cd", "#c44e52", "#a1c9f4", "#b0b0b0")
_CURVE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_ERROR_COLOR = "#c0392b"
_EXACT_COLOR = "#1e8449"
_ARCHIVE_COLOR = "#d62728"


def require_matplotlib() -> None:
    """Raise :class:`UsageError` (exit code 2) when matplotlib cannot be imported."""
    _load()


def render_plot(report: dict, curves: list[dict], path: str | Path, *, title: str | None = None) -> None:
    """Write :func:`plot_png` to ``path`` (atomically: temp file in the same folder, then os.replace)."""
    png = plot_png(report, curves, title=title)
    with atomic_output(Path(path), force=True) as temp:
        temp.write_bytes(png)


def plot_png(report: dict, curves: list[dict], *, title: str | None = None) -> bytes:
    """The plot as PNG bytes: two panels.

    Top: rate–distortion (bits per weight against weighted rel. error), one line per curve of
    ``curves`` (``{"label", "points": [{"bits_per_weight", "rel_error"}], "chosen": optional point}``)
    and the archive's own point from ``report["totals"]``. Bottom: per tensor, stored bits per weight
    stacked by kind of part, and the tensor's rel. error on a second axis.
    """
    Figure, FigureCanvasAgg = _load()
    totals = report.get("totals") or {}
    tensors = list(report.get("tensors") or [])

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=(1, 1.15))

    if title is None:
        title = (report.get("source") or {}).get("name") or "sparsify report"
    fig.suptitle(f"{title}\n{_subtitle(report)}", fontsize=12)
    fig.get_layout_engine().set(h_pad=0.08, hspace=0.06)

    _draw_rate_distortion(top, curves, totals)
    _draw_tensors(bottom, tensors, _finite(totals.get("bits_per_weight")))

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# matplotlib loading


def _load():
    try:
        import matplotlib  # noqa: F401  (first, so a missing package fails even with submodules cached)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(MISSING_MATPLOTLIB) from None
    return Figure, FigureCanvasAgg


# ---------------------------------------------------------------------------------------------------
# small helpers


def _finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (missing, null = infinite, NaN)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt_err(x: float | None) -> str:
    if x is None:
        return "inf"
    if x == 0:
        return "0"
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.2e}"


def _subtitle(report: dict) -> str:
    totals = report.get("totals") or {}
    parts = []
    ratio = _finite(totals.get("ratio"))
    if ratio is not None:
        parts.append(f"ratio {ratio:.2f} : 1")
    bpw = _finite(totals.get("bits_per_weight"))
    parts.append(f"{bpw:.2f} bits/weight" if bpw is not None else "- bits/weight")
    tensors = report.get("tensors") or []
    n = totals.get("tensors", len(tensors))
    lossless = totals.get("lossless_tensors", sum(1 for t in tensors if t.get("exact")))
    if "lossy_weighted_rel_error" in totals and lossless < n:
        lossy_error = _fmt_err(_finite(totals["lossy_weighted_rel_error"]))
        parts.append(f"rel. error {lossy_error} over {n - lossless} lossy tensors ({lossless} lossless)")
        parts.append(f"whole model {_fmt_err(_finite(totals.get('weighted_rel_error')))}")
    else:
        parts.append(f"weighted rel. error {_fmt_err(_finite(totals.get('weighted_rel_error')))}")
        parts.append(f"{n} tensors ({lossless} lossless)")
    line = "  ·  ".join(parts)
    pipeline = (report.get("options") or {}).get("pipeline")
    if pipeline:
        line += "\npipeline: " + elide(str(pipeline), 110)
    return line


class _ErrorScale:
    """A y axis for relative errors: log when the positive values span more than a decade.

    Zeros (and, on a log axis, anything at or below the floor) are drawn at ``floor``; infinite
    errors at ``ceiling``.
    """

    def __init__(self, values: list[float]) -> None:
        positive = [v for v in values if v > 0]
        self.log = bool(positive) and max(positive) / min(positive) > 10
        if self.log:
            lo, hi = min(positive), max(positive)
            self.floor = 10 ** (math.floor(math.log10(lo)) - 0.5)
            self.ceiling = 10 ** (math.ceil(math.log10(hi)) + 0.5)
        else:
            hi = max(positive, default=0.0)
            self.floor = 0.0
            self.ceiling = hi * 1.25 if hi > 0 else 1.0

    def apply(self, ax) -> None:
        if self.log:
            ax.set_yscale("log")
            ax.set_ylim(self.floor / 1.6, self.ceiling * 1.6)
        else:
            span = self.ceiling - self.floor
            ax.set_ylim(self.floor - 0.04 * span, self.ceiling + 0.06 * span)

    def place(self, v: float | None) -> float:
        if v is None:
            return self.ceiling
        return max(v, self.floor) if self.log else v


# ---------------------------------------------------------------------------------------------------
# top panel: rate–distortion


def _clean_points(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points or []:
        if not isinstance(p, dict):
            continue
        b, e = _finite(p.get("bits_per_weight")), _finite(p.get("rel_error"))
        if b is not None and e is not None and e >= 0:
            out.append((b, e))
    return sorted(out)


def _draw_rate_distortion(ax, curves: list[dict], totals: dict) -> None:
    lines = []
    for i, curve in enumerate(curves or []):
        pts = _clean_points(curve.get("points"))
        chosen = _clean_points([curve["chosen"]]) if isinstance(curve.get("chosen"), dict) else []
        lines.append((str(curve.get("label") or f"curve {i + 1}"), pts, chosen[0] if chosen else None))

    own_bits = _finite(totals.get("bits_per_weight"))
    own_err_raw = totals.get("weighted_rel_error")
    own_err = _finite(own_err_raw)
    all_errors = [e for _, pts, ch in lines for _, e in pts + ([ch] if ch else [])]
    if own_err is not None:
        all_errors.append(own_err)
    scale = _ErrorScale(all_errors)
    scale.apply(ax)

    zero_label_done = False
    for i, (label, pts, chosen) in enumerate(lines):
        color = _CURVE_COLORS[i % len(_CURVE_COLORS)]
        xs = [b for b, _ in pts]
        ys = [scale.place(e) for _, e in pts]
        ax.plot(xs, ys, "-o", color=color, lw=1.8, ms=4.5, label=f"{label} ({len(pts)} pts)", zorder=3)
        zeros = [(b, scale.floor) for b, e in pts if scale.log and e <= scale.floor]
        if zeros:
            ax.plot(
                [b for b, _ in zeros],
                [y for _, y in zeros],
                "v",
                color=color,
                ms=7,
                zorder=4,
                label=None if zero_label_done else "error 0 (at axis floor)",
            )
            zero_label_done = True
        if chosen is not None:
            ax.plot(
                chosen[0],
                scale.place(chosen[1]),
                "o",
                ms=13,
                mfc="none",
                mec=color,
                mew=2.2,
                zorder=5,
                label=f"{label}: chosen",
            )

    if own_bits is not None:
        y = scale.place(own_err if own_err is not None else None)
        ax.plot(own_bits, y, "*", ms=20, color=_ARCHIVE_COLOR, mec="black", mew=0.8, zorder=6, label="this archive")
        text = f"this archive\n{own_bits:.2f} bits/weight\nerror {_fmt_err(own_err)}"
        ax.annotate(
            text,
            (own_bits, y),
            xytext=(0.98, 0.96),
            textcoords="axes fraction",
            ha="right",
            va="top",
            fontsize=9,
            color="black",
            bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": _ARCHIVE_COLOR, "alpha": 0.9},
            arrowprops={"arrowstyle": "->", "color": _ARCHIVE_COLOR, "lw": 1, "shrinkB": 9},
            zorder=7,
        )

    xs_all = [b for _, pts, _ in lines for b, _ in pts] + ([own_bits] if own_bits is not None else [])
    log_x = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 8
    if log_x:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(LogLocator(base=2))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlim(min(xs_all) / 1.25, max(xs_all) * 1.25)
    elif xs_all:
        lo, hi = min(xs_all), max(xs_all)
        pad = (hi - lo) * 0.08 if hi > lo else max(abs(hi) * 0.25, 0.5)
        ax.set_xlim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    ax.set_xlabel("bits per weight (archive bits / element)" + ("  (log₂)" if log_x else ""))
    ax.set_ylabel("weighted rel. error  ‖Ŵ − W‖ / ‖W‖" + ("  (log)" if scale.log else ""))
    ax.set_title(
        "Rate–distortion: model error against size"
        + ("" if lines else "\n(curves need the original weights: sparsify compress --plot or --html)"),
        fontsize=11,
    )
    ax.grid(True, which="major", alpha=0.4)
    if scale.log:
        ax.grid(True, which="minor", alpha=0.12)
    if not lines and own_bits is None:
        ax.text(
            0.5,
            0.5,
            "nothing to plot: no curves, and the archive has no bits per weight",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="gray",
        )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=True, borderaxespad=0)


# ---------------------------------------------------------------------------------------------------
# bottom panel: per-tensor bits and errors


def _kind_order(kinds: set[str]) -> list[str]:
    known = [k for k in _KIND_ORDER if k in kinds]
    return known + sorted(kinds - set(known))


def _draw_tensors(ax, tensors: list[dict], mean_bits: float | None = None) -> None:
    total = len(tensors)
    shown = [t for t in tensors if isinstance(t, dict)]
    # Tiny tensors (biases, norms) are all manifest overhead per element and would set the scale.
    large = [t for t in shown if (t.get("numel") or 0) >= SMALL_TENSOR]
    hidden_small = len(shown) - len(large) if large else 0
    shown = large or shown
    truncated = len(shown) > MAX_BARS
    if truncated:
        keep = sorted(range(len(shown)), key=lambda i: (-(shown[i].get("numel") or 0), i))[:MAX_BARS]
        shown = [shown[i] for i in sorted(keep)]

    heading = "Per tensor: stored bits per weight by part kind (bars) and rel. error (markers)"
    if truncated:
        heading += f"\nshowing the {MAX_BARS} largest of {total} tensors by element count, in file order"
    elif hidden_small:
        heading += f"\n{hidden_small} tensors under {SMALL_TENSOR} elements not shown"
    ax.set_title(heading, fontsize=11)

    if not shown:
        ax.text(0.5, 0.5, "no tensors", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        return

    n = len(shown)
    xs = list(range(n))
    kinds = _kind_order({k for t in shown for k in (t.get("bytes_by_kind") or {})})
    colors = {}
    others = iter(_OTHER_COLORS * 4)
    for k in kinds:
        colors[k] = _KIND_COLORS.get(k) or next(others, "#b0b0b0")

    width = 0.72
    exact = [bool(t.get("exact")) for t in shown]
    alphas = [0.4 if e else 1.0 for e in exact]  # lossless bars recede: the lossy ones are the story
    bottoms = [0.0] * n
    for kind in kinds:
        heights = []
        for t in shown:
            numel = t.get("numel") or 0
            nbytes = (t.get("bytes_by_kind") or {}).get(kind) or 0
            heights.append(8.0 * nbytes / numel if numel else 0.0)
        bars = ax.bar(xs, heights, width, bottom=bottoms, color=colors[kind], label=kind, lw=0, zorder=2)
        for bar, alpha in zip(bars, alphas, strict=True):
            bar.set_alpha(alpha)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]

    for x, is_exact, h in zip(xs, exact, bottoms, strict=True):
        if is_exact and h > 0:  # outline lossless bars
            ax.bar(x, h, width, fill=False, edgecolor=_EXACT_COLOR, lw=1.0, hatch="///", zorder=3)

    mean_handles = []
    if mean_bits is not None:
        mean_handles.append(
            ax.axhline(mean_bits, color="black", ls="--", lw=1, zorder=4, label=f"archive: {mean_bits:.2f} bits/weight")
        )
    ax.set_ylim(0, max(max(bottoms), mean_bits or 0, 1e-9) * 1.12)
    ax.set_ylabel("stored bits per weight (8 × bytes / elements)")
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(True, axis="y", alpha=0.35, zorder=0)
    ax.set_axisbelow(True)

    names = shorten_names([str(t.get("name", "?")) for t in shown])
    labels = [f"{name} ({_count(t.get('numel'))})" for name, t in zip(names, shown, strict=True)]
    fontsize = 8 if n <= 24 else 7
    ax.set_xticks(xs, labels, rotation=55, ha="right", rotation_mode="anchor", fontsize=fontsize)
    for tick, is_exact in zip(ax.get_xticklabels(), exact, strict=True):
        if is_exact:
            tick.set_color(_EXACT_COLOR)

    # rel. error on a twin axis
    err = ax.twinx()
    values = [_finite(t.get("rel_error")) for t in shown]
    scale = _ErrorScale([v for v, e in zip(values, exact, strict=True) if v is not None and not e])
    scale.apply(err)
    lossy_x, lossy_y, zero_x, inf_x, exact_x = [], [], [], [], []
    for x, v, is_exact, t in zip(xs, values, exact, shown, strict=True):
        if is_exact:
            exact_x.append(x)
        elif v is None and t.get("rel_error") is None:
            inf_x.append(x)
        elif v is None or v <= 0 or (scale.log and v <= scale.floor):
            zero_x.append(x)
        else:
            lossy_x.append(x)
            lossy_y.append(v)
    handles = []
    if lossy_x:
        handles += err.plot(
            lossy_x, lossy_y, "D", color=_ERROR_COLOR, ms=6, mec="black", mew=0.5, zorder=5, label="rel. error"
        )
    if zero_x:
        handles += err.plot(
            zero_x,
            [scale.floor] * len(zero_x),
            "v",
            color=_ERROR_COLOR,
            ms=7,
            zorder=5,
            label="rel. error 0 (not bit-exact)",
        )
    if inf_x:
        handles += err.plot(
            inf_x,
            [scale.ceiling] * len(inf_x),
            "^",
            color="black",
            ms=8,
            zorder=5,
            label="rel. error infinite / undefined",
        )
    if exact_x:
        handles.append(_exact_handle())
    err.set_ylabel("rel. error  ‖Ŵ − W‖ / ‖W‖" + ("  (log)" if scale.log else ""), color=_ERROR_COLOR)
    err.tick_params(axis="y", colors=_ERROR_COLOR)

    from matplotlib.patches import Patch

    kind_handles = [Patch(color=colors[k], label=f"bits: {k}") for k in kinds]  # full colour, unlike faded bars
    all_handles = kind_handles + mean_handles + handles
    err.legend(handles=all_handles, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=9, borderaxespad=0)


def _exact_handle():
    from matplotlib.patches import Patch

    return Patch(fill=False, edgecolor=_EXACT_COLOR, hatch="///", lw=1.0, label="lossless (bit-exact): green name")


def _count(n: Any) -> str:
    """Element count for a tick label: 16, 4.1k, 131k, 2.4M."""
    if not isinstance(n, int):
        return "?"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return str(n)
