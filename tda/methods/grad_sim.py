"""Grad-Dot and Grad-Cos (DESIGN 5, GD / GC): per-sample gradients once per checkpoint, then matrix products."""
from __future__ import annotations

import torch
from torch import nn

from .common import Params, per_sample_grads


def grad_dot_and_cos(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                     x_test: torch.Tensor, y_test: torch.Tensor, grad_chunk: int = 256,
                     test_chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(GD, GC), each [N, M]: grad L_j . grad L_i over all trainable parameters, and its cosine."""
    g_tr = per_sample_grads(model, params, frozen, x_train, y_train, grad_chunk)
    n_tr = g_tr.norm(dim=1)
    gd, gc = [], []
    # test gradients a chunk at a time: memory stays O((N + chunk) * P) however large M is
    for i in range(0, len(y_test), test_chunk):
        g_te = per_sample_grads(model, params, frozen, x_test[i:i + test_chunk], y_test[i:i + test_chunk], grad_chunk)
        d = g_tr @ g_te.T
        gd.append(d)
        tiny = torch.finfo(d.dtype).tiny
        gc.append(d / (n_tr.unsqueeze(1) * g_te.norm(dim=1).unsqueeze(0)).clamp_min(tiny))
    return torch.cat(gd, dim=1), torch.cat(gc, dim=1)


def grad_dot(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
             x_test: torch.Tensor, y_test: torch.Tensor, **kw) -> torch.Tensor:
    """Grad-Dot [N, M]."""
    return grad_dot_and_cos(model, params, frozen, x_train, y_train, x_test, y_test, **kw)[0]


def grad_cos(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
             x_test: torch.Tensor, y_test: torch.Tensor, **kw) -> torch.Tensor:
    """Grad-Cos [N, M]."""
    return grad_dot_and_cos(model, params, frozen, x_train, y_train, x_test, y_test, **kw)[1]
