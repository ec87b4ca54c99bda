"""Compress options, validated before any file is touched."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsify.errors import UsageError
from sparsify.pipeline import Pipeline, parse_pipeline
from sparsify.rules import DEFAULT_MIN_SIZE, DEFAULT_PIPELINE, Rule, load_rules_file, parse_rule

if TYPE_CHECKING:
    from sparsify.importance import ImportanceFile
    from sparsify.io.base import TensorInfo

AUTO = "auto"
# What ``-p auto`` hands to the rules for the tensors it does not plan (their lossless coders), and
# what marks the tensors it plans (any lossy pipeline would do).
_AUTO_PLACEHOLDER = "quant:bits=8+zstd"


def canonical_number(value: float) -> int | float:
    """``value`` as the manifest records it: an integral value as an int (``10`` from the CLI's 10.0
    and the API's 10 alike), so that the archive's bytes do not depend on how the caller typed it."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


@dataclass(frozen=True)
class Options:
    """Validated compress options (see :func:`compress`)."""

    pipeline: Pipeline
    rules: tuple[Rule, ...]
    min_size: int
    max_error: float | None
    seed: int
    auto: bool = False
    target_ratio: float | None = None
    target_size: int | None = None
    target_error: float | None = None
    objective: str = "sse"  # what a size target minimises (sparsify.ratecontrol.OBJECTIVES)
    importance: str | None = None  # the importance file as given (objective "importance")
    importance_file: ImportanceFile | None = None  # once checked against the model (with_importance)

    @property
    def target(self) -> dict[str, float] | None:
        """The whole-model target, if any: ``{"ratio": R}``, ``{"size": B}`` or ``{"error": E}``."""
        for key, value in (("ratio", self.target_ratio), ("size", self.target_size), ("error", self.target_error)):
            if value is not None:
                return {key: canonical_number(value)}
        return None

    @property
    def recorded_max_error(self) -> int | float | None:
        """``max_error`` as the manifest records it (:func:`canonical_number`)."""
        return None if self.max_error is None else canonical_number(self.max_error)

    def as_manifest(self) -> dict[str, Any]:
        record = {
            "pipeline": AUTO if self.auto else str(self.pipeline),
            "rules": [{"match": r.pattern, "pipeline": str(r.pipeline), "origin": r.origin} for r in self.rules],
            "min_size": self.min_size,
            "max_error": self.recorded_max_error,
            "seed": self.seed,
            "target": self.target,
        }
        if self.objective != "sse":  # absent: the default (archives without it read as before)
            record["objective"] = self.objective
        if self.importance_file is not None:
            record["importance"] = {"file": Path(self.importance).name, "checksum": self.importance_file.checksum}
        return record


def resolve_options(
    pipeline: str | None = None,
    rules: Iterable[str] = (),
    rules_file: str | Path | None = None,
    min_size: int | None = None,
    max_error: float | None = None,
    seed: int = 0,
    target_ratio: float | None = None,
    target_size: int | None = None,
    target_error: float | None = None,
    objective: str | None = None,
    importance: str | Path | None = None,
) -> Options:
    """Parse and validate compress options; UsageError before any file is touched."""
    from sparsify.ratecontrol import IMPORTANCE_OBJECTIVE, OBJECTIVES

    if objective is not None and objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    if importance is not None:
        if objective not in (None, "sse"):
            raise UsageError(f"--importance sets what a target minimises; drop --objective {objective}")
        if target_ratio is None and target_size is None:
            raise UsageError("--importance applies to a size target (--target-ratio or --target-size)")
        objective = IMPORTANCE_OBJECTIVE
    objective = objective or "sse"
    parsed_rules = tuple(parse_rule(r) for r in rules)
    file = load_rules_file(Path(rules_file)) if rules_file is not None else None
    if file is not None:
        parsed_rules += file.rules
    text = pipeline or (str(file.pipeline) if file and file.pipeline else DEFAULT_PIPELINE)
    if min_size is None:
        min_size = file.min_size if file and file.min_size is not None else DEFAULT_MIN_SIZE
    if min_size < 0:
        raise UsageError(f"min_size must be >= 0, not {min_size}")
    if max_error is not None and not max_error >= 0:
        raise UsageError(f"max_error must be >= 0, not {max_error}")
    targets = [
        n
        for n, v in (("target_ratio", target_ratio), ("target_size", target_size), ("target_error", target_error))
        if v is not None
    ]
    if len(targets) > 1:
        raise UsageError(f"give one target, not {' and '.join(targets)}")
    if target_ratio is not None and not (math.isfinite(target_ratio) and target_ratio > 0):
        raise UsageError(f"target_ratio must be a number > 0, not {target_ratio}")
    if target_size is not None and not target_size > 0:
        raise UsageError(f"target_size must be > 0 bytes, not {target_size}")
    if target_error is not None and not (math.isfinite(target_error) and target_error >= 0):
        raise UsageError(f"target_error must be >= 0, not {target_error}")
    if objective != "sse" and target_ratio is None and target_size is None:
        raise UsageError(
            f"--objective {objective} applies to a size target (--target-ratio or --target-size); "
            "--target-error bounds the whole model's squared error itself"
        )
    auto = text.strip() == AUTO
    if targets and not auto and pipeline is not None:
        raise UsageError(f"a target chooses each tensor's pipeline itself: use -p auto (or no -p), not {pipeline!r}")
    auto = auto or bool(targets)
    if auto and not targets and max_error is None:
        raise UsageError(
            "-p auto needs a bound or a target: --max-error E, --target-ratio R, --target-size B or --target-error E"
        )
    parsed = parse_pipeline(_AUTO_PLACEHOLDER if auto else text)
    for given in (parsed, *(r.pipeline for r in parsed_rules)):
        if given.weighted or given.feedback:
            what = "weighted=true takes its steps" if given.weighted else "feedback=true takes its input moments"
            raise UsageError(
                f"{given}: quant {what} from an importance file; the rate control "
                "chooses it with --importance FILE and --target-ratio or --target-size"
            )
    return Options(
        parsed,
        parsed_rules,
        int(min_size),
        max_error,
        int(seed),
        auto,
        target_ratio,
        None if target_size is None else int(target_size),
        target_error,
        objective,
        None if importance is None else str(importance),
    )


def with_importance(options: Options, tensors: dict[str, TensorInfo]) -> Options:
    """``options`` with their importance file checked against the model's ``tensors`` (by name)
    and checksummed (InputError if it does not fit); unchanged without one."""
    if options.importance is None:
        return options
    from sparsify.importance import check_importance

    return replace(options, importance_file=check_importance(options.importance, tensors))
