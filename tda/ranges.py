"""Allowed ranges of numeric options, checked where an option is parsed (one line naming the option and its range)."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable

from .config import TDAError


@dataclass(frozen=True)
class Range:
    """A numeric option's allowed values: >= ge, > gt, <= le (each optional); always finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def describe(self) -> str:
        """The range in words, e.g. '>= 1' or '> 0 and <= 1'."""
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le)) if v is not None]
        return " and ".join(parts) or "finite"

    def contains(self, value: float) -> bool:
        return (math.isfinite(value) and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))

    def check(self, name: str, value: Any) -> None:
        """A one-line TDAError when `value` (None: the option's default, allowed) is outside the range."""
        if value is not None and not self.contains(float(value)):
            raise TDAError(f"{name} must be {self.describe()}, got {value}")

    def parser(self, kind: Callable[[str], Any]) -> Callable[[str], Any]:
        """An argparse `type` that converts with `kind` and refuses values outside the range (argparse's one line)."""
        def parse(text: str) -> Any:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                                 f"got {text!r}")
            if not self.contains(float(value)):
                raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
            return value
        parse.__name__ = kind.__name__
        return parse


#: the common ranges
POSITIVE_INT = Range(ge=1)
POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)


def ranged(kind: Callable[[str], Any], rng: Range) -> Callable[[str], Any]:
    """Shorthand for `rng.parser(kind)`: e.g. `add_argument("--workers", type=ranged(int, POSITIVE_INT))`."""
    return rng.parser(kind)
