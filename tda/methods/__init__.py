"""The TDA methods, registered by name. Adding a method: one module with a `@register`ed `Method` subclass,
and its module's name in the import line below.

Each method's scores land in tda_scores/<experiment>/<output>/<seed>.pt, one file per output it
declares; the results step picks up every registered output by itself.
"""
from __future__ import annotations

from ..config import TDAError
from . import loo, ats, influence, grad_sim  # noqa: F401,I001 - importing a method's module registers it
from .ats import ATS
from .base import REGISTRY, Checkpoint, Method, SeedData, option, register
from .grad_sim import GradSim
from .influence import IF
from .loo import LOO


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`, or a one-line error listing them."""
    if name not in REGISTRY:
        raise TDAError(f"unknown TDA method {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def outputs() -> dict[str, type[Method]]:
    """Every score output (e.g. 'loo', 'gd', 'gc') -> the method that writes it, in registry order."""
    return {o: m for m in REGISTRY.values() for o in m.outputs}


def label(output: str) -> str:
    """The name of an output in tables and figures (e.g. 'GD')."""
    m = outputs().get(output)
    return m.outputs[output] if m is not None else output.upper()


__all__ = ["ATS", "IF", "LOO", "GradSim", "Checkpoint", "Method", "SeedData", "REGISTRY", "get_method", "label",
           "option", "outputs", "register"]
