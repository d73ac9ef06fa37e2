"""Additional training step (ATS): one step of a fresh Adam on {z_j}, for all training samples j at once."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..dispatch import one_step_losses
from ..engine.adam import BETAS, EPS
from ..engine.functional import Loss, Params, cross_entropy
from ..ranges import POSITIVE_INT
from .base import Checkpoint, Method, Scores, SeedData, option, register


def ats_scores(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, lr: float, weight_decay: float,
               betas: tuple[float, float] = BETAS, eps: float = EPS, member_chunk: int | None = None,
               grad_chunk: int = 256, eval_chunk: int = 4096, vectorize: bool | None = None,
               loss: Loss = cross_entropy) -> torch.Tensor:
    """tau [N, M] = L_i(theta'_j) - L_i(theta), theta'_j = theta after one fresh-Adam step on the batch {z_j}.

    A fresh Adam's first step is theta - lr * g / (|g| + eps) elementwise with g = grad L_j + wd * theta
    (the bias corrections cancel), so all N steps follow from the per-sample gradients; the functional
    Adam step itself is applied, so the rounding is torch.optim.Adam's. `member_chunk` perturbed models
    are evaluated at once (default: as many as free memory allows).
    """
    losses = one_step_losses(model, params, frozen, x_train, y_train, x_test, y_test, lr, weight_decay, betas, eps,
                             member_chunk, grad_chunk, eval_chunk, vectorize, loss)
    return losses[1:] - losses[:1]


@register
@dataclass
class ATS(Method):
    """One additional training step on each training sample; tau < 0 means the sample helps."""

    name = "ats"
    outputs = {"ats": "ATS"}
    script = "run_ats.py"
    sign = -1

    chunk: int | None = option(None, "perturbed models evaluated at once (default: as many as free memory allows)",
                               type=int, range=POSITIVE_INT)

    def settings(self, data: SeedData) -> dict:
        return {**super().settings(data), "chunk": self.chunk or 0, "lr": data.cfg.lr,
                "weight_decay": data.cfg.weight_decay, "betas": list(BETAS), "eps": EPS}

    def score(self, ck: Checkpoint) -> Scores:
        cfg = ck.data.cfg
        return {"ats": ats_scores(*ck.tensors(), cfg.lr, cfg.weight_decay, member_chunk=self.chunk, loss=ck.data.loss)}
