"""The paper's CNNs (`cnn`, `cnn3l`) as a backend: full state dicts, constant learning rate, LOO protocol `paper`."""
from __future__ import annotations

from torch import nn

from ..models import CNN, CNN3L
from .base import Backend

ARCHITECTURES = {"cnn": CNN, "cnn3l": CNN3L}


class CNNBackend(Backend):
    """The 2- and 3-conv-layer CNNs trained from scratch; every parameter is trained and attributed over."""

    def build(self) -> nn.Module:
        return ARCHITECTURES[self.cfg.model](self.cfg.spec.channels, self.cfg.num_labels)

    def model_type(self) -> type:
        return ARCHITECTURES[self.cfg.model]
