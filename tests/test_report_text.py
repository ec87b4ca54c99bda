"""The terminal and Markdown reports: the table fits 80, 120 and 200 columns without cutting a
number, names are shortened in the middle only while they still look different, nothing depends
on a width on a pipe, big models are summarised (totals, groups, worst tensors; --all for every
row), reasons are footnotes, and the Markdown summary of a 107-tensor model is at most 30 lines
above its <details>."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DIGITS_TENSORS, SAMPLE_FILES
from report_schema import checked
from transformer_model import LOSSLESS, TENSORS, write_transformer

import sparsify
from sparsify.errors import UsageError
from sparsify.report import summary
from sparsify.report.columns import BY_KEY, COLUMNS, ESSENTIAL, parse_columns
from sparsify.report.columns import select as select_columns
from sparsify.report.grid import Grid, layout
from sparsify.report.names import shorten, shorten_all
from sparsify.report.render import MARKDOWN_LINES, WORST, markdown_text, render_markdown, render_table, table_lines

WIDTHS = (80, 120, 200)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    """The digits MLP at ratio 8 (rate control: a footnote on every lossy row) and with a gate that
    fails, and the 107-tensor transformer, int4."""
    tmp = tmp_path_factory.mktemp("text")
    digits = checked(sparsify.compress(SAMPLE_FILES["fp32"], tmp / "d.sparsify", target_ratio=8, jobs=1))
    gated = checked(
        sparsify.compress(SAMPLE_FILES["fp32"], tmp / "g.sparsify", pipeline="threshold:sparsity=0.9", max_error=0.5)
    )
    model = write_transformer(tmp / "transformer.safetensors")
    big = checked(sparsify.compress(model, tmp / "t.sparsify", pipeline="quant:bits=4,group=32+zstd", jobs=1))
    return {"digits": digits, "gated": gated, "big": big}


def text(report: dict, width: int | None, **view) -> list[str]:
    keys = view.pop("columns", None)
    columns = select_columns(report, wide=view.pop("wide", False), keys=keys)
    return [line for line, _ in table_lines(report, columns, width=width, **view)]


def numbers_intact(lines: list[str], rows: list[dict], columns) -> None:
    """Every numeric cell of every row appears whole (between spaces or line ends) in the output."""
    tokens = {token for line in lines for token in line.split()}
    joined = "\n".join(lines)
    for row in rows:
        for c in columns:
            if c.numeric:
                cell = c.text(row)
                assert (
                    cell in tokens
                    or f" {cell}\n" in joined
                    or re.search(rf"(^|  ){re.escape(cell)}($|  )", joined, re.M)
                ), (
                    row["name"],
                    c.key,
                    cell,
                )


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("wide", [False, True])
def test_small_model_fits_every_width(reports, width, wide):
    report = reports["digits"]
    lines = text(report, width, wide=wide)
    assert max(len(line) for line in lines) <= width
    columns = select_columns(report, wide=wide)
    numbers_intact(lines, report["tensors"], columns)
    for name in DIGITS_TENSORS:  # short names are never shortened
        assert any(line.startswith(name + " ") for line in lines), name
    if not wide:
        header = lines[0].split()
        assert header == ["tensor", "shape", "pipeline", "ratio", "bits/w", "rel.", "err"]
        assert len([line for line in lines if line.startswith("fc")]) == 6  # one line a tensor
    assert "¹ 1-D: lossless" in lines and "² rate control: target ratio" in lines
    assert any(re.match(r"fc1\.weight +256x64 +(F32 +)?quant:step=[0-9.]+\+zstd ²", line) for line in lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_big_model_summary_fits_every_width(reports, width):
    report = reports["big"]
    lines = text(report, width)
    assert max(len(line) for line in lines) <= width
    assert lines[0].startswith("archive ")
    labels = [line.split("  ")[0] for line in lines[:12] if line and not line.startswith(" ")]
    assert labels[:6] == ["archive", "size", "lossy", "lossless", "worst", "whole model"]
    at = {
        name: i
        for i, line in enumerate(lines)
        for name in ("tensors by name pattern", "the 5 worst")
        if line.startswith(name)
    }
    assert 6 < at["tensors by name pattern"] < at["the 5 worst"]
    assert lines[-1] == f"{TENSORS} tensors: --all shows every one, --json every figure"
    worst = summary.worst(report["tensors"], WORST)
    numbers_intact(lines, worst, select_columns(report))
    body = "\n".join(lines)
    for row in worst:  # the worst tensors' names whole, or shortened so that they still differ
        assert row["name"] in body or width < 120
    for pattern in ("encoder.layer.*.attention.self.query.weight", "9 more patterns, all lossless"):
        assert pattern in body
    assert sum(1 for row in report["tensors"] if row["name"] in body) <= WORST + 1  # no full table


def test_all_rows_and_columns(reports):
    report = reports["big"]
    lines = text(report, 120, all_rows=True)
    assert max(len(line) for line in lines) <= 120
    body = "\n".join(lines)
    assert all(row["name"] in body for row in report["tensors"])  # 120 columns: every name whole
    numbers_intact(lines, report["tensors"], select_columns(report))
    narrow = text(report, 80, all_rows=True)
    assert max(len(line) for line in narrow) <= 80
    assert all(row["name"] in narrow for row in report["tensors"])  # stacked: a line of its own
    picked = text(report, 200, all_rows=True, columns=("snr", "cosine", "stored"))
    assert picked[0].split() == ["tensor", "SNR", "dB", "cosine", "stored"]


def test_on_a_pipe_nothing_depends_on_a_width(reports, monkeypatch):
    for report in reports.values():
        outputs = set()
        for columns in ("40", "80", "300"):
            monkeypatch.setenv("COLUMNS", columns)
            out = io.StringIO()
            render_table(report, out)
            outputs.add(out.getvalue())
        assert len(outputs) == 1
        out = outputs.pop()
        assert "\x1b[" not in out  # no colour either
        assert out.splitlines() == text(report, None)
    big = "\n".join(text(reports["big"], None, all_rows=True))
    assert all(row["name"] in big for row in reports["big"]["tensors"])


def test_gate_failure_is_a_bold_red_line(reports):
    lines = table_lines(reports["gated"], select_columns(reports["gated"]), width=100)
    gate = [(t, s) for t, s in lines if t.startswith("gate")]
    assert gate and all(s == "bold red" for _, s in gate)
    assert "max_error=0.5: FAILED for" in gate[0][0]
    assert all(s in (None, "bold") for t, s in lines if not t.startswith(("gate", " ")))


def test_grid_layout_rules():
    grid = Grid(
        ["name", "a", "b"], [["encoder.layer.7.attention.self.query.weight", "1.00", "22.5"]], [False, True, True]
    )
    assert layout(grid, None) == [
        [
            "name".ljust(43) + "     a     b",
            "encoder.layer.7.attention.self.query.weight  1.00  22.5",
        ]
    ]
    (shortened,) = layout(grid, 40)
    assert shortened[1].endswith("  1.00  22.5") and len(shortened[1]) <= 40 and "…" in shortened[1]
    (stacked,) = layout(grid, 20)  # names would be cut too far: a line of their own
    assert stacked[0::2] == ["name", shorten("encoder.layer.7.attention.self.query.weight", 20)]
    assert [line.split() for line in stacked[1::2]] == [["a", "b"], ["1.00", "22.5"]]
    assert all(line.startswith("  ") for line in stacked[1::2])
    wide = Grid(["n", *"abcdefgh"], [["x", *(f"{i}.123456" for i in range(8))]], [False] + [True] * 8)
    blocks = layout(wide, 30)
    assert len(blocks) > 1 and all(len(line) <= 30 for block in blocks for line in block)
    assert all(block[1].startswith("x ") for block in blocks)  # each block led by the name


def test_shortened_names_stay_apart():
    names = [
        "encoder.layer.3.attention.output.dense.weight",
        "encoder.layer.3.intermediate.dense.weight",
        "encoder.layer.3.output.dense.weight",
    ]
    for width in range(24, 46):
        short = shorten_all(names, width)
        if short is None:
            continue
        assert all(len(s) <= width for s in short)
        assert len({s.replace("…", ".") for s in short}) == 3, short
    assert shorten_all(names, 26) is None or len(set(shorten_all(names, 26))) == 3


def test_columns_option():
    assert parse_columns("shape, SNR dB,rel_error,bits/w,max-abs") == ("shape", "snr", "error", "bits", "max-abs")
    with pytest.raises(UsageError, match="unknown column 'colour' in --columns"):
        parse_columns("shape,colour")
    with pytest.raises(UsageError, match="names no column"):
        parse_columns(" , ")
    assert [c.key for c in select_columns({"tensors": [{}]}, keys=("ratio", "tensor"))] == ["tensor", "ratio"]
    assert ESSENTIAL == ("tensor", "shape", "pipeline", "ratio", "bits", "error")
    from sparsify import cli

    help_text = next(o for o in cli.compress.params if o.name == "columns_text").help
    assert ", ".join(k for k in BY_KEY if k != "tensor") in help_text  # the help lists every key
    assert len(COLUMNS) == 19 and summary.SUMMARY_ABOVE == 40
    assert (
        f"more than {summary.SUMMARY_ABOVE} tensors"
        in next(o for o in cli.compress.params if o.name == "all_rows").help
    )


def test_markdown_of_a_small_model(reports):
    out = io.StringIO()
    render_markdown(reports["digits"], out)
    md = out.getvalue()
    lines = md.splitlines()
    assert lines[0] == "### sparsify compress: digits\\_mlp.safetensors"
    assert lines[2].startswith("- **archive**: digits\\_mlp.safetensors (safetensors, ")
    assert [line.split("**")[1] for line in lines[2:9]] == [
        "archive",
        "size",
        "lossy",
        "lossless",
        "worst",
        "whole model",
        "rate control",
    ]
    table = lines.index("| tensor | shape | pipeline | ratio | bits/w | rel. err |")
    assert table > 9 and lines[table + 1] == "|---|---|---|---:|---:|---:|"
    assert re.search(
        r"^\| `fc1\.weight` \| 256x64 \| quant:step=[0-9.]+\+zstd ² \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", md, re.M
    )
    assert "<details>" not in md and lines[-1] == "¹ 1-D: lossless · ² rate control: target ratio"


def test_markdown_of_a_big_model(reports):
    report = reports["big"]
    md = markdown_text(report, select_columns(report))
    lines = md.splitlines()
    details = lines.index(f"<details><summary>All {TENSORS} tensors</summary>")
    assert details <= MARKDOWN_LINES == 30
    above = "\n".join(lines[:details])
    assert "| name pattern | tensors | stored | ratio | bits/w | rel. err | pipeline |" in above
    assert "| `encoder.layer.*.attention.self.query.weight` | 8 |" in above
    assert f"| 9 more patterns, all lossless | {LOSSLESS} |" in above
    assert f"| worst {WORST} of {TENSORS - LOSSLESS} lossy | shape |" in above
    below = lines[details:]
    assert below[1] == "" and below[-1] == "</details>"
    assert sum(1 for line in below if line.startswith("| `")) == TENSORS
    full = markdown_text(report, select_columns(report), all_rows=True)
    assert "<details>" not in full and sum(1 for line in full.splitlines() if line.startswith("| `")) == TENSORS


def test_markdown_budget_holds_with_many_groups(reports):
    """A model whose names share no pattern, with a plan and a failed gate: still 30 lines."""
    report = dict(reports["big"])
    report["tensors"] = [dict(r, name=r["name"].replace(".", "_") + f".{i}x") for i, r in enumerate(report["tensors"])]
    report["gate"] = {"max_error": 0.01, "passed": False, "failures": [r["name"] for r in report["tensors"][:9]]}
    report["plan"] = reports["digits"]["plan"]
    lines = markdown_text(report, select_columns(report)).splitlines()
    details = next(i for i, line in enumerate(lines) if line.startswith("<details>"))
    assert details <= MARKDOWN_LINES
    assert any(line.startswith("| ") and "more patterns |" in line for line in lines[:details])
    assert any("FAILED for" in line and "and 4 more" in line for line in lines[:details])


def _on_a_terminal(args: list[str], columns: int) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal of ``columns`` columns; exit code and output."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "sparsify", *args], stdout=slave, stderr=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    seen = b""
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return process.wait(timeout=60), seen.decode("utf-8").replace("\r\n", "\n")


@pytest.mark.parametrize("columns", [80, 120])
def test_a_real_terminal(tmp_path, columns):
    archive = tmp_path / "t.sparsify"
    model = write_transformer(tmp_path / "t.safetensors")
    sparsify.compress(model, archive, pipeline="quant:bits=4,group=32+zstd", jobs=1)
    code, screen = _on_a_terminal(["inspect", str(archive)], columns)
    assert code == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    assert "\x1b[1m" in screen  # bold headers: a terminal gets styles
    assert max(len(line) for line in plain.splitlines()) <= columns
    assert plain.splitlines()[0].startswith("archive ") and "the 5 worst of 49 lossy tensors:" in plain
    piped = subprocess.run([sys.executable, "-m", "sparsify", "inspect", str(archive)], capture_output=True, text=True)
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout


def test_report_lines_name_the_lossless_and_the_lossy(reports):
    lines = dict(summary.headline(reports["big"]))
    assert lines["lossless"] == f"{LOSSLESS} tensors, bit-exact"
    assert lines["lossy"].startswith(f"{TENSORS - LOSSLESS} of {TENSORS} tensors, ")


def test_cli_views(tmp_path):
    from test_cli import invoke

    archive = tmp_path / "t.sparsify"
    sparsify.compress(
        write_transformer(tmp_path / "t.safetensors"), archive, pipeline="quant:bits=4,group=32+zstd", jobs=1
    )
    default = invoke("inspect", str(archive))
    assert default.rc == 0 and default.stdout.startswith("archive ") and "the 5 worst" in default.stdout
    every = invoke("inspect", str(archive), "--all")
    assert every.stdout.startswith("tensor ") and every.stdout.count("\n") > TENSORS
    wide = invoke("inspect", str(archive), "--all", "--wide")
    assert wide.stdout.splitlines()[0].split()[:5] == ["tensor", "shape", "dtype", "pipeline", "original"]
    assert "cosine" in wide.stdout.splitlines()[0]
    picked = invoke("inspect", str(archive), "--all", "--columns", "cosine,ratio")
    assert picked.stdout.splitlines()[0].split() == ["tensor", "cosine", "ratio"]
    md = invoke("inspect", str(archive), "--markdown", "--columns", "snr")
    assert f"| worst {WORST} of {TENSORS - LOSSLESS} lossy | SNR dB |" in md.stdout
    r = invoke("inspect", str(archive), "--columns", "shape,nope")
    assert r.rc == 2 and "unknown column 'nope' in --columns (choose from tensor, file, shape" in r.stderr
    r = invoke("inspect", str(archive), "--columns", "shape", "--wide")
    assert r.rc == 2 and "choose one of --wide and --columns" in r.stderr
    r = invoke("compress", str(SAMPLE_FILES["fp32"]), "-o", str(tmp_path / "x.sparsify"), "--columns", "nope")
    assert r.rc == 2 and not (tmp_path / "x.sparsify").exists()  # refused before any work
    assert Path(archive).exists()
