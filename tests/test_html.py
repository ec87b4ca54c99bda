"""The HTML report (``--html``, sparsify.report.html): one self-contained file (nothing loaded from
anywhere, the plot embedded), the report's data embedded too, names escaped, a note instead of the
plots without matplotlib, never over an existing file without --force; and in a real headless
Chromium: it loads, the plot shows, the table sorts and filters.

Set SPARSIFY_SCREENSHOTS=DIR to keep the browser's screenshots in DIR."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from html import escape
from pathlib import Path

import pytest
from browser import Browser, find_chromium
from conftest import SAMPLE_FILES
from report_schema import checked
from test_cli import invoke
from transformer_model import TENSORS, write_transformer

import sparsify
from sparsify.report.html import NO_CURVES, html_document, write_html
from sparsify.report.model import finite


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """HTML reports: ``compress`` of the digits MLP at ratio 8 (with the rate-distortion curves),
    ``inspect`` of the 107-tensor transformer, ``verify --against`` of the digits archive."""
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("html")
    digits = tmp / "digits.sparsify"
    r = invoke(
        "compress",
        str(SAMPLE_FILES["fp32"]),
        "-o",
        str(digits),
        "--target-ratio",
        "8",
        "--html",
        str(tmp / "compress.html"),
        "-q",
    )
    assert r.rc == 0, r.output
    model = write_transformer(tmp / "transformer.safetensors")
    sparsify.compress(model, tmp / "transformer.sparsify", pipeline="quant:bits=4,group=32+zstd", jobs=1)
    r = invoke("inspect", str(tmp / "transformer.sparsify"), "--html", str(tmp / "inspect.html"))
    assert r.rc == 0, r.output
    r = invoke("verify", str(digits), "--against", str(SAMPLE_FILES["fp32"]), "--html", str(tmp / "verify.html"), "-q")
    assert r.rc == 0, r.output
    return {name: tmp / f"{name}.html" for name in ("compress", "inspect", "verify")} | {"digits": digits}


def embedded(text: str) -> dict:
    match = re.search(r'<script type="application/json" id="sparsify-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def test_self_contained(pages):
    for name in ("compress", "inspect", "verify"):
        text = pages[name].read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
        assert "<link" not in text and "@import" not in text and "url(" not in text
        assert not re.search(r"https?://", text), name  # nothing to fetch, not even a font
        sources = re.findall(r'\bsrc="([^"]*)"', text)
        assert all(s.startswith("data:image/png;base64,") for s in sources), sources
        assert len(sources) == 1  # the plot
        data = embedded(text)
        checked(data["report"])
        rows = re.findall(r"<tr data-lossy=", text)
        assert len(rows) == len(data["report"]["tensors"])


def test_contents(pages):
    compress = pages["compress"].read_text(encoding="utf-8")
    report = embedded(compress)["report"]
    assert report == finite(sparsify.inspect(pages["digits"], command="compress"))
    assert "<h1>sparsify compress: digits_mlp.safetensors</h1>" in compress
    assert '<span class="badge ok">target ratio: met</span>' in compress
    assert escape(NO_CURVES) not in compress  # compress measured the curves
    assert "<dt>lossy</dt><dd>3 of 6 tensors" in compress and "<dt>whole model</dt>" in compress
    assert 'id="groups"' not in compress  # no name pattern repeats in the digits MLP
    inspect = pages["inspect"].read_text(encoding="utf-8")
    assert escape(NO_CURVES) in inspect and 'id="groups"' in inspect
    assert "<td>encoder.layer.*.attention.self.query.weight</td>" in inspect
    verify = pages["verify"].read_text(encoding="utf-8")
    assert "<h1>sparsify verify: digits_mlp.safetensors</h1>" in verify
    assert '<span class="badge ok">verify: OK</span>' in verify and ">verified err</th>" in verify
    assert embedded(verify)["verification"]["checked"] == 6


def test_names_are_escaped_and_json_cannot_end_the_script():
    report = sparsify.inspect(Path(__file__).parent / "golden" / "digits_mlp.threshold.sparsify")
    report["tensors"][0]["name"] = "</script><script>alert(1)</script>"
    report["source"]["name"] = "<b>model</b>"
    text = html_document(report)
    assert "<script>alert(1)" not in text and "<b>model</b>" not in text
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert embedded(text)["report"]["tensors"][0]["name"] == "</script><script>alert(1)</script>"


def test_without_matplotlib_the_report_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "r.html"
    write_html(out, sparsify.inspect(Path(__file__).parent / "golden" / "digits_mlp.quant4.sparsify"))
    text = out.read_text(encoding="utf-8")
    assert "No plots: plotting needs matplotlib: pip install &#x27;sparsify[plot]&#x27;." in text
    assert "<img" not in text and 'id="tensor-table"' in text


def test_never_over_an_existing_file_without_force(tmp_path):
    model = tmp_path / "m.safetensors"
    shutil.copy(SAMPLE_FILES["fp32"], model)
    page = tmp_path / "r.html"
    page.write_text("precious")
    r = invoke("compress", str(model), "--html", str(page))
    assert r.rc == 4 and r.stderr == f"sparsify: error: {page}: already exists (use --force to overwrite)\n"
    assert page.read_text() == "precious" and not (tmp_path / "m.sparsify").exists()  # refused before any work
    r = invoke("compress", str(model), "--html", str(model), "--force")
    assert r.rc == 4 and "is the input file" in r.stderr
    r = invoke("compress", str(model), "--html", str(page), "--force", "-q")
    assert r.rc == 0 and page.read_text().startswith("<!DOCTYPE html>")
    archive = tmp_path / "m.sparsify"
    for args in (["inspect", str(archive)], ["verify", str(archive)]):
        page.write_text("precious")
        r = invoke(*args, "--html", str(page))
        assert r.rc == 4 and "already exists" in r.stderr and page.read_text() == "precious"
        assert invoke(*args, "--html", str(page), "--force").rc == 0
        assert page.read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob(".*tmp*"))


def test_folder_archive_html(tmp_path):
    from model_folders import make_hf_folder

    folder = make_hf_folder(tmp_path / "hf", shards=2)
    out = tmp_path / "hf.sparsify"
    sparsify.compress(folder, out, pipeline="threshold:sparsity=0.5", jobs=1)
    page = tmp_path / "hf.html"
    assert invoke("inspect", str(out), "--html", str(page)).rc == 0
    text = page.read_text(encoding="utf-8")
    assert ">file</th>" in text and "model-00001-of-00002.safetensors" in text
    assert embedded(text)["report"]["archive"]["folder"] is True


CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_in_a_headless_browser(pages, tmp_path):
    """Load the reports in Chromium: nothing but the file and its embedded image is requested, the
    plot is decoded, the per-tensor table sorts by a column both ways (numbers as numbers) and the
    filter and the lossy-only box hide rows; screenshots are taken."""
    keep = os.environ.get("SPARSIFY_SCREENSHOTS")
    with Browser(CHROMIUM) as browser:
        browser.open(pages["compress"].as_uri())
        assert browser.evaluate("document.title") == "sparsify compress: digits_mlp.safetensors"
        width, height = browser.evaluate(
            "[document.getElementById('plot').naturalWidth, document.getElementById('plot').naturalHeight]"
        )
        assert (width, height) == (1440, 1080)
        assert browser.evaluate("document.getElementById('plot').getBoundingClientRect().width") > 600
        report = embedded(pages["compress"].read_text(encoding="utf-8"))["report"]

        heads = "document.querySelectorAll('#tensor-table th')"

        def column(header: str) -> int:
            return browser.evaluate(f"Array.from({heads}).findIndex(th => th.textContent === {header!r})")

        rows = "Array.from(document.querySelectorAll('#tensor-table tbody tr'))"
        names = f"{rows}.filter(r => !r.hidden).map(r => r.cells[1].textContent)"
        error = column("rel. err")
        browser.evaluate(f"{heads}[{error}].click()")
        assert browser.evaluate(f"{heads}[{error}].getAttribute('aria-sort')") == "ascending"
        ascending = [r["name"] for r in sorted(report["tensors"], key=lambda r: r["rel_error"])]
        assert browser.evaluate(names)[-1] == ascending[-1] == report["totals"]["worst"]["name"]
        browser.evaluate(f"{heads}[{error}].click()")
        assert browser.evaluate(names)[0] == report["totals"]["worst"]["name"]
        stored = column("stored")
        browser.evaluate(f"{heads}[{stored}].click()")
        by_size = [r["name"] for r in sorted(report["tensors"], key=lambda r: r["stored_bytes"])]
        assert browser.evaluate(names) == by_size  # "896 B" < "1.0 KiB": sorted by bytes, not by text
        shot = browser.screenshot()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        (tmp_path / "compress.png").write_bytes(shot)

        browser.open(pages["inspect"].as_uri())
        assert browser.evaluate("document.getElementById('shown').textContent") == f"{TENSORS} of {TENSORS} tensors"
        browser.evaluate(
            "var f = document.getElementById('filter'); f.value = 'layer.3 query'; f.dispatchEvent(new Event('input'))"
        )
        assert browser.evaluate(names) == [
            "encoder.layer.3.attention.self.query.bias",
            "encoder.layer.3.attention.self.query.weight",
        ]
        browser.evaluate("var l = document.getElementById('lossy-only'); l.click()")
        assert browser.evaluate(names) == ["encoder.layer.3.attention.self.query.weight"]
        assert browser.evaluate("document.getElementById('shown').textContent") == f"1 of {TENSORS} tensors"
        (tmp_path / "inspect.png").write_bytes(browser.screenshot(full_page=True))
        requested = browser.requests
    assert requested and all(url.startswith(("file://", "data:")) for url in requested), requested
    if keep:
        for shot in tmp_path.glob("*.png"):
            shutil.copy(shot, Path(keep) / shot.name)
