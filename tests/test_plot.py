"""The PNG report (sparsify.report.plot): a real file with sane pixels, robust to odd reports, and a clear
error when the optional matplotlib is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import SAMPLE_FILES

import sparsify
from sparsify.errors import ExitCode, UsageError
from sparsify.report import plot
from sparsify.report.plot import MISSING_MATPLOTLIB, plot_png, render_plot, require_matplotlib, shorten_names

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KINDS = ("values", "indices", "dictionary", "scales", "overhead", "codebook")


def tensor_row(i: int, *, numel: int = 4096, rel_error: float | None = 0.05, exact: bool = False) -> dict:
    """A report row with the fields the plot reads (docs/REPORT.md)."""
    kinds = {"values": numel // 2}
    if not exact:
        kinds[KINDS[1 + i % (len(KINDS) - 1)]] = numel // 8 + i
    return {
        "name": f"model.layers.{i}.self_attn.q_proj.weight",
        "numel": numel,
        "bits_per_weight": 8 * sum(kinds.values()) / numel if numel else None,
        "rel_error": 0.0 if exact else rel_error,
        "bytes_by_kind": kinds,
        "pipeline": "keep+zstd" if exact else "threshold:sparsity=0.9+zstd",
        "exact": exact,
    }


def make_report(rows: list[dict], *, bits: float | None = 4.2, error: float | None = 0.03) -> dict:
    return {
        "source": {"name": "toy.safetensors", "format": "safetensors", "size": 1000, "checksum": "xxh3:" + "0" * 16},
        "options": {"pipeline": "threshold:sparsity=0.9+zstd"},
        "tensors": rows,
        "totals": {
            "tensors": len(rows),
            "ratio": 7.6,
            "bits_per_weight": bits,
            "weighted_rel_error": error,
            "lossless_tensors": sum(1 for r in rows if r["exact"]),
        },
    }


CURVES = [
    {
        "label": "rate controller",
        "points": [{"bits_per_weight": b, "rel_error": e} for b, e in [(6, 0.002), (1, 0.2), (3, 0.02), (2, 0.06)]],
        "chosen": {"bits_per_weight": 3, "rel_error": 0.02},
    },
    {"label": "quant int4 g128", "points": [{"bits_per_weight": 4.5, "rel_error": 0.01}]},
    {
        "label": "threshold+int8",
        "points": [{"bits_per_weight": 32, "rel_error": 0.0}, {"bits_per_weight": 8, "rel_error": 0.004}],
    },
]


def check_png(path: Path) -> tuple[int, int]:
    import matplotlib.image

    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert (width, height) == (round(plot.FIGSIZE[0] * plot.DPI), round(plot.FIGSIZE[1] * plot.DPI))
    assert pixels[..., :3].std() > 0.05  # something was drawn
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file is gone
    return width, height


def test_real_compression(tmp_path):
    report = sparsify.compress(SAMPLE_FILES["fp32"], tmp_path / "a.sparsify", pipeline="threshold:sparsity=0.8+zstd")
    out = tmp_path / "plot.png"
    render_plot(report, CURVES, out)
    check_png(out)
    assert b"Software" not in out.read_bytes()  # no tool/version stamp in the metadata


def test_deterministic_and_overwrites(tmp_path):
    report = make_report([tensor_row(i, exact=i % 3 == 0) for i in range(8)])
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    render_plot(report, CURVES, a, title="Custom title")
    render_plot(report, CURVES, b, title="Custom title")
    assert a.read_bytes() == b.read_bytes()
    render_plot(report, [], a)  # an existing plot is replaced
    assert a.read_bytes() != b.read_bytes()
    check_png(a)


def test_plot_png_is_what_render_plot_writes(tmp_path):
    """The HTML report embeds plot_png's bytes: the same PNG that render_plot writes."""
    report = make_report([tensor_row(i, exact=i % 2 == 0) for i in range(5)])
    out = tmp_path / "p.png"
    render_plot(report, CURVES, out)
    assert plot_png(report, CURVES) == out.read_bytes()
    check_png(out)


def test_subtitle_tells_the_lossy_error_apart():
    report = make_report([tensor_row(i, exact=i % 2 == 0) for i in range(5)])
    report["totals"]["lossy_weighted_rel_error"] = 0.2
    assert "rel. error 0.2 over 2 lossy tensors (3 lossless)  ·  whole model 0.03" in plot._subtitle(report)
    del report["totals"]["lossy_weighted_rel_error"]  # a report of schema version 2
    assert "weighted rel. error 0.03  ·  5 tensors (3 lossless)" in plot._subtitle(report)


def test_empty_curves(tmp_path):
    out = tmp_path / "p.png"
    render_plot(make_report([tensor_row(i) for i in range(3)]), [], out)
    check_png(out)


def test_none_and_zero_errors(tmp_path):
    rows = [
        tensor_row(0, rel_error=None),  # infinite
        tensor_row(1, rel_error=0.0),  # lossy pipeline, no error
        tensor_row(2, exact=True),
        tensor_row(3, rel_error=1e-6),
        tensor_row(4, rel_error=0.4),
        tensor_row(5, numel=0),  # empty tensor: no bar, no division by zero
    ]
    curves = [
        {
            "label": "odd",
            "points": [{"bits_per_weight": 2, "rel_error": 0.0}, {"bits_per_weight": 1, "rel_error": None}],
        }
    ]
    out = tmp_path / "p.png"
    render_plot(make_report(rows, bits=None, error=None), curves, out)
    check_png(out)


def test_all_lossless_and_no_tensors(tmp_path):
    out = tmp_path / "p.png"
    render_plot(make_report([tensor_row(i, exact=True) for i in range(4)], error=0.0), [], out)
    check_png(out)
    render_plot(make_report([], bits=None, error=None), [], out)
    check_png(out)


def test_many_tensors_truncated(tmp_path, monkeypatch):
    rows = [tensor_row(i, numel=1000 + 37 * i) for i in range(60)]
    seen = {}
    original = plot._draw_tensors

    def spy(ax, tensors, mean_bits=None):
        original(ax, tensors, mean_bits)
        seen["title"] = ax.get_title()
        seen["labels"] = [t.get_text() for t in ax.get_xticklabels()]

    monkeypatch.setattr(plot, "_draw_tensors", spy)
    out = tmp_path / "p.png"
    render_plot(make_report(rows), CURVES, out)
    check_png(out)
    assert len(seen["labels"]) == plot.MAX_BARS
    assert "40 largest of 60" in seen["title"]
    # the 40 largest (the last 40 rows), still in file order
    assert seen["labels"][0].startswith("20") and seen["labels"][-1].startswith("59")


def test_shorten_names():
    keras = ["conv1/conv1_3/kernel:0", "conv1/conv1_3/bias:0", "classifier/classifier_3/kernel:0"]
    assert shorten_names(keras) == ["conv1/kernel", "conv1/bias", "classifier/kernel"]
    bert = [f"encoder.layer.{i}.attention.{p}.weight" for i in range(2) for p in ("self.query", "output.dense")]
    for width in (20, 26, 40):
        short = shorten_names(bert, width=width)
        assert len(set(short)) == 4 and all(len(s) <= width for s in short), short
    llm = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    assert shorten_names(llm) == ["0.mlp.up_proj.weight", "1.mlp.up_proj.weight"]
    long = shorten_names(["a" * 80], width=20)[0]
    assert len(long) == 20 and "…" in long
    assert shorten_names(["fc1.weight"]) == ["fc1.weight"]


def test_missing_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UsageError) as info:
        require_matplotlib()
    assert str(info.value) == MISSING_MATPLOTLIB == "plotting needs matplotlib: pip install 'sparsify[plot]'"
    assert info.value.exit_code == ExitCode.USAGE == 2
    out = tmp_path / "p.png"
    with pytest.raises(UsageError, match="sparsify\\[plot\\]"):
        render_plot(make_report([tensor_row(0)]), [], out)
    assert not out.exists()
