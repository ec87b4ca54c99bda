"""The pipeline grammar: parse, validate and print ``method:key=value,...`` stages joined by ``+``.

    pipeline := stage ("+" stage)*
    stage    := name [":" key "=" value ("," key "=" value)*]

Decomposition methods come first and add up (each encodes the residual the earlier ones leave); then
at most one value coder (``fp16``, ``int8``, ``int4``, ``codebook`` ...), which stores the methods'
float parts; byte coders (``zstd``) come last and apply to every stored part. A lossless method
(``keep``) must be the only method and takes no value coder. Every error is a :class:`UsageError`
that lists the valid choices.

>>> str(parse_pipeline("threshold:max_error=0.05+zstd"))
'threshold:max_error=0.05+zstd:level=3'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsify.errors import UsageError
from sparsify.methods import CODERS, METHODS, VALUE_CODERS, Coder, LosslessMethod, Stage, ValueCoder
from sparsify.params import Param


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: decomposition stages, an optional value coder, then byte coders."""

    methods: tuple[Stage, ...]
    coders: tuple[Coder, ...] = ()
    values: ValueCoder | None = None

    @property
    def lossless(self) -> bool:
        return isinstance(self.methods[0], LosslessMethod)

    @property
    def view(self) -> str | None:
        """The matrix view the stages ask for (``first``/``last``), or None for the format's default."""
        return next((m.config["view"] for m in self.methods if "view" in m.config), None)

    @property
    def weighted(self) -> bool:
        """Whether a stage takes its steps from the tensor's importance (``quant:...,weighted=true``)."""
        return any(m.config.get("weighted") for m in self.methods)

    @property
    def feedback(self) -> bool:
        """Whether a stage feeds its rounding errors forward by the tensor's input moments
        (``quant:step=...,feedback=true``, :mod:`sparsify.feedback`)."""
        return any(m.config.get("feedback") for m in self.methods)

    def with_methods(self, methods: tuple[Stage, ...]) -> Pipeline:
        """This pipeline's coders behind other methods (e.g. keep for a tensor stored losslessly)."""
        return Pipeline(tuple(methods), self.coders, None if isinstance(methods[0], LosslessMethod) else self.values)

    def __str__(self) -> str:
        values = (self.values,) if self.values is not None else ()
        return "+".join(stage_text(s) for s in (*self.methods, *values, *self.coders))


def stage_text(stage: Stage) -> str:
    """The canonical text of one stage, every effective parameter in spec order."""
    if not stage.config:
        return stage.name
    values = ",".join(f"{p.name}={value_text(stage.config[p.name])}" for p in stage.params if p.name in stage.config)
    return f"{stage.name}:{values}"


def short_text(text: str) -> str:
    """A pipeline's text with only the parameters that differ from their defaults (for display):
    ``threshold:sparsity=0.7+int4:group=128,symmetric=true+zstd:level=3`` -> ``threshold:sparsity=0.7+int4+zstd``.
    Text that does not parse is returned as it is."""
    try:
        pipeline = parse_pipeline(text)
    except UsageError:
        return text
    stages = (*pipeline.methods, *((pipeline.values,) if pipeline.values else ()), *pipeline.coders)
    out = []
    for stage in stages:
        defaults = {p.name: p.default for p in stage.params}
        changed = ",".join(
            f"{p.name}={value_text(stage.config[p.name])}"
            for p in stage.params
            if p.name in stage.config and (p.budget or stage.config[p.name] != defaults[p.name])
        )
        out.append(f"{stage.name}:{changed}" if changed else stage.name)
    return "+".join(out)


def value_text(value: Any) -> str:
    """A parameter value as the grammar writes it (``true``, ``3``, ``0.05``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    return str(value)


def parse_pipeline(text: str) -> Pipeline:
    """Parse and validate a pipeline string; UsageError on any problem."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"empty pipeline; {_choices_hint()}")
    stages = [parse_stage(chunk, text) for chunk in text.split("+")]
    methods = [s for s in stages if not isinstance(s, (Coder, ValueCoder))]
    values = [s for s in stages if isinstance(s, ValueCoder)]
    coders = [s for s in stages if isinstance(s, Coder)]
    if not methods:
        raise UsageError(f"pipeline {text!r} has no decomposition method; methods: {', '.join(METHODS)}")
    if stages != [*methods, *values, *coders]:
        raise UsageError(
            f"pipeline {text!r}: write the methods first, then a value coder ({', '.join(VALUE_CODERS)}), "
            f"then byte coders ({', '.join(CODERS)})"
        )
    if len(values) > 1:
        raise UsageError(f"pipeline {text!r}: give at most one value coder, not {' and '.join(v.name for v in values)}")
    if any(isinstance(m, LosslessMethod) for m in methods) and len(methods) > 1:
        raise UsageError(f"pipeline {text!r}: keep stores the tensor as it is and must be the only method")
    if values and isinstance(methods[0], LosslessMethod):
        raise UsageError(
            f"pipeline {text!r}: keep is lossless and takes no value coder; for integers use quant (e.g. quant:bits=8)"
        )
    if values and not any(getattr(m, "value_coded", False) for m in methods):
        raise UsageError(
            f"pipeline {text!r}: {values[0].name} has no float parts to code ({methods[0].name} stores integers)"
        )
    views = {m.config["view"] for m in methods if "view" in m.config}
    if len(views) > 1:
        raise UsageError(f"pipeline {text!r}: stages ask for different views ({', '.join(sorted(views))})")
    names = [c.name for c in coders]
    if len(set(names)) != len(names):
        raise UsageError(f"pipeline {text!r}: each coder may appear once")
    return Pipeline(tuple(methods), tuple(coders), values[0] if values else None)


def parse_stage(chunk: str, pipeline_text: str) -> Stage:
    """One ``name:key=value,...`` stage."""
    name, _, arguments = chunk.strip().partition(":")
    name = name.strip()
    cls = METHODS.get(name) or VALUE_CODERS.get(name) or CODERS.get(name)
    if cls is None:
        what = f"unknown stage {name!r}" if name else "empty stage"
        raise UsageError(f"pipeline {pipeline_text!r}: {what}; {_choices_hint()}")
    given: dict[str, Any] = {}
    specs = {p.name: p for p in cls.params}
    for item in (a.strip() for a in arguments.split(",") if a.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"{name}: {item!r} is not key=value; parameters: {_params_hint(cls)}")
        if key not in specs:
            raise UsageError(f"{name}: unknown parameter {key!r}; parameters: {_params_hint(cls)}")
        if key in given:
            raise UsageError(f"{name}: parameter {key!r} given twice")
        given[key] = specs[key].parse(value.strip(), name)
    return cls(**resolve_config(cls, given))


def check_config(cls: type[Stage], config: Any) -> dict[str, Any]:
    """A stored stage config (from an archive's manifest) validated against the stage's specs:
    known keys, the right types, values in range. UsageError otherwise."""
    if not isinstance(config, dict):
        raise UsageError(f"{cls.name}: config is not a mapping")
    specs = {p.name: p for p in cls.params}
    for key, value in config.items():
        spec = specs.get(key)
        if spec is None:
            raise UsageError(f"{cls.name}: unknown parameter {key!r}; parameters: {_params_hint(cls)}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        well_typed = (
            isinstance(value, bool)
            if spec.kind is bool
            else isinstance(value, str) and (not spec.choices or value in spec.choices)
            if spec.kind is str
            else number and (spec.kind is float or float(value).is_integer())
        )
        if not well_typed:
            raise UsageError(f"{cls.name}: {key}={value!r} is not valid; valid: {spec.range_text()}")
        if number:
            spec.check(value, cls.name)
    # an integer parameter stored as 16.0 is the integer 16 (sizes and counts are computed from it)
    return {k: int(v) if specs[k].kind is int and not isinstance(v, bool) else v for k, v in config.items()}


def resolve_config(cls: type[Stage], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` plus defaults, with exactly one budget; ordered as the spec."""
    budgets = [p.name for p in cls.params if p.budget]
    chosen = [b for b in budgets if b in given]
    if len(chosen) > 1:
        raise UsageError(f"{cls.name}: give one budget, not {' and '.join(chosen)}")
    if budgets and not chosen and not any(p.budget and p.default is not None for p in cls.params):
        raise UsageError(f"{cls.name} needs a budget: one of {', '.join(budgets)} (e.g. {cls.example})")
    config = {}
    for p in cls.params:
        if p.name in given:
            config[p.name] = given[p.name]
        elif p.default is not None and not (p.budget and chosen):
            config[p.name] = p.default
    return config


def _params_hint(cls: type[Stage]) -> str:
    if not cls.params:
        return "none"
    return "; ".join(f"{p.name} ({p.range_text()})" for p in cls.params)


def _choices_hint() -> str:
    return (
        f"methods: {', '.join(METHODS)}; value coders: {', '.join(VALUE_CODERS)}; coders: {', '.join(CODERS)} "
        "(see `sparsify methods`)"
    )


def describe_param(p: Param) -> dict[str, Any]:
    """A JSON-able description of one parameter (for ``sparsify methods --json``)."""
    return {
        "name": p.name,
        "type": p.kind.__name__,
        "range": p.range_text(),
        "default": p.default,
        "budget": p.budget,
        "doc": p.doc,
    }
