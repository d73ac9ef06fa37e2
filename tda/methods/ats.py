"""Additional training step (ATS): one step of a fresh Adam on {z_j}, for all training samples j at once."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adam import adam_init, adam_step
from .base import Checkpoint, Method, Scores, SeedData, option, register
from . import cnn_ensemble
from .cnn_kernels import cnn_spec
from .ensemble import member_losses, stack, use_vmap
from .functional import Params, per_sample_grads, per_sample_losses, unflatten
from .memory import budget_bytes, chunk_size, default_chunk, member_bytes

BETAS = (0.9, 0.999)
EPS = 1e-8


def ats_scores(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, lr: float, weight_decay: float,
               betas: tuple[float, float] = BETAS, eps: float = EPS, member_chunk: int | None = None,
               grad_chunk: int = 256, eval_chunk: int = 4096, vectorize: bool | None = None) -> torch.Tensor:
    """tau [N, M] = L_i(theta'_j) - L_i(theta), theta'_j = theta after one fresh-Adam step on the batch {z_j}.

    A fresh Adam's first step is theta - lr * g / (|g| + eps) elementwise with g = grad L_j + wd * theta
    (the bias corrections cancel), so all N steps follow from the per-sample gradients; we apply the
    functional Adam step itself to the stacked gradients so the rounding is torch.optim.Adam's.
    `member_chunk` perturbed models are evaluated at once (default: as many as free memory allows).
    """
    spec = None if use_vmap(x_train.device, vectorize) else cnn_spec(model, params, frozen, x_train)
    if spec is not None:  # the CNN kernels hold one member's activations at a time: members cost their parameters
        chunk = member_chunk or chunk_size(member_bytes(spec.numel, x_train.element_size(), 0, training=True),
                                           budget_bytes(x_train.device), len(y_train))
        losses = cnn_ensemble.ats_losses(spec, params, x_train, y_train, x_test, y_test, lr, weight_decay, betas,
                                         eps, chunk)
        return losses[1:] - losses[:1]
    if member_chunk is None:
        member_chunk = default_chunk(model, params, frozen, x_test, min(eval_chunk, len(y_test)), len(y_train),
                                     training=False, vectorized=False)
    with torch.no_grad():
        base = per_sample_losses(model, params, frozen, x_test, y_test)
    g = per_sample_grads(model, params, frozen, x_train, y_train, grad_chunk)
    out = []
    for j in range(0, len(g), member_chunk):
        members = stack(params, len(g[j:j + member_chunk]))
        adam_step(members, unflatten(g[j:j + member_chunk], params), adam_init(members), lr, weight_decay, betas, eps)
        out.append(member_losses(model, members, frozen, x_test, y_test, eval_chunk, vectorize) - base)
    return torch.cat(out)


@register
@dataclass
class ATS(Method):
    """One additional training step on each training sample; tau < 0 means the sample helps."""

    name = "ats"
    outputs = {"ats": "ATS"}
    script = "run_ats.py"
    sign = -1

    chunk: int | None = option(None, "perturbed models evaluated at once (default: as many as free memory allows)",
                               type=int)

    def settings(self, data: SeedData) -> dict:
        return {**super().settings(data), "chunk": self.chunk or 0, "lr": data.cfg.lr,
                "weight_decay": data.cfg.weight_decay, "betas": list(BETAS), "eps": EPS}

    def score(self, ck: Checkpoint) -> Scores:
        cfg = ck.data.cfg
        return {"ats": ats_scores(*ck.tensors(), cfg.lr, cfg.weight_decay, member_chunk=self.chunk)}
