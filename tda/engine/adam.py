"""A functional Adam, op for op `torch.optim.Adam`: on dicts of (member-stacked) tensors, or on one flat tensor."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .functional import Params

#: torch.optim.Adam's defaults, which the reference used
BETAS = (0.9, 0.999)
EPS = 1e-8


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
def adam_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
                weight_decay: float = 0.0, betas: tuple[float, float] = BETAS, eps: float = EPS,
                tmp: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """The `step`-th (1-based) torch.optim.Adam(lr, weight_decay) step of one tensor p in place, moments m and v.

    L2 is added to the gradient, bias corrections are torch's. Elementwise, so member-stacked tensors work
    unchanged (each member keeps its own moments). `tmp`: two tensors like p reused for the temporaries.
    """
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    step_size = lr / bias_correction1
    if weight_decay != 0:
        g = torch.add(g, p, alpha=weight_decay, out=None if tmp is None else tmp[0])
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = torch.sqrt(v, out=None if tmp is None else tmp[1]).div_(bias_correction2 ** 0.5).add_(eps)
    p.addcdiv_(m, denom, value=-step_size)


@torch.no_grad()
def adam_step(params: Params, grads: Params, state: AdamState, lr: float, weight_decay: float = 0.0,
              betas: tuple[float, float] = BETAS, eps: float = EPS) -> None:
    """One step of torch.optim.Adam(lr, weight_decay) on every tensor of `params` in place (`adam_update` each)."""
    state.step += 1
    for n, p in params.items():
        adam_update(p, grads[n], state.exp_avg[n], state.exp_avg_sq[n], state.step, lr, weight_decay, betas, eps)
