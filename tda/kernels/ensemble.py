"""LOO retraining and ATS evaluation of a `CNN`/`CNN3L` ensemble on the CPU with the kernels of `forward`.

Members are looped (a member's working set stays in cache) and every buffer is allocated once and
reused across members and steps. Parameters, gradients and Adam's moments are one flat kernel-layout
vector per member, so Adam is a few elementwise calls per member (`engine.adam.adam_update`, op for
op `torch.optim.Adam`). At the first step every member still holds the same parameters, so one batched
per-sample backward gives all members' gradients (w_k . per-sample gradients) instead of one backward
per member.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..engine.adam import adam_update
from ..engine.ensemble import LR, Batches, concat_snapshots, learning_rate_at
from ..engine.functional import Params
from . import forward as K
from .blocks import Workspace
from .layout import CNNSpec, from_kernel, one_hot, to_kernel, views

#: test samples per forward pass when only evaluating: activations stay in the cache
EVAL_SAMPLES = 32


def _forwards(spec: CNNSpec, flat: torch.Tensor, x: torch.Tensor, samples: int):
    """(member k, first sample i, its outputs [B, classes]) for every member on every block of `samples` samples;
    each block's first im2col is shared by all members, the outputs live in a buffer reused by the next forward."""
    members = [views(spec, f) for f in flat]
    ws = Workspace()
    with torch.no_grad():
        for i in range(0, len(x), samples):
            xb = x[i:i + samples]
            cols = K.first_cols(spec, xb)
            for k, p in enumerate(members):
                yield k, i, K.logits(spec, p, cols, len(xb), ws)


def flat_losses(spec: CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                samples: int = EVAL_SAMPLES) -> torch.Tensor:
    """Per-sample losses [K, M] of every member (flat kernel-layout vectors [K, P]) on every sample."""
    out = torch.empty(len(flat), len(y), dtype=flat.dtype)
    for k, i, z in _forwards(spec, flat, x, samples):
        out[k, i:i + len(z)] = F.cross_entropy(z, y[i:i + len(z)], reduction="none")
    return out


def member_logits(spec: CNNSpec, stacked: Params, x: torch.Tensor, samples: int = EVAL_SAMPLES) -> torch.Tensor:
    """Outputs [K, M, classes] of every stacked member on every sample."""
    flat = to_kernel(spec, stacked)
    out = torch.empty(len(flat), len(x), spec.fcs[-1][2], dtype=flat.dtype)
    for k, i, z in _forwards(spec, flat, x, samples):
        out[k, i:i + len(z)] = z
    return out


def member_losses(spec: CNNSpec, stacked: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample losses [K, M] of every stacked member on every sample."""
    return flat_losses(spec, to_kernel(spec, stacked), x, y)


def sample_grads(spec: CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Flat kernel-layout gradient of each sample's loss at the parameters `flat` [P], [N, P]."""
    with torch.no_grad():
        return K.per_sample_grads(spec, views(spec, flat), K.first_cols(spec, x), one_hot(spec, y, flat.dtype),
                                  Workspace())


def one_step_losses(spec: CNNSpec, params: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                    x_test: torch.Tensor, y_test: torch.Tensor, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float, chunk: int) -> torch.Tensor:
    """Test losses [N + 1, M]: of theta (row 0), then of each theta'_j = theta after one fresh-Adam step on {z_j}."""
    flat = to_kernel(spec, params)
    g = sample_grads(spec, flat, x_train, y_train)
    exp_avg, exp_avg_sq, tmp = torch.empty_like(flat), torch.empty_like(flat), (torch.empty_like(flat),
                                                                                 torch.empty_like(flat))
    out = [flat_losses(spec, flat.unsqueeze(0), x_test, y_test)]
    with torch.no_grad():
        for j in range(0, len(g), chunk):
            members = flat.expand(len(g[j:j + chunk]), -1).clone()
            for k, g_k in enumerate(g[j:j + chunk]):  # a fresh Adam per member: zero moments, step 1
                adam_update(members[k], g_k, exp_avg.zero_(), exp_avg_sq.zero_(), 1, lr, weight_decay, betas, eps, tmp)
            out.append(flat_losses(spec, members, x_test, y_test))
    return torch.cat(out)


def train_members(spec: CNNSpec, params: Params, x: torch.Tensor, y: torch.Tensor, batches: Batches,
                  weights: torch.Tensor, lr: LR, weight_decay: float, snaps: Sequence[int],
                  evaluate: Callable[[Params], torch.Tensor] | None, chunk: int,
                  betas: tuple[float, float], eps: float) -> list:
    """`engine.ensemble.train_ensemble` for a CNN on the CPU: K = len(weights) Adam trainings, losses weighted by w[k]."""
    results: list[list] = [[] for _ in snaps]
    start_flat = to_kernel(spec, params)
    n_params = start_flat.shape[-1]
    tmp = (start_flat.new_empty(n_params), start_flat.new_empty(n_params))
    grad = start_flat.new_empty(n_params)
    g_views = views(spec, grad)
    ws = Workspace()
    with torch.no_grad():
        for first in range(0, len(weights), chunk):
            w = weights[first:first + chunk]
            flat = start_flat.expand(len(w), n_params).clone()
            exp_avg, exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)
            members = [views(spec, f) for f in flat]
            step = 0
            for epoch in range(snaps[-1] + 1):
                for idx in batches[epoch]:
                    cols, wb = K.first_cols(spec, x[idx]), w[:, idx] / len(idx)
                    onehot = one_hot(spec, y[idx], cols.dtype)
                    step_lr = learning_rate_at(lr, step)
                    if step == 0:  # all members still hold the same parameters: one per-sample backward serves them
                        shared = torch.mm(wb, K.per_sample_grads(spec, members[0], cols, onehot, ws))
                    for k, p in enumerate(members):
                        if step > 0:
                            K.loss_grad(spec, p, cols, onehot, wb[k], g_views, ws)
                        adam_update(flat[k], grad if step > 0 else shared[k], exp_avg[k], exp_avg_sq[k], step + 1,
                                    step_lr, weight_decay, betas, eps, tmp)
                    step += 1
                if epoch in snaps:
                    stacked = from_kernel(spec, flat)
                    results[list(snaps).index(epoch)].append(evaluate(stacked) if evaluate is not None else stacked)
    return concat_snapshots(results, evaluate is not None)
