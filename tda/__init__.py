"""bayes-tda: training data attribution as a random variable over a posterior of models.

The in-memory API (docs/api.md): `tda.significance(scores)` tests attribution scores [seeds, checkpoints, N, M]
from anywhere pair by pair; `tda.correlate(a, b)` correlates two score sets' mu, sigma and SNR. They are
imported on first use, so that `import tda.config` and the scripts' other modules stay light.
"""
from __future__ import annotations

import importlib
import sys
import types

#: public name -> module that defines it
_API = {"significance": "tda.significance", "Significance": "tda.significance", "correlate": "tda.significance"}


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'tda' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


class _Package(types.ModuleType):
    """Keeps `tda.significance` the function: importing the submodule of the same name would otherwise set the
    package attribute to the module."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
