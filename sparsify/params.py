"""Parameter specifications: one table per stage that both validates pipelines and documents them.

``sparsify methods`` and every validation error are generated from these specs, so the help cannot
drift from what the parser accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sparsify.errors import UsageError


@dataclass(frozen=True)
class Param:
    """One ``key=value`` parameter of a stage.

    kind:    ``float``, ``int``, ``bool`` or ``str``.
    low/high: the inclusive or exclusive bounds (``low_open``/``high_open``) for numbers.
    choices: the allowed strings for ``str`` parameters.
    budget:  True when this is one of the stage's mutually exclusive budget forms.
    default: used when the parameter is not given (budgets: only the stage's default budget has one).
    """

    name: str
    kind: type
    doc: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    budget: bool = False

    def parse(self, text: str, stage: str) -> Any:
        """The typed, validated value of ``text``; UsageError naming the valid range otherwise."""
        if self.kind is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise UsageError(f"{stage}: {self.name}={text!r} is not a boolean (true or false)")
        if self.kind is str:
            if self.choices and text not in self.choices:
                raise UsageError(f"{stage}: {self.name}={text!r} is not one of {', '.join(self.choices)}")
            return text
        try:
            value = self.kind(text)
        except ValueError:
            raise UsageError(
                f"{stage}: {self.name}={text!r} is not {'an integer' if self.kind is int else 'a number'}"
            ) from None
        if self.kind is float and not math.isfinite(value):
            raise UsageError(f"{stage}: {self.name}={text!r} must be finite")
        return self.check(value, stage)

    def check(self, value: Any, stage: str) -> Any:
        """``value`` if within range, else UsageError stating the range."""
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise UsageError(f"{stage}: {self.name}={value} is out of range; valid: {self.range_text()}")
        return value

    def range_text(self) -> str:
        """The valid values in words, e.g. ``0 <= x < 1``, ``integer >= 1``, ``one of a, b``."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "one of " + ", ".join(self.choices) if self.choices else "text"
        parts = []
        if self.low is not None:
            parts.append(f"{_num(self.low)} {'<' if self.low_open else '<='} x")
        if self.high is not None:
            bound = f"{'<' if self.high_open else '<='} {_num(self.high)}"
            parts = [f"{parts[0]} {bound}"] if parts else [f"x {bound}"]
        text = parts[0] if parts else "any number"
        return f"integer, {text}" if self.kind is int else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
