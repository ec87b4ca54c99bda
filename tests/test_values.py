"""Value coders (fp32/fp16/bf16/int8/int4/codebook) behind every value-coded method, on every float type."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from checkers import check_config_roundtrip, check_deterministic, check_roundtrip, check_usage_error, read_tensors
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save_file

from sparsify.archive import Archive
from sparsify.cli import run
from sparsify.errors import CorruptArchiveError
from sparsify.methods import VALUE_CODERS
from sparsify.methods.values import (
    decode_codebook,
    decode_int,
    decode_parts,
    encode_codebook,
    encode_int,
    encode_parts,
)
from sparsify.pipeline import parse_pipeline, resolve_config
from sparsify.quantize import dequantize, quantize

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
CODERS = ["fp32", "fp16", "bf16", "int8", "int4", "codebook"]
METHODS = ["threshold:sparsity=0.5", "svd:rank=4", "ksvd:atoms=16,nnz=2"]


def coder(name: str, **given):
    cls = VALUE_CODERS[name]
    return cls(**resolve_config(cls, given))


def write(path, dtype, seed=0, shape=(48, 40)):
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    save_file({"w": w}, str(path))
    return w


def stage_record(archive_path, stage=0) -> dict:
    with Archive(archive_path) as archive:
        return archive.tensors[0]["stages"][stage]


@pytest.fixture(scope="module")
def uncoded(tmp_path_factory):
    """rel. error and decoded tensor of each method without a value coder, per dtype."""
    out = {}
    for dtype_name, dtype in DTYPES.items():
        tmp = tmp_path_factory.mktemp(dtype_name)
        source = tmp / "m.safetensors"
        write(source, dtype)
        for method in METHODS:
            report = check_roundtrip(source, tmp, method, min_size=0)
            out[dtype_name, method] = (report["tensors"][0], read_tensors(tmp / "restored-m.safetensors")["w"])
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_every_coder_on_every_dtype(tmp_path, uncoded, method, dtype_name):
    source = tmp_path / "m.safetensors"
    w = write(source, DTYPES[dtype_name]).astype(np.float64)
    base_row, base = uncoded[dtype_name, method]
    coding = {}  # the coding's own effect: || decoded - decoded without coder || / ||W||
    stored = {}
    for name in CODERS:
        pipeline = f"{method}+{name}+zstd"
        row = check_roundtrip(source, tmp_path, pipeline, min_size=0)["tensors"][0]
        decoded = read_tensors(tmp_path / "restored-m.safetensors")["w"].astype(np.float64)
        coding[name] = float(np.linalg.norm(decoded - base.astype(np.float64)) / np.linalg.norm(w))
        stored[name] = row["bits_by_kind"]["values"] + row["bits_by_kind"]["dictionary"] + row["bits_by_kind"]["scales"]
        record = stage_record(tmp_path / "m.safetensors.sparsify")
        assert record["values"], pipeline
        for part, value_record in record["values"].items():
            assert value_record["coder"] == name and "skipped" not in value_record, (pipeline, part)
            assert all(f"{part}.{sub}" in record["parts"] for sub in value_record["parts"])
        assert row["pipeline"].startswith(method) and not row["exact"]
    # Widening casts, and casts to the type the parts already have, store the same values.
    lossless = {"F32": ["fp32"], "F16": ["fp32", "fp16"], "BF16": ["fp32", "bf16", "fp16"], "F64": []}[dtype_name]
    for name in lossless:
        assert coding[name] == 0, name
    if dtype_name == "F64":
        assert 0 < coding["fp32"] < 1e-6
    assert coding["fp32"] <= coding["fp16"] <= coding["int8"] < coding["int4"]
    assert coding["bf16"] < coding["int4"] and coding["codebook"] < 0.2
    assert 0 < coding["int4"] < 0.1
    # bits for the coded parts (scales and codebooks included): int4 < int8 < fp16 < fp32
    assert stored["int4"] < stored["int8"] < stored["fp16"] <= stored["fp32"] * 1.03  # a few bytes of coder overhead
    assert stored["codebook"] < stored["int8"]
    assert base_row["rel_error"] > 0


def test_fp32_on_f32_threshold_keeps_bit_exact_values(tmp_path):
    source = tmp_path / "m.safetensors"
    w = write(source, np.float32)
    check_roundtrip(source, tmp_path, "threshold:sparsity=0.5+fp32+zstd", min_size=0)
    restored = read_tensors(tmp_path / "restored-m.safetensors")["w"]
    kept = restored != 0
    assert kept.sum() == w.size // 2 and np.array_equal(restored[kept], w[kept])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("name", ["int8", "int4", "codebook", "fp16", "bf16"])
def test_nonfinite_parts_are_stored_as_they_are(tmp_path, name):
    source = tmp_path / "m.safetensors"
    w = np.random.default_rng(1).standard_normal((40, 40)).astype(np.float32)
    w[0, 0], w[1, 1], w[2, 2] = np.inf, np.nan, -np.inf
    if name in ("fp16",):
        w[3, 3] = 1e6  # finite, overflows float16
    save_file({"w": w}, str(source))
    check_roundtrip(source, tmp_path, f"threshold:sparsity=0.5+{name}+zstd", min_size=0)
    record = stage_record(tmp_path / "m.safetensors.sparsify")
    skipped = name != "bf16"  # bf16 keeps inf and nan, and its range is float32's
    assert ("skipped" in record["values"]["values"]) == skipped
    assert record["values"]["values"]["coder"] == name
    assert ("values" in record["parts"]) == skipped
    restored = read_tensors(tmp_path / "restored-m.safetensors")["w"]
    assert restored[0, 0] == np.inf and np.isnan(restored[1, 1]) and restored[2, 2] == -np.inf
    if skipped:
        kept = restored != 0
        assert np.array_equal(restored[kept], w[kept], equal_nan=True)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("name", CODERS)
def test_encode_parts_records(name):
    parts = {
        "finite": np.linspace(-2, 3, 60, dtype=np.float32).reshape(6, 10),
        # nan stops the integer and codebook coders; 1e39 overflows every cast
        "bad": np.array([1.0, np.nan, 1e39]) if name in ("int8", "int4", "codebook") else np.array([1.0, 1e39]),
        "other": np.arange(4, dtype=np.uint8),
    }
    stored, records = encode_parts(coder(name), parts, ("finite", "bad"), seed=0)
    assert np.array_equal(stored["other"], parts["other"]) and "other" not in records
    assert records["bad"] == {"coder": name, "skipped": "values cannot be represented (non-finite)"}
    assert np.array_equal(stored["bad"], parts["bad"], equal_nan=True)
    assert records["finite"]["dtype"] == "F32" and records["finite"]["shape"] == [6, 10]
    assert {k for k in stored if k.startswith("finite.")} == {f"finite.{s}" for s in records["finite"]["parts"]}
    json.dumps(records)
    decoded = decode_parts(stored, records, VALUE_CODERS)
    assert set(decoded) == set(parts)
    assert decoded["finite"].dtype == np.float32 and decoded["finite"].shape == (6, 10)
    assert np.abs(decoded["finite"] - parts["finite"]).max() <= {"int4": 0.25, "codebook": 0.25}.get(name, 0.02)


@pytest.mark.parametrize(
    "change",
    [
        {"coder": "int3"},
        {"config": {"group": -1}},
        {"config": {"k": 1000}},
        {"dtype": "F4"},  # packed sub-byte type: not numeric here
        {"parts": ["q", "missing"]},
        {"shape": ["x"]},
    ],
)
def test_decode_parts_rejects_bad_records(change):
    parts = {"finite": np.linspace(-2, 3, 60, dtype=np.float32)}
    stored, records = encode_parts(coder("int8"), parts, ("finite",), seed=0)
    with pytest.raises(CorruptArchiveError):
        decode_parts(stored, {"finite": {**records["finite"], **change}}, VALUE_CODERS)


@settings(max_examples=100, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=9),
        elements=st.floats(-1e3, 1e3, allow_subnormal=False),
    ),
    bits=st.sampled_from([4, 8]),
    group=st.integers(0, 12),
    symmetric=st.booleans(),
)
def test_encode_int_decodes_to_the_quantised_values(values, bits, group, symmetric):
    parts, resolved = encode_int(values, bits, group, symmetric)
    decoded = decode_int(parts, resolved, values.shape)
    assert decoded.shape == values.shape
    reference = dequantize(quantize(values, bits, group, symmetric), bits, group)
    assert np.array_equal(decoded.reshape(-1), reference.reshape(-1))
    book_parts, book_resolved = encode_codebook(values, 16, seed=0)
    book = decode_codebook(book_parts, book_resolved, values.shape)
    assert book.shape == values.shape and np.all(np.isin(book, book_parts["codebook"].astype(np.float64)))


@pytest.mark.parametrize("dtype", ["nonsense", "O"])
def test_decode_parts_unknown_dtype(dtype):
    stored, records = encode_parts(coder("int8"), {"p": np.linspace(-2, 3, 60)}, ("p",), seed=0)
    with pytest.raises(CorruptArchiveError):
        decode_parts(stored, {"p": {**records["p"], "dtype": dtype}}, VALUE_CODERS)


def test_int_and_codebook_hostile_parts():
    values = np.linspace(-1, 1, 40).reshape(4, 10)
    parts, resolved = encode_int(values, 4, 4, False)
    for bad_parts, bad_resolved in [
        ({**parts, "q": parts["q"][:-1]}, resolved),
        ({**parts, "zero": parts["zero"][:-1]}, resolved),
        ({k: v for k, v in parts.items() if k != "scale"}, resolved),
        ({k: v for k, v in parts.items() if k != "q"}, resolved),
        (parts, {**resolved, "rows": 3}),
        (parts, {**resolved, "bits": 0}),
    ]:
        with pytest.raises(CorruptArchiveError):
            decode_int(bad_parts, bad_resolved, values.shape)
    parts, resolved = encode_codebook(values, 4, seed=0)
    for bad_parts, bad_resolved in [
        ({**parts, "codebook": parts["codebook"][:3]}, resolved),
        ({**parts, "index": parts["index"][:-1]}, resolved),
        ({"index": parts["index"]}, resolved),
        (parts, {**resolved, "bits": 1}),
    ]:
        with pytest.raises(CorruptArchiveError):
            decode_codebook(bad_parts, bad_resolved, values.shape)


@pytest.mark.parametrize(
    "text, message",
    [
        ("keep+int8", "keep is lossless and takes no value coder"),
        ("keep+fp16+zstd", "keep is lossless"),
        ("quant:bits=8+int8", "int8 has no float parts to code"),
        ("quant+codebook", "codebook has no float parts"),
        ("threshold:sparsity=0.5+int8+int4", "at most one value coder, not int8 and int4"),
        ("threshold:sparsity=0.5+zstd+int8", "write the methods first, then a value coder"),
        ("int8+threshold:sparsity=0.5", "write the methods first"),
        ("int8", "no decomposition method"),
        ("threshold:sparsity=0.5+int4:group=-1", "int4"),
        ("threshold:sparsity=0.5+codebook:k=1", "2 <= x <= 256"),
        ("threshold:sparsity=0.5+int9", "value coders: fp32, fp16, bf16, int8, int4, codebook"),
    ],
)
def test_pipeline_validation(text, message):
    check_usage_error(text, message)


def test_value_coder_in_a_mixed_pipeline():
    pipeline = parse_pipeline("svd:rank=8+quant:bits=4+int8+zstd")  # quant is not value coded, svd is
    assert pipeline.values == coder("int8") and [m.name for m in pipeline.methods] == ["svd", "quant"]


@pytest.mark.parametrize(
    "text",
    [
        "threshold:sparsity=0.7+int4:group=128+zstd",
        "svd:rank=4+int8:group=32,symmetric=false",
        "ksvd:atoms=16,nnz=2+codebook:k=8+zstd",
        "threshold:max_error=0.1+bf16",
    ],
)
def test_config_roundtrip(text):
    check_config_roundtrip(text)


def test_methods_lists_value_coders(capsys):
    assert run(["methods"]) == 0
    text = capsys.readouterr().out
    for name, cls in VALUE_CODERS.items():
        assert f"{name}  (value coder) - {cls.summary}" in text
    assert run(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data if d["kind"] == "value coder"] == CODERS


@pytest.mark.parametrize(
    "pipeline", ["threshold:sparsity=0.5+codebook+zstd", "svd:rank=8+int4+zstd", "ksvd:atoms=16,nnz=2+int8"]
)
def test_deterministic(fp32_model, tmp_path, pipeline):
    check_deterministic(fp32_model, tmp_path, pipeline)


def test_sample_sizes_shrink_with_bits(fp32_model, tmp_path):
    totals = {}
    for name in ("fp32", "fp16", "int8", "int4"):
        report = check_roundtrip(fp32_model, tmp_path, f"threshold:sparsity=0.5+{name}")
        totals[name] = report["totals"]["bytes_by_kind"]["values"] + report["totals"]["bytes_by_kind"]["scales"]
    assert totals["int4"] < totals["int8"] < totals["fp16"] < totals["fp32"]
    assert totals["int8"] < 0.3 * totals["fp32"] and totals["int4"] < 0.6 * totals["int8"]


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_rank_zero_factors(tmp_path, name):
    source = tmp_path / "m.safetensors"
    write(source, np.float32)
    report = check_roundtrip(source, tmp_path, f"svd:max_error=1.0+{name}", min_size=0)
    assert report["tensors"][0]["rel_error"] == 1.0
