"""Curvature-vector products of the mean training loss (its Hessian, or its Gauss-Newton matrix), batched over many
vectors, for any model through `torch.func`."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap

from .functional import Loss, Params, cross_entropy, flatten, logits, mean_loss, unflatten

HESSIANS = ("exact", "gauss-newton")


def batched_hvp(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor,
                vectors: torch.Tensor, data_chunk: int | None = None, vec_chunk: int = 64,
                loss: Loss = cross_entropy) -> torch.Tensor:
    """H v for a batch of flattened vectors [R, P], H the Hessian of the mean loss on (x, y) (no weight decay).

    Forward-over-reverse (jvp of grad) vmapped over the vectors; with `data_chunk` the mean over the
    data is accumulated chunk by chunk (weights n_chunk / n), which bounds activation memory.
    """
    n = len(x)
    data_chunk = data_chunk or n
    flat0 = flatten(params)

    def loss_at(flat, xc, yc):
        return mean_loss(model, unflatten(flat, params), frozen, xc, yc, loss)

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


def output_hessians(z: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Each sample's Hessian of the loss w.r.t. its own outputs, [B, C, C] (C = the outputs per sample, flattened)."""
    def one(zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss(zi.unsqueeze(0), yi.unsqueeze(0)).squeeze(0)

    c = z[0].numel() if len(z) else 0
    return vmap(torch.func.hessian(one))(z, y).reshape(len(z), c, c)


def batched_gnvp(model: nn.Module, params: Params, frozen: Params, x: torch.Tensor, vectors: torch.Tensor,
                 data_chunk: int | None = None, vec_chunk: int = 64, y: torch.Tensor | None = None,
                 loss: Loss = cross_entropy) -> torch.Tensor:
    """G v for a batch of flattened vectors [R, P], G = mean_n J_n^T H_n J_n the Gauss-Newton matrix of the mean
    loss on (x, y): positive semi-definite wherever the loss is convex in the outputs.

    J_n is the Jacobian of sample n's outputs w.r.t. the parameters and H_n the Hessian of its loss w.r.t. its
    outputs: for cross-entropy diag(p_n) - p_n p_n^T with p_n the softmax (in closed form; labels do not enter),
    for any other loss `torch.func.hessian` of the per-sample loss, vmapped over the samples. Matrix-free: J v by
    forward mode (jvp), H_n applied per sample, then J^T by reverse mode (vjp), vmapped over the vectors; with
    `data_chunk` the mean is accumulated chunk by chunk.
    """
    if loss is not cross_entropy and y is None:
        raise ValueError("the Gauss-Newton product of a loss other than cross-entropy needs the targets y")
    flat0 = flatten(params)
    n = len(x)
    data_chunk = data_chunk or n
    out = []
    for r in range(0, len(vectors), vec_chunk):
        v = vectors[r:r + vec_chunk]
        acc = torch.zeros_like(v)
        for i in range(0, n, data_chunk):
            xc = x[i:i + data_chunk]

            def logits_at(flat: torch.Tensor, xc: torch.Tensor = xc) -> torch.Tensor:
                return logits(model, unflatten(flat, params), frozen, xc)

            z, pullback = torch.func.vjp(logits_at, flat0)
            ju = vmap(lambda vec: torch.func.jvp(logits_at, (flat0,), (vec,))[1])(v)      # J v: [R, B, C]
            if loss is cross_entropy:
                p = torch.softmax(z.detach(), dim=-1)                                     # [B, C]
                hu = p * ju - p * (p * ju).sum(-1, keepdim=True)                          # (diag(p) - p p^T) J v
            else:
                h = output_hessians(z.detach(), y[i:i + data_chunk], loss)                # [B, C, C]
                hu = torch.einsum("bcd,rbd->rbc", h, ju.reshape(*ju.shape[:2], -1)).reshape(ju.shape)
            acc += vmap(pullback)(hu)[0] * (1.0 / n)                                      # J^T (...): [R, P]
        out.append(acc)
    return torch.cat(out) if out else vectors.clone()
