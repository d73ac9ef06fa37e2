"""The Python API: the Bayesian significance test for anyone's model, loss and TDA method, in memory (docs/api.md).

    posterior = tda.train_posterior(make_model, (x, y), seeds=range(5), training=tda.Training(epochs=10))
    scores = tda.attribute("if", posterior, (x, y), (x_test, y_test))      # [seeds, checkpoints, N, M]
"""
from __future__ import annotations

from ..engine.functional import cross_entropy
from .posterior import Posterior, Training
from .sampling import posterior_from, train_posterior
from .scores import attribute

__all__ = ["Posterior", "Training", "attribute", "cross_entropy", "posterior_from", "train_posterior"]
