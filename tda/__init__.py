"""bayes-tda: training data attribution as a random variable over a posterior of models.

The Python API (docs/api.md) is imported on first use, so that `import tda.kernels.native` and the entry
scripts load only what they need: `tda.train_posterior`, `tda.posterior_from`, `tda.Posterior`, `tda.Training`,
`tda.attribute`, `tda.cross_entropy`.
"""
from __future__ import annotations

from typing import Any

#: name -> the module of the API that defines it
_API = {name: "tda.api" for name in
        ("Posterior", "Training", "attribute", "cross_entropy", "posterior_from", "train_posterior")}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """The API's names, imported when first asked for."""
    if name in _API:
        import importlib
        value = getattr(importlib.import_module(_API[name]), name)
        # kept here: importing a submodule of the same name would otherwise leave the module in its place
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tda' has no attribute {name!r}")
