"""The pipeline grammar, per-layer rules, rules files and the lossless defaults."""

from __future__ import annotations

import pytest

from sparsify.errors import UsageError
from sparsify.io.base import TensorInfo
from sparsify.methods.keep import Keep
from sparsify.methods.threshold import Threshold
from sparsify.pipeline import parse_pipeline
from sparsify.rules import choose, load_rules_file, parse_rule


def test_parse_and_canonical_text():
    p = parse_pipeline(" threshold : max_error = 0.05 + zstd ")
    assert p.methods == (Threshold(max_error=0.05),)
    assert str(p) == "threshold:max_error=0.05+zstd:level=3,bytegroup=true"
    assert not p.lossless and parse_pipeline("keep").lossless


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty pipeline; methods: keep, threshold, svd, lasso, ksvd, quant; value coders: fp32, fp16, bf16"),
        ("prune:sparsity=0.5", "unknown stage 'prune'; methods: keep, threshold, svd, lasso, ksvd, quant; value"),
        ("threshold", "threshold needs a budget: one of sparsity, threshold, max_error"),
        ("threshold:sparsity=0.5,max_error=0.1", "threshold: give one budget, not sparsity and max_error"),
        ("threshold:sparsity=1.5", "threshold: sparsity=1.5 is out of range; valid: 0 <= x <= 1"),
        ("threshold:sparsity=abc", "threshold: sparsity='abc' is not a number"),
        (
            "threshold:spars=0.5",
            "threshold: unknown parameter 'spars'; parameters: sparsity (0 <= x <= 1); threshold (0 <= x); "
            "max_error (0 <= x)",
        ),
        ("threshold:sparsity", "threshold: 'sparsity' is not key=value"),
        ("threshold:sparsity=0.5,sparsity=0.6", "threshold: parameter 'sparsity' given twice"),
        ("zstd", "has no decomposition method"),
        ("zstd+keep", "write the methods first, then a value coder"),
        ("keep+threshold:sparsity=0.5", "keep stores the tensor as it is and must be the only method"),
        ("keep+zstd+zstd", "each coder may appear once"),
        ("keep+zstd:level=40", "zstd: level=40 is out of range; valid: integer, 1 <= x <= 22"),
        ("keep+zstd:level=2.5", "zstd: level='2.5' is not an integer"),
        ("threshold:max_error=nan", "must be finite"),
    ],
)
def test_errors_list_the_valid_options(text, message):
    with pytest.raises(UsageError) as excinfo:
        parse_pipeline(text)
    assert message in str(excinfo.value)


def test_composition_of_methods():
    p = parse_pipeline("threshold:threshold=1.0+threshold:sparsity=0.5+zstd:level=9,bytegroup=true")
    assert len(p.methods) == 2 and str(p) == "threshold:threshold=1+threshold:sparsity=0.5+zstd:level=9,bytegroup=true"


def info(name, shape, dtype="F32"):
    return TensorInfo(name, dtype, shape)


DEFAULT = parse_pipeline("threshold:sparsity=0.9+zstd")


@pytest.mark.parametrize(
    "tensor, pipeline, reason",
    [
        (info("fc.weight", (64, 64)), "threshold:sparsity=0.9+zstd:level=3,bytegroup=true", "default"),
        (info("fc.bias", (4096,)), "keep+zstd:level=3,bytegroup=true", "1-D: lossless"),
        (info("scalar", ()), "keep+zstd:level=3,bytegroup=true", "0-D: lossless"),
        (info("small", (8, 8)), "keep+zstd:level=3,bytegroup=true", "< 1024 elements: lossless"),
        (info("ids", (64, 64), "I64"), "keep+zstd:level=3,bytegroup=true", "integer/bool: lossless"),
        (info("mask", (64, 64), "BOOL"), "keep+zstd:level=3,bytegroup=true", "integer/bool: lossless"),
        (info("c", (64, 64), "C64"), "keep+zstd:level=3,bytegroup=true", "C64: keep only"),
    ],
)
def test_defaults_store_small_1d_int_bool_losslessly(tensor, pipeline, reason):
    choice = choose(tensor, (), DEFAULT, 1024)
    assert (str(choice.pipeline), choice.reason) == (pipeline, reason)


def test_first_matching_rule_wins_and_names_small_tensors():
    rules = (parse_rule("*.bias=threshold:sparsity=0.5"), parse_rule("*=keep"))
    assert str(choose(info("fc.bias", (10,)), rules, DEFAULT, 1024).pipeline) == "threshold:sparsity=0.5"
    assert choose(info("fc.weight", (64, 64)), rules, DEFAULT, 1024).pipeline.methods == (Keep(),)


def test_rule_with_lossy_pipeline_on_keep_only_type_is_refused():
    with pytest.raises(UsageError, match="only keep can store; add a rule 'c=keep' before it"):
        choose(info("c", (64, 64), "C64"), (parse_rule("*=threshold:sparsity=0.5"),), DEFAULT, 1024)


@pytest.mark.parametrize("text", ["noequals", "=keep", "*.weight="])
def test_bad_rule(text):
    with pytest.raises(UsageError, match="is not GLOB=PIPELINE"):
        parse_rule(text)


def test_rules_file(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(
        'pipeline = "threshold:max_error=0.1"\nmin_size = 10\n[[rule]]\nmatch = "*.bias"\npipeline = "keep"\n'
    )
    loaded = load_rules_file(path)
    assert str(loaded.pipeline) == "threshold:max_error=0.1" and loaded.min_size == 10
    assert [r.text() for r in loaded.rules] == ["*.bias=keep"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("pipeline = 3", "'pipeline' must be a string"),
        ("[[rule]]\nmatch = '*'\n", "must have exactly 'match' and 'pipeline'"),
        ("colour = 'red'", "unknown key(s) colour"),
        ("min_size = -1", "'min_size' must be an integer >= 0"),
        ("this is not toml", "not valid TOML"),
        ("[[rule]]\nmatch = '*'\npipeline = 'nope'", "unknown stage 'nope'"),
    ],
)
def test_bad_rules_file(tmp_path, content, message):
    path = tmp_path / "rules.toml"
    path.write_text(content)
    with pytest.raises(UsageError) as excinfo:
        load_rules_file(path)
    assert message in str(excinfo.value)
