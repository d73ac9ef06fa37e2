"""Functional building blocks shared by the TDA methods: losses and per-sample gradients via torch.func.

Contract used by every method (CNN and ViT-LoRA alike):
  model   an nn.Module in eval mode (DESIGN 5: no dropout whenever a loss or gradient is measured)
  params  dict name -> tensor of the *trainable* parameters attributions are taken over
  frozen  dict name -> tensor of everything else functional_call needs (frozen weights, buffers)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]

# torch's forward-mode AD (used by batched_hvp) scripts its own decompositions on first use and
# warns about its own use of torch.jit.script: not actionable here, so that one warning is muted
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning,
                        module=r"torch\.")


def split_params(model: nn.Module) -> tuple[Params, Params]:
    """(trainable params, frozen params + buffers), detached, as functional_call wants them."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update({n: b.detach() for n, b in model.named_buffers()})
    return params, frozen


def logits(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor) -> torch.Tensor:
    """Model outputs with the given parameters (a batch in, a batch out)."""
    out = functional_call(model, {**frozen, **params}, (x,))
    return out.logits if hasattr(out, "logits") else out


def per_sample_losses(model: nn.Module, params: Params, frozen: Params,
                      x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every sample, [B]."""
    return F.cross_entropy(logits(model, params, frozen, x), y, reduction="none")


def mean_loss(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over a batch (no weight decay)."""
    return per_sample_losses(model, params, frozen, x, y).mean()


def flatten(tensors: Params, batch_dims: int = 0) -> torch.Tensor:
    """Concatenate a dict of tensors into one vector (or [B, P] with batch_dims=1), in dict order."""
    return torch.cat([t.reshape(*t.shape[:batch_dims], -1) for t in tensors.values()], dim=-1)


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    """Inverse of `flatten` for a vector [P] or batch [B, P]."""
    out, i = {}, 0
    lead = vec.shape[:-1]
    for k, t in like.items():
        out[k] = vec[..., i:i + t.numel()].reshape(*lead, *t.shape)
        i += t.numel()
    return out


def per_sample_grads(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                     chunk: int = 256) -> torch.Tensor:
    """Flattened gradient of each sample's loss w.r.t. params, [B, P], by vmap(grad) in chunks."""
    def one(p, xi, yi):
        return per_sample_losses(model, p, frozen, xi.unsqueeze(0), yi.unsqueeze(0)).squeeze(0)

    g = vmap(grad(one), in_dims=(None, 0, 0))
    return torch.cat([flatten(g(params, x[i:i + chunk], y[i:i + chunk]), batch_dims=1)
                      for i in range(0, len(x), chunk)])


# ---------------------------------------------------------------- stacked members (vmap over models)
def stack(params: Params, k: int) -> Params:
    """K independent copies of `params`, stacked on a new leading member dimension."""
    return {n: t.detach().unsqueeze(0).expand(k, *t.shape).clone() for n, t in params.items()}


def use_vmap(device: torch.device, vectorize: bool | None) -> bool:
    """Whether to vmap over ensemble members: by default on CUDA only.

    Measured on CPU (bench/README.md): vmapping a conv over members turns it into a grouped
    convolution that is ~1.6-1.8x slower than a Python loop of ordinary batched calls, one per
    member; on a GPU one vmapped kernel for all members is what fills the device.
    """
    return device.type == "cuda" if vectorize is None else vectorize


def member(stacked: Params, k: int) -> Params:
    """Member k of stacked parameters."""
    return {n: t[k] for n, t in stacked.items()}


def member_losses(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                  chunk: int = 4096, vectorize: bool | None = None) -> torch.Tensor:
    """Per-sample losses of every stacked member on every sample, [K, M]; at most ~`chunk` (member, sample) pairs at once."""
    k = next(iter(stacked.values())).shape[0]
    with torch.no_grad():
        if not use_vmap(x.device, vectorize):
            return torch.stack([torch.cat([per_sample_losses(model, member(stacked, j), frozen, x[i:i + chunk],
                                                             y[i:i + chunk]) for i in range(0, len(x), chunk)])
                                for j in range(k)])
        f = vmap(lambda p, xx, yy: per_sample_losses(model, p, frozen, xx, yy), in_dims=(0, None, None))
        step = max(1, chunk // max(k, 1))
        return torch.cat([f(stacked, x[i:i + step], y[i:i + step]) for i in range(0, len(x), step)], dim=1)


def ensemble_losses(model: nn.Module, stacked: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                    member_chunk: int = 64, pair_chunk: int = 4096, vectorize: bool | None = None) -> torch.Tensor:
    """`member_losses` with the members themselves also processed `member_chunk` at a time, [K, M]."""
    k = next(iter(stacked.values())).shape[0]
    return torch.cat([member_losses(model, {n: t[i:i + member_chunk] for n, t in stacked.items()}, frozen, x, y,
                                    pair_chunk, vectorize) for i in range(0, k, member_chunk)])


# ---------------------------------------------------------------- functional Adam
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
    """One step of torch.optim.Adam(lr, weight_decay) in place, op for op (L2 added to the gradient, torch's bias corrections).

    Elementwise, so it applies unchanged to member-stacked tensors (each member keeps its own moments).
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


# ---------------------------------------------------------------- Hessian-vector products
def batched_hvp(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                vectors: torch.Tensor, data_chunk: int | None = None, vec_chunk: int = 64) -> torch.Tensor:
    """H v for a batch of flattened vectors [R, P], H the Hessian of the mean loss on (x, y) (no weight decay).

    Forward-over-reverse (jvp of grad) vmapped over the vectors; with `data_chunk` the mean over
    the data is accumulated chunk by chunk (weights n_chunk / n), which bounds activation memory.
    """
    flat0 = flatten(params)
    n = len(x)
    data_chunk = data_chunk or n

    def loss_at(flat, xc, yc):
        return mean_loss(model, unflatten(flat, params), frozen, xc, yc)

    def hvp_one(v, xc, yc):
        return torch.func.jvp(lambda f: grad(loss_at)(f, xc, yc), (flat0,), (v,))[1]

    f = vmap(hvp_one, in_dims=(0, None, None))
    out = []
    for r in range(0, len(vectors), vec_chunk):
        v = vectors[r:r + vec_chunk]
        acc = torch.zeros_like(v)
        for i in range(0, n, data_chunk):
            xc, yc = x[i:i + data_chunk], y[i:i + data_chunk]
            acc += f(v, xc, yc) * (len(xc) / n)
        out.append(acc)
    return torch.cat(out) if out else vectors.clone()
