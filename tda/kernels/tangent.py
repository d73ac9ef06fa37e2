"""Hessian-vector products of the paper's CNNs with the conv blocks' tangents in C (`native_hvp`), R vectors at once.

Pearlmutter's R-operator (forward over reverse) as in `hvp`, with every convolution's tangent work done
where it matters: a max-pool passes on one entry per window and channel (its winner, fixed by the primal
pass), so the tangent pre-activations are computed at the winners only (all four positions of a window in
registers, the winner's kept: no im2col, no tangent grid in memory), and the backward adds each winner's
input patch (weights) or weight row (inputs), never the three zeros beside it. Each convolution's two
tangent terms (primal input x tangent weights, tangent input x primal weights) are summed in the same
pass. The linear layers are matrix products over all R vectors at once, shared with `hvp`'s torch path.
Only the order of floating-point sums differs from `torch.func.jvp(grad(loss))`.
"""
from __future__ import annotations

import math

import torch

from . import blocks as B
from . import forward as K
from . import native_hvp as NH
from .blocks import Workspace
from .layout import CNNSpec, one_hot, views


def gelu_d2(z: torch.Tensor) -> torch.Tensor:
    """GELU''(z) = phi(z) (2 - z^2)."""
    return torch.exp(-0.5 * z * z).mul_(1 / math.sqrt(2 * math.pi)).mul_(2 - z * z)


def fc_primal(spec: CNNSpec, p: dict, h: torch.Tensor, y: torch.Tensor) -> list:
    """The linear layers' primal forward and backward (mean cross-entropy on y) from the flattened conv output
    h [B, F]: per layer (input, pre-activation, GELU' there or None, the gradient at its output)."""
    layers = []
    for j, (name, _, _) in enumerate(spec.fcs):
        z = torch.addmm(p[f"{name}.bias"], h, p[f"{name}.weight"])
        g1 = torch.ops.aten.gelu_backward(torch.ones_like(z), z) if j + 1 < len(spec.fcs) else None
        layers.append([h, z, g1, None])
        if g1 is not None:
            h = torch.nn.functional.gelu(z)
    d = (torch.softmax(z, 1) - one_hot(spec, y, z.dtype)) / len(y)
    for j in reversed(range(len(spec.fcs))):
        layers[j][3] = d
        if j > 0:
            d = (d @ p[f"{spec.fcs[j][0]}.weight"].t()) * layers[j - 1][2]
    return layers


def fc_forward(spec: CNNSpec, p: dict, t: dict, layers: list, dh: torch.Tensor) -> list:
    """The linear layers' tangent forward from the conv output's tangents dh [R, B, F]: per layer (the input's
    tangents, the pre-activations' tangents, the primal output gradient times each vector's transposed weights).
    Each vector's tangent weights are read once, for both of their products (the second one for the backward)."""
    out, r = [], len(dh)
    for j, (name, _, _) in enumerate(spec.fcs):
        h, _, g1, d = layers[j]
        tw = t[f"{name}.weight"]
        dz = torch.matmul(dh, p[f"{name}.weight"]).add_(t[f"{name}.bias"].unsqueeze(1))
        u = dh.new_empty(r, len(h), h.shape[1])
        for k in range(r):
            dz[k].addmm_(h, tw[k])
            torch.mm(d, tw[k].t(), out=u[k])
        out.append((dh, dz, u))
        if g1 is not None:
            dh = dz * g1
    return out


def fc_backward(spec: CNNSpec, p: dict, g: dict, layers: list, tangents: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear layers' H v into `g`; returns the primal gradient d [B, F] and its tangents dd [R, B, F] at the
    conv output. Each vector's weight gradient is one product over the primal and tangent factors stacked,
    [dh h]^T [d dd], written in place."""
    z, dz = layers[-1][1], tangents[-1][1]
    r, b = len(dz), len(z)
    prob = torch.softmax(z, 1)
    dd = (prob * dz - prob * (prob * dz).sum(2, keepdim=True)) / b
    for j in reversed(range(len(spec.fcs))):
        name = spec.fcs[j][0]
        (h, _, _, d), (dh, _, u) = layers[j], tangents[j]
        w_, gw = p[f"{name}.weight"], g[f"{name}.weight"]
        left = torch.cat([dh, h.expand(r, -1, -1)], 1)  # [R, 2B, in]
        right = torch.cat([d.expand(r, -1, -1), dd], 1)  # [R, 2B, out]
        for k in range(r):
            torch.mm(left[k].t(), right[k], out=gw[k])
        g[f"{name}.bias"].copy_(dd.sum(1))
        dd_in = torch.matmul(dd, w_.t()).add_(u)
        if j > 0:
            _, zp, g1, _ = layers[j - 1]
            dd = dd_in.mul_(g1).add_((d @ w_.t()) * gelu_d2(zp) * tangents[j - 1][1])
        else:
            dd = dd_in
    return layers[0][3] @ p[f"{spec.fcs[0][0]}.weight"].t(), dd


def applies(spec: CNNSpec, dtype: torch.dtype) -> bool:
    """Whether the C kernels compute this CNN's tangents in `dtype` (every block's channels a multiple of the lanes)."""
    return NH.applies(dtype, [c.c_out for c in spec.convs])


def hvp(spec: CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, vectors: torch.Tensor,
        out: torch.Tensor | None = None) -> torch.Tensor:
    """H v [R, P] for kernel-layout vectors v [R, P], H the Hessian of the mean cross-entropy on (x, y) at `flat`;
    into `out` when given (not the vectors' own memory)."""
    b, r = len(y), len(vectors)
    p, t = views(spec, flat), views(spec, vectors)
    out = torch.empty_like(vectors) if out is None else out
    g = views(spec, out)
    convs = spec.convs
    with torch.no_grad():
        pooled, saved = K.conv_forward(spec, p, K.first_cols(spec, x), b, Workspace(), save=True)
        dzs, xts, xt = [], [], None  # per block: tangent pre-activations at the winners, tangent (padded) input
        for li, (layer, blk) in enumerate(zip(convs, saved)):
            name, c, hp, wp = layer.name, layer.c_out, layer.hp, layer.wp
            dz, nxt, pad = x.new_empty(r, b, hp * wp, c), None, 0
            if li + 1 < len(convs):  # the kernel writes the next block's tangent input, GELU' applied
                pad = convs[li + 1].pad
                nxt = x.new_empty(r, b, hp + 2 * pad, wp + 2 * pad, c)
            tw, tb = t[f"{name}.weight"], t[f"{name}.bias"]
            gain = blk.d_sel if nxt is not None else None
            if li == 0:
                NH.cols_winners(blk.cols, tw, tb, blk.idx, r, b, hp, wp, dz, gain, nxt, pad)
            else:
                NH.conv_winners(blk.x, tw, xt, p[f"{name}.weight"], tb, blk.idx, r, b, layer.k, hp, wp, dz, gain, nxt,
                                pad)
            dzs.append(dz)
            xts.append(xt)
            xt = nxt
        last = convs[-1]
        da = dzs[-1] * saved[-1].d_sel  # the last pooled output's tangents [R, B, n, C]
        layers = fc_primal(spec, p, pooled.view(b, -1), y)
        d, dd = fc_backward(spec, p, g, layers, fc_forward(spec, p, t, layers, da.view(r, b, -1)))
        d = d.reshape(b, last.hp * last.wp, last.c_out)
        dgs = (dd.view(r, *d.shape) * saved[-1].d_sel).add_((d * gelu_d2(saved[-1].z_sel)) * dzs[-1])
        for li in reversed(range(len(convs))):
            layer, blk = convs[li], saved[li]
            name, c, hp, wp = layer.name, layer.c_out, layer.hp, layer.wp
            g[f"{name}.bias"].copy_(dgs.view(r, -1, c).sum(1))
            if li == 0:
                NH.cols_backward_weight(blk.cols, dgs, blk.idx, r, b, hp, wp, g[f"{name}.weight"])
                break
            gs = d * blk.d_sel  # the primal gradient at the winners' pre-activations
            dw_t = x.new_empty(r, c, layer.k * layer.k * layer.c_in)
            NH.conv_backward_weight(blk.x, dgs, xts[li], gs, blk.idx, r, b, layer.k, hp, wp, dw_t)
            g[f"{name}.weight"].copy_(dw_t.transpose(1, 2))
            shape, w_t = tuple(blk.x.shape[1:]), p[f"{name}.weight"].t().contiguous()
            dx = x.new_empty(1, *blk.x.shape)
            NH.conv_backward_input(gs, w_t, None, None, blk.idx, 1, b, layer.k, hp, wp, dx, shape)
            prev, pb = convs[li - 1], saved[li - 1]
            d = B.interior(dx[0], layer).reshape(b, prev.hp * prev.wp, prev.c_out)
            dgs_prev = x.new_empty(r, b, prev.hp * prev.wp, prev.c_out)
            NH.conv_backward_input(dgs, w_t, gs, t[f"{name}.weight"].transpose(1, 2).contiguous(), blk.idx, r, b,
                                   layer.k, hp, wp, None, shape, (pb.d_sel, d * gelu_d2(pb.z_sel), dzs[li - 1], dgs_prev),
                                   layer.pad)
            dgs = dgs_prev
    return out
