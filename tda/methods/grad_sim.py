"""Grad-Dot (GD) and Grad-Cos (GC): per-sample gradients once per checkpoint, then matrix products."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..dispatch import sample_grads
from ..engine.functional import Loss, Params, cross_entropy
from ..ranges import POSITIVE_INT
from .base import Checkpoint, Method, Scores, option, register


def grad_dot_and_cos(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                     x_test: torch.Tensor, y_test: torch.Tensor, grad_chunk: int = 256,
                     test_chunk: int = 256, loss: Loss = cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
    """(GD, GC), each [N, M]: grad L_j . grad L_i over all trainable parameters, and its cosine."""
    g_tr = sample_grads(model, params, frozen, x_train, y_train, grad_chunk, loss=loss)
    n_tr = g_tr.norms()
    gd, gc = [], []
    # test gradients a chunk at a time: memory stays O((N + chunk) * P) however large M is
    for i in range(0, len(y_test), test_chunk):
        g_te = sample_grads(model, params, frozen, x_test[i:i + test_chunk], y_test[i:i + test_chunk], grad_chunk,
                            loss=loss)
        d = g_tr.dot(g_te)
        gd.append(d)
        tiny = torch.finfo(d.dtype).tiny
        gc.append(d / (n_tr.unsqueeze(1) * g_te.norms().unsqueeze(0)).clamp_min(tiny))
    return torch.cat(gd, dim=1), torch.cat(gc, dim=1)


@register
@dataclass
class GradSim(Method):
    """Grad-Dot and Grad-Cos from the same per-sample gradients; tau > 0 means the sample helps."""

    name = "gd_gc"
    outputs = {"gd": "GD", "gc": "GC"}
    script = "run_gd_and_gc.py"

    chunk: int = option(256, "per-sample gradients computed at once", type=int, range=POSITIVE_INT)

    def score(self, ck: Checkpoint) -> Scores:
        gd, gc = grad_dot_and_cos(*ck.tensors(), grad_chunk=self.chunk, loss=ck.data.loss)
        return {"gd": gd, "gc": gc}
