"""LOO retraining and ATS evaluation of a `CNN`/`CNN3L` ensemble on the CPU with the kernels of `cnn_kernels`.

Members are looped (a member's working set stays in cache) and every buffer is allocated once and
reused across members and steps. Parameters, gradients and Adam's moments are one flat kernel-layout
vector per member, so Adam is a few elementwise calls per member, op for op `torch.optim.Adam` (L2
added to the gradient, torch's bias corrections). At the first step every member still holds the
same parameters, so one batched per-sample backward gives all members' gradients (w_k . per-sample
gradients) instead of one backward per member.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import cnn_kernels as K
from .functional import Params

LR = float | Callable[[int], float]

#: test samples per forward pass when only evaluating: activations stay in the cache
EVAL_SAMPLES = 32


def flat_losses(spec: K.CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                samples: int = EVAL_SAMPLES) -> torch.Tensor:
    """Per-sample losses [K, M] of every member (flat kernel-layout vectors [K, P]) on every sample."""
    members = [K.views(spec, f) for f in flat]
    out = torch.empty(len(members), len(y), dtype=flat.dtype)
    ws: K.Workspace = {}
    with torch.no_grad():
        for i in range(0, len(y), samples):
            cols = K.first_cols(spec, x[i:i + samples])
            for k, p in enumerate(members):
                out[k, i:i + samples] = K.losses(spec, p, cols, y[i:i + samples], ws)
    return out


def member_losses(spec: K.CNNSpec, stacked: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample losses [K, M] of every stacked member on every sample."""
    return flat_losses(spec, K.to_kernel(spec, stacked), x, y)


def _onehot(spec: K.CNNSpec, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, spec.fcs[-1][2]).to(like.dtype)


def sample_grads(spec: K.CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Flat kernel-layout gradient of each sample's loss at the parameters `flat` [P], [N, P]."""
    with torch.no_grad():
        return K.per_sample_grads(spec, K.views(spec, flat), K.first_cols(spec, x), _onehot(spec, y, flat), {})


def ats_losses(spec: K.CNNSpec, params: Params, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
               y_test: torch.Tensor, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
               chunk: int) -> torch.Tensor:
    """Test losses [N + 1, M]: of theta (row 0), then of each theta'_j = theta after one fresh-Adam step on {z_j}."""
    flat = K.to_kernel(spec, params)
    g = sample_grads(spec, flat, x_train, y_train)
    exp_avg, exp_avg_sq, tmp = torch.empty_like(flat), torch.empty_like(flat), (torch.empty_like(flat),
                                                                                 torch.empty_like(flat))
    out = [flat_losses(spec, flat.unsqueeze(0), x_test, y_test)]
    with torch.no_grad():
        for j in range(0, len(g), chunk):
            members = flat.expand(len(g[j:j + chunk]), -1).clone()
            for k, g_k in enumerate(g[j:j + chunk]):  # a fresh Adam per member: zero moments, step 1
                _adam(members[k], g_k, exp_avg.zero_(), exp_avg_sq.zero_(), tmp, 1, lr, weight_decay, betas, eps)
            out.append(flat_losses(spec, members, x_test, y_test))
    return torch.cat(out)


def _adam(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, tmp: tuple[torch.Tensor, torch.Tensor],
          step: int, lr: float, weight_decay: float, betas: tuple[float, float], eps: float) -> None:
    """One torch.optim.Adam step on one member's flat vectors, in place, through preallocated buffers."""
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    step_size = lr / bias_correction1
    if weight_decay != 0:
        g = torch.add(g, p, alpha=weight_decay, out=tmp[0])
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = torch.sqrt(v, out=tmp[1]).div_(bias_correction2 ** 0.5).add_(eps)
    p.addcdiv_(m, denom, value=-step_size)


def train_members(spec: K.CNNSpec, params: Params, x: torch.Tensor, y: torch.Tensor,
                  batches: Sequence[Sequence[torch.Tensor]], weights: torch.Tensor, lr: LR, weight_decay: float,
                  snaps: Sequence[int], evaluate: Callable[[Params], torch.Tensor] | None, chunk: int,
                  betas: tuple[float, float], eps: float) -> list:
    """`ensemble.train_ensemble` for a CNN on the CPU: K = len(weights) Adam trainings, losses weighted by w[k]."""
    results: list[list] = [[] for _ in snaps]
    start_flat = K.to_kernel(spec, params)
    n_params = start_flat.shape[-1]
    tmp = (start_flat.new_empty(n_params), start_flat.new_empty(n_params))
    grad = start_flat.new_empty(n_params)
    g_views = K.views(spec, grad)
    ws: K.Workspace = {}
    with torch.no_grad():
        for first in range(0, len(weights), chunk):
            w = weights[first:first + chunk]
            flat = start_flat.expand(len(w), n_params).clone()
            exp_avg, exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)
            members = [K.views(spec, f) for f in flat]
            step = 0
            for epoch in range(snaps[-1] + 1):
                for idx in batches[epoch]:
                    cols, wb = K.first_cols(spec, x[idx]), w[:, idx] / len(idx)
                    onehot = _onehot(spec, y[idx], cols)
                    step_lr = lr(step) if callable(lr) else lr
                    if step == 0:  # all members still hold the same parameters: one per-sample backward serves them
                        shared = torch.mm(wb, K.per_sample_grads(spec, members[0], cols, onehot, ws))
                    for k, p in enumerate(members):
                        if step > 0:
                            K.loss_grad(spec, p, cols, onehot, wb[k], g_views, ws)
                        _adam(flat[k], grad if step > 0 else shared[k], exp_avg[k], exp_avg_sq[k], tmp, step + 1,
                              step_lr, weight_decay, betas, eps)
                    step += 1
                if epoch in snaps:
                    stacked = K.from_kernel(spec, flat)
                    results[list(snaps).index(epoch)].append(evaluate(stacked) if evaluate is not None else stacked)
    if evaluate is not None:
        return [torch.cat(r) for r in results]
    return [{n: torch.cat([c[n] for c in r]) for n in r[0]} for r in results]
