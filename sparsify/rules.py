"""Which pipeline each tensor gets: per-layer rules, the defaults of DESIGN 2.2, then the default.

Order of decision for a tensor:

1. the first rule whose glob matches its name (``--rule`` options in the order given, then the rules
   of a ``--rules`` TOML file);
2. otherwise, stored losslessly (``keep`` plus the default pipeline's coders) if it is 1-D, an
   integer or bool tensor, smaller than ``min_size`` elements, or of a type only keep can store;
3. otherwise the default pipeline.

Globs use :func:`fnmatch.fnmatchcase` (``*`` also crosses ``/`` and ``.``).
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

from sparsify import dtypes
from sparsify.errors import InputError, UsageError
from sparsify.io.base import TensorInfo
from sparsify.methods.keep import Keep
from sparsify.pipeline import Pipeline, parse_pipeline

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PIPELINE = "keep+zstd"
DEFAULT_MIN_SIZE = 1024


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a glob over tensor names) selects ``pipeline``; ``origin`` says where it came from."""

    pattern: str
    pipeline: Pipeline
    origin: str

    def text(self) -> str:
        return f"{self.pattern}={self.pipeline}"


@dataclass(frozen=True)
class Choice:
    """The pipeline chosen for one tensor, and why (shown in the report)."""

    pipeline: Pipeline
    reason: str


@dataclass(frozen=True)
class RulesFile:
    """A parsed ``--rules`` TOML file."""

    rules: tuple[Rule, ...]
    pipeline: Pipeline | None
    min_size: int | None


def parse_rule(text: str, origin: str = "--rule") -> Rule:
    """``GLOB=PIPELINE`` (split at the first ``=``)."""
    pattern, sep, pipeline = text.partition("=")
    if not sep or not pattern.strip() or not pipeline.strip():
        raise UsageError(f"{origin} {text!r} is not GLOB=PIPELINE (e.g. '*.weight=threshold:sparsity=0.9')")
    return Rule(pattern.strip(), parse_pipeline(pipeline.strip()), origin)


def load_rules_file(path: Path) -> RulesFile:
    """Read a rules file::

    pipeline = "threshold:max_error=0.05"   # optional default pipeline
    min_size = 1024                          # optional
    [[rule]]
    match = "*.bias"
    pipeline = "keep"
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read rules file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"pipeline", "min_size", "rule"}
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: pipeline, min_size, rule")
    rules = []
    if not isinstance(data.get("rule", []), list):
        raise UsageError(f"{path}: 'rule' must be a list of [[rule]] tables")
    for i, entry in enumerate(data.get("rule", [])):
        if not isinstance(entry, dict) or set(entry) != {"match", "pipeline"}:
            raise UsageError(f"{path}: [[rule]] #{i + 1} must have exactly 'match' and 'pipeline'")
        if not isinstance(entry["match"], str) or not isinstance(entry["pipeline"], str):
            raise UsageError(f"{path}: [[rule]] #{i + 1}: 'match' and 'pipeline' must be strings")
        rules.append(Rule(entry["match"], parse_pipeline(entry["pipeline"]), str(path)))
    pipeline = data.get("pipeline")
    if pipeline is not None and not isinstance(pipeline, str):
        raise UsageError(f"{path}: 'pipeline' must be a string")
    min_size = data.get("min_size")
    if min_size is not None and (type(min_size) is not int or min_size < 0):
        raise UsageError(f"{path}: 'min_size' must be an integer >= 0")
    return RulesFile(tuple(rules), parse_pipeline(pipeline) if pipeline else None, min_size)


def choose(info: TensorInfo, rules: tuple[Rule, ...], default: Pipeline, min_size: int) -> Choice:
    """The pipeline for ``info`` and the reason, in the order of the module docstring."""
    lossless = default.with_methods((Keep(),))
    for rule in rules:
        if fnmatch.fnmatchcase(info.name, rule.pattern):
            if not rule.pipeline.lossless and not dtypes.is_real_numeric(info.dtype):
                raise UsageError(
                    f"rule {rule.text()!r} ({rule.origin}) selects a lossy pipeline for {info.name!r}, "
                    f"whose type {info.dtype} only keep can store; add a rule '{info.name}=keep' before it"
                )
            return Choice(rule.pipeline, f"rule {rule.pattern}")
    if default.lossless:
        return Choice(default, "default")
    if not dtypes.is_real_numeric(info.dtype):
        return Choice(lossless, f"{info.dtype}: keep only")
    if not dtypes.is_float(info.dtype):
        return Choice(lossless, "integer/bool: lossless")
    if len(info.shape) < 2:
        return Choice(lossless, f"{len(info.shape)}-D: lossless")
    if info.numel < min_size:
        return Choice(lossless, f"< {min_size} elements: lossless")
    return Choice(default, "default")
