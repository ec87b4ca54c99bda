"""The report as data (docs/REPORT.md, schema version 3): every report validates against
docs/report.schema.json, the headline figures of the lossy tensors are what their definition says,
and the summary's groups and worst tensors are pure functions of the report."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_FILES
from golden.make_golden import FOLDERS, GOLDEN, OLDER, OLDER_FOLDERS
from model_folders import make_hf_folder
from report_schema import SCHEMA, checked, schema_errors
from safetensors.numpy import load_file
from transformer_model import LOSSLESS, TENSORS, write_transformer

import sparsify
from sparsify.report import summary
from sparsify.report.model import SCHEMA_VERSION

GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def transformer(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The 107-tensor checkpoint, its int4 archive and the compress report."""
    folder = tmp_path_factory.mktemp("transformer")
    source = write_transformer(folder / "model.safetensors")
    archive = folder / "model.sparsify"
    report = sparsify.compress(source, archive, pipeline="quant:bits=4,group=32+zstd", jobs=1)
    return source, archive, report


def test_schema_version_is_3():
    assert SCHEMA_VERSION == 3


@pytest.mark.parametrize("name", sorted([*GOLDEN, *OLDER, *FOLDERS, *OLDER_FOLDERS]))
def test_every_golden_archive_report_validates(name):
    """inspect of archives of every format version (1.0 to 3.0) and of folder archives (index 1.0
    and 2.0) prints a report of schema version 3 that the JSON Schema accepts."""
    report = checked(sparsify.inspect(GOLDEN_DIR / name))
    assert report["schema_version"] == 3
    assert report["totals"]["lossy_tensors"] + report["totals"]["lossless_tensors"] == report["totals"]["tensors"]


def test_compress_verify_and_folder_reports_validate(tmp_path, transformer):
    _, archive, report = transformer
    checked(report)
    checked(sparsify.verify(archive).as_dict())
    checked(sparsify.verify(archive, against=transformer[0], max_error=0.01).as_dict())
    folder = make_hf_folder(tmp_path / "hf", shards=2)
    out = tmp_path / "hf.sparsify"
    folder_report = checked(sparsify.compress(folder, out, pipeline="threshold:sparsity=0.5", max_error=0.2, jobs=1))
    assert folder_report["archive"]["folder"] is True and folder_report["gate"]["passed"] is False
    checked(sparsify.verify(out, against=folder).as_dict())
    planned = checked(sparsify.compress(SAMPLE_FILES["fp32"], tmp_path / "p.sparsify", target_size=30000, jobs=1))
    assert planned["plan"]["mode"] == "size"


def test_the_schema_refuses_what_is_not_documented(transformer):
    report = transformer[2]
    for change, where in [
        (lambda r: r["totals"].pop("lossy_tensors"), "missing 'lossy_tensors'"),
        (lambda r: r["totals"].update(surprise=1), "unexpected 'surprise'"),
        (lambda r: r["tensors"][0].update(rel_error="small"), "$.tensors[0].rel_error"),
        (lambda r: r.update(schema_version=2), "$.schema_version"),
        (lambda r: r["tensors"][1]["bytes_by_kind"].pop("scales"), "$.tensors[1].bytes_by_kind"),
        (lambda r: r["source"].update(format="folder"), "$.source.format"),
    ]:
        broken = copy.deepcopy(report)
        change(broken)
        errors = schema_errors(broken)
        assert any(where in e for e in errors), (where, errors)


def test_lossy_headline_is_the_error_of_the_lossy_tensors(transformer):
    """lossy_weighted_rel_error = sqrt(Σ‖ΔW‖² / Σ‖W‖²) over the tensors that are not bit-exact,
    recomputed here from the source and the decoded archive; the whole-model figure is diluted by
    the lossless LayerNorm weights."""
    source, archive, report = transformer
    totals = report["totals"]
    assert totals["tensors"] == TENSORS and totals["lossless_tensors"] == LOSSLESS
    assert totals["lossy_tensors"] == TENSORS - LOSSLESS
    originals = load_file(str(source))
    sq_error = sq_norm = all_norm = 0.0
    lossy_numel = 0
    with sparsify.open(archive) as opened:
        for row in report["tensors"]:
            w = originals[row["name"]].astype(np.float64)
            all_norm += float(np.sum(w * w))
            if row["exact"]:
                continue
            d = opened.get_tensor(row["name"]).astype(np.float64) - w
            sq_error += float(np.sum(d * d))
            sq_norm += float(np.sum(w * w))
            lossy_numel += w.size
    assert totals["lossy_numel"] == lossy_numel
    assert totals["lossy_weighted_rel_error"] == pytest.approx(math.sqrt(sq_error / sq_norm), rel=1e-9)
    assert totals["weighted_rel_error"] == pytest.approx(math.sqrt(sq_error / all_norm), rel=1e-9)
    assert totals["weighted_rel_error"] < 0.8 * totals["lossy_weighted_rel_error"]


def test_lossless_archive_has_no_lossy_tensors(tmp_path):
    totals = checked(sparsify.compress(SAMPLE_FILES["fp32"], tmp_path / "k.sparsify", jobs=1))["totals"]
    assert (totals["lossy_tensors"], totals["lossy_numel"], totals["lossy_weighted_rel_error"]) == (0, 0, 0.0)
    lines = dict(summary.headline(sparsify.inspect(tmp_path / "k.sparsify")))
    assert lines["lossless"] == "all 6 tensors, bit-exact" and "worst" not in lines and "lossy" not in lines


def test_headline_lines(transformer):
    report = transformer[2]
    t = report["totals"]
    lines = dict(summary.headline(report))
    assert list(lines)[:6] == ["archive", "size", "lossy", "lossless", "worst", "whole model"]
    share = 100 * t["lossy_numel"] / t["numel"]
    assert lines["lossy"] == (
        f"{TENSORS - LOSSLESS} of {TENSORS} tensors, {share:.1f} % of the weights: "
        f"weighted rel. error {t['lossy_weighted_rel_error']:.4g}"
    )
    assert lines["lossless"] == f"{LOSSLESS} tensors, bit-exact"
    assert lines["worst"] == f"{t['worst']['name']}: rel. error {t['worst']['rel_error']:.4g}"
    assert lines["whole model"] == f"weighted rel. error {t['weighted_rel_error']:.4g} over all {TENSORS} tensors"


def test_name_patterns():
    assert summary.name_pattern("encoder.layer.3.attention.self.query.weight") == (
        "encoder.layer.*.attention.self.query.weight"
    )
    assert summary.name_pattern("model.layers.10.mlp.experts.7.w1") == "model.layers.*.mlp.experts.*.w1"
    assert summary.name_pattern("blocks/12/conv2d_3/kernel:0") == "blocks/*/conv2d_3/kernel:0"
    assert summary.name_pattern("fc1.weight") == "fc1.weight"
    assert summary.name_pattern("0.weight") == "*.weight"


def test_groups_of_the_transformer(transformer):
    rows = transformer[2]["tensors"]
    groups = summary.groups(rows)
    lossy = [g for g in groups if g["members"] == 1]
    folded = groups[-1]
    assert [g["pattern"] for g in lossy] == [
        "embeddings.word_embeddings.weight",
        "encoder.layer.*.attention.output.dense.weight",
        "encoder.layer.*.attention.self.key.weight",
        "encoder.layer.*.attention.self.query.weight",
        "encoder.layer.*.attention.self.value.weight",
        "encoder.layer.*.intermediate.dense.weight",
        "encoder.layer.*.output.dense.weight",
    ]
    assert folded["pattern"] == "9 more patterns, all lossless" and folded["members"] == 9
    assert folded["tensors"] == LOSSLESS == folded["lossless"]
    assert sum(g["tensors"] for g in groups) == TENSORS
    assert sum(g["stored_bytes"] for g in groups) == transformer[2]["totals"]["parts_bytes"]
    query = lossy[3]
    members = [r for r in rows if summary.name_pattern(r["name"]) == query["pattern"]]
    assert query["tensors"] == 8 and query["rel_error_min"] == min(r["rel_error"] for r in members)
    assert query["rel_error_max"] == max(r["rel_error"] for r in members)
    assert query["ratio"] == sum(r["original_bytes"] for r in members) / sum(r["stored_bytes"] for r in members)
    assert query["bits_per_weight"] == 8 * query["stored_bytes"] / query["numel"]
    assert summary.error_range(query) == f"{query['rel_error_min']:.3g}–{query['rel_error_max']:.3g}"
    assert summary.error_range(folded) == "exact"
    few = summary.groups(rows, max_groups=3)
    assert [g["pattern"] for g in few[3:]] == ["4 more patterns", "9 more patterns, all lossless"]
    assert sum(g["tensors"] for g in few) == TENSORS


def _row(name: str, rel_error: float | None, exact: bool = False, pipeline: str = "threshold:sparsity=0.5") -> dict:
    return {
        "name": name,
        "rel_error": 0.0 if exact else rel_error,
        "exact": exact,
        "numel": 10,
        "original_bytes": 40,
        "stored_bytes": 20,
        "pipeline": "keep" if exact else pipeline,
        "reason": "default",
    }


def test_worst_puts_infinite_first_and_skips_exact_tensors():
    rows = [_row("a", 0.1), _row("b", None), _row("c", 0.3), _row("d", 0.0, exact=True), _row("e", 0.3)]
    assert [r["name"] for r in summary.worst(rows, 3)] == ["b", "c", "e"]
    assert [r["name"] for r in summary.worst(rows, 10)] == ["b", "c", "e", "a"]
    group = summary.group("x", rows)
    assert group["rel_error_max"] is None and group["rel_error_min"] == 0.0  # None: infinite
    assert summary.error_range(group) == "0–inf"


def test_pipelines_text():
    assert summary.pipelines_text(["keep+zstd:level=3,bytegroup=true"]) == "keep+zstd"
    steps = ["quant:step=0.01+zstd:level=3,bytegroup=true", "quant:step=0.02+zstd:level=3,bytegroup=true"]
    assert summary.pipelines_text(steps) == "quant:step=*+zstd"
    assert summary.pipelines_text(["quant:codebook=2+zstd", "quant:step=0.1+zstd"]) == "quant+zstd (2 settings)"
    mixed = ["threshold:sparsity=0.5", "quant:bits=4+zstd", "svd:rank=4", "keep"]
    assert summary.pipelines_text(mixed) == "threshold, quant+zstd +2 more"


def _documented(section: str) -> list[str]:
    """The field names in the first column of the table under ``section`` in docs/REPORT.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "REPORT.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    table = re.search(r"^\|.*?(?=\n\n|\Z)", body, re.M | re.S).group(0)  # the first table only
    return re.findall(r"^\| `([a-z_]+)` \|", table, re.M)


def test_docs_and_schema_list_the_same_fields():
    defs = SCHEMA["$defs"]
    assert _documented("`tensors[i]`") == [k for k in defs["tensor"]["properties"] if k != "file"]
    assert _documented("`totals`") == list(defs["totals"]["properties"])
    assert _documented("Top level") == [k for k in defs["report"]["properties"]]
    assert _documented("`verify --json`") == list(defs["verify_report"]["properties"])
    assert _documented("Folder archives") == ["files"]
    assert set(defs["folder_report"]["properties"]) == set(defs["report"]["properties"]) | {"files"}
