"""bayes-tda: training data attribution as a random variable over a posterior of models.

The Python API (docs/api.md) is imported on first use, so that `import tda.kernels.native`, `import tda.config`
and the entry scripts load only what they need: `tda.train_posterior`, `tda.posterior_from`, `tda.Posterior`,
`tda.Training`, `tda.attribute`, `tda.cross_entropy` (posteriors and attribution), `tda.significance(scores)`
(scores [seeds, checkpoints, N, M] from anywhere tested pair by pair) and `tda.correlate(a, b)` (two score
sets' mu, sigma and SNR correlated).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: public name -> the module of the API that defines it
_API = {**{name: "tda.api" for name in
           ("Posterior", "Training", "attribute", "cross_entropy", "posterior_from", "train_posterior")},
        "significance": "tda.significance", "Significance": "tda.significance", "correlate": "tda.significance"}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """The API's names, imported when first asked for."""
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
