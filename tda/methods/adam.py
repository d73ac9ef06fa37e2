"""A functional Adam, op for op `torch.optim.Adam`, that applies unchanged to member-stacked tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .functional import Params


@dataclass
class AdamState:
    """Adam's moments for a dict of (possibly stacked) tensors and its step counter, as torch.optim.Adam keeps them."""

    step: int
    exp_avg: Params
    exp_avg_sq: Params


def adam_init(params: Params) -> AdamState:
    """A fresh Adam state (zero moments, step 0)."""
    return AdamState(0, {n: torch.zeros_like(t) for n, t in params.items()},
                     {n: torch.zeros_like(t) for n, t in params.items()})


@torch.no_grad()
def adam_step(params: Params, grads: Params, state: AdamState, lr: float, weight_decay: float = 0.0,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One step of torch.optim.Adam(lr, weight_decay) in place (L2 added to the gradient, torch's bias corrections).

    Elementwise, so member-stacked tensors work unchanged: each member keeps its own moments.
    """
    beta1, beta2 = betas
    state.step += 1
    bias_correction1 = 1 - beta1 ** float(state.step)
    bias_correction2 = 1 - beta2 ** float(state.step)
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    for n, p in params.items():
        g = grads[n]
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        m, v = state.exp_avg[n], state.exp_avg_sq[n]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)
