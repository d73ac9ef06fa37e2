"""The paper's CNNs (`cnn`, `cnn3l`) as a backend: full state dicts, constant learning rate, LOO protocol `paper`."""
from __future__ import annotations

import torch
from torch import nn

from ..config import TDAError
from ..models import CNN, CNN3L
from .base import Backend

ARCHITECTURES = {"cnn": CNN, "cnn3l": CNN3L}


class CNNBackend(Backend):
    """The 2- and 3-conv-layer CNNs trained from scratch; every parameter is trained and attributed over."""

    def build(self) -> nn.Module:
        return ARCHITECTURES[self.cfg.model](self.cfg.spec.channels, self.cfg.num_labels)

    def load_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            cfg = self.cfg
            raise TDAError(f"checkpoint of {cfg.name} does not fit the {cfg.model} model "
                           f"({str(e).splitlines()[0]}): retrain with "
                           f"`python {cfg.train_script} --experiment {cfg.name} --seed_id <id> --overwrite`")
