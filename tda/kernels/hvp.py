"""Hessian-vector products of the paper's CNNs on the CPU, by hand: one shared forward and backward, R tangents batched.

Forward-over-reverse (Pearlmutter's R-operator) written out for conv-GELU-maxpool blocks and
linear-GELU layers, in the layout of `forward`. The primal forward and backward run once for
all R vectors; each layer's tangent work is a few large matrix products over all R at once. The
max-pool's selection is fixed by the primal indices (autograd's derivative of max-pooling), GELU's
second derivative is phi(z) (2 - z^2). Only the order of floating-point sums differs from
`torch.func.jvp(grad(loss))`.
"""
from __future__ import annotations

import torch

from ..engine.functional import Params, flatten, unflatten
from ..engine.memory import budget_bytes
from . import blocks as B
from . import forward as K
from . import tangent
from .blocks import Workspace
from .layout import CNNSpec, ConvLayer, from_kernel, to_kernel, views


def _gelu_d1(z: torch.Tensor) -> torch.Tensor:
    """GELU'(z) = Phi(z) + z phi(z) (exact, erf form)."""
    return torch.ops.aten.gelu_backward(torch.ones_like(z), z)


def _col2im(dcols: torch.Tensor, layer: ConvLayer, b: int) -> torch.Tensor:
    """Adjoint of `blocks.padded_cols`: [B, h, w, C] (padding cropped)."""
    p = layer.pad
    out = dcols.new_empty(b, layer.h + 2 * p, layer.w + 2 * p, layer.c_in)
    return B.col2im(dcols, layer, out)


def hvp(spec: CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, vectors: torch.Tensor,
        out: torch.Tensor | None = None) -> torch.Tensor:
    """H v [R, P] for kernel-layout vectors v [R, P], H the Hessian of the mean cross-entropy on (x, y) at `flat`
    (into `out` when given, not the vectors' memory): the conv blocks' tangents by the C kernels (`tangent`) where
    they apply, else by torch's ops."""
    if tangent.applies(spec, x.dtype):
        return tangent.hvp(spec, flat, x, y, vectors, out)
    return torch_hvp(spec, flat, x, y, vectors, out)


def torch_hvp(spec: CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, vectors: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """`hvp` with the conv blocks' tangents as torch's ops: each block's tangent pre-activations on the whole grid
    (a few large matrix products over all R vectors), gathered at the winners."""
    b, r = len(y), len(vectors)
    p, t = views(spec, flat), views(spec, vectors)
    out = torch.empty_like(vectors) if out is None else out
    g = views(spec, out)
    ws = Workspace()
    with torch.no_grad():
        # primal forward (shared by all R tangents), then the tangents' forward layer by layer
        pooled, saved = K.conv_forward(spec, p, K.first_cols(spec, x), b, ws, save=True, keep_cols=True)
        convs = []  # per conv: (cols, tangent cols or None, idx [B, hp*wp, C], z_sel, GELU'(z_sel), tangent z_sel)
        dcols = None
        for li, (layer, blk) in enumerate(zip(spec.convs, saved)):
            cols, idx, z_sel = blk.cols.clone(), blk.idx.view(b, -1, layer.c_out).long(), blk.z_sel.clone()
            name = layer.name
            dz = torch.matmul(cols, t[f"{name}.weight"]).add_(t[f"{name}.bias"].unsqueeze(1))  # [R, B*Q, C]
            if dcols is not None:
                dz += torch.mm(dcols, p[f"{name}.weight"]).view(r, -1, layer.c_out)
            q = 4 * layer.hp * layer.wp
            dz_sel = torch.gather(dz.view(r, b, q, -1), 2, idx.unsqueeze(0).expand(r, -1, -1, -1))
            g1 = _gelu_d1(z_sel)
            convs.append((cols, dcols, idx, z_sel, g1, dz_sel))
            da = dz_sel * g1  # the pooled outputs' tangent [R, B, hp*wp, C]
            if li + 1 < len(spec.convs):
                dcols = B.padded_cols(da.view(r * b, layer.hp, layer.wp, -1), spec.convs[li + 1])
        layers = tangent.fc_primal(spec, p, pooled.view(b, -1).clone(), y)
        d, dd = tangent.fc_backward(spec, p, g, layers, tangent.fc_forward(spec, p, t, layers, da.reshape(r, b, -1)))
        for li in reversed(range(len(spec.convs))):
            layer, (cols, dcols_in, idx, z_sel, g1, dz_sel) = spec.convs[li], convs[li]
            name, hw, c, q = layer.name, layer.hp * layer.wp, layer.c_out, 4 * layer.hp * layer.wp
            d, dd = d.reshape(b, hw, c), dd.reshape(r, b, hw, c)
            gs = d * g1
            dgs = dd * g1 + (d * tangent.gelu_d2(z_sel)) * dz_sel
            dz = torch.zeros(b, q, c, dtype=d.dtype).scatter_(1, idx, gs).view(b * q, c)
            ddz = torch.zeros(r, b, q, c, dtype=d.dtype).scatter_(2, idx.unsqueeze(0).expand(r, -1, -1, -1), dgs)
            ddz = ddz.view(r, b * q, c)
            gw = torch.matmul(cols.t(), ddz)
            if dcols_in is not None:
                gw += torch.matmul(dcols_in.view(r, b * q, -1).transpose(1, 2), dz)
            g[f"{name}.weight"].copy_(gw)
            g[f"{name}.bias"].copy_(dgs.sum((1, 2)))
            if li == 0:
                break
            w_, tw = p[f"{name}.weight"], t[f"{name}.weight"]
            d = _col2im(dz @ w_.t(), layer, b)
            ddc = torch.matmul(ddz, w_.t()).add_(torch.matmul(dz, tw.transpose(1, 2)))
            dd = _col2im(ddc.view(r * b * q, -1), layer, r * b)
    return out


def tangent_bytes(spec: CNNSpec, element_size: int) -> int:
    """Bytes `hvp` holds per vector and per sample for its tangents. torch's ops: each block's tangent
    pre-activations on the whole grid (and their gradient) and, past the first block, the tangent im2col (and its
    gradient); the C kernels: the tangents at the winners, each block's tangent input and its gradient."""
    per = 0
    native = tangent.applies(spec, torch.float32 if element_size == 4 else torch.float64)
    for li, c in enumerate(spec.convs):
        grid, padded = 4 * c.hp * c.wp, (c.h + 2 * c.pad) * (c.w + 2 * c.pad) * c.c_in
        if native:
            per += 4 * c.hp * c.wp * c.c_out + (2 * padded if li else 0)
        else:
            per += 3 * grid * c.c_out + (2 * grid * c.k * c.k * c.c_in if li else 0)
    per += sum(3 * n_out for _, _, n_out in spec.fcs)
    return per * element_size


def vector_chunk(spec: CNNSpec, x: torch.Tensor, data_chunk: int, vec_chunk: int, budget: int | None = None) -> int:
    """How many vectors `hvp` takes at once: at most `vec_chunk`, fewer where their tangents for `data_chunk`
    samples would not fit in `budget` bytes (default: this process's share of free memory)."""
    budget = budget_bytes(x.device) if budget is None else budget
    return max(1, min(vec_chunk, budget // max(1, data_chunk * tangent_bytes(spec, x.element_size()))))


def kernel_hvp(spec: CNNSpec, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, vectors: torch.Tensor,
               data_chunk: int | None = None, vec_chunk: int = 64, budget: int | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """`hvp` at the kernel-layout parameters `flat` for kernel-layout vectors [R, P] (a permutation of the
    flatten order: no conversion), into `out` when given (a buffer reused across calls: fresh ones of this size
    cost page faults): the mean over the data accumulated `data_chunk` samples at a time, at most
    `vector_chunk` vectors at a time."""
    n = len(x)
    data_chunk = min(data_chunk or n, n)
    chunk = vector_chunk(spec, x, data_chunk, vec_chunk, budget)
    out = torch.empty_like(vectors) if out is None else out
    for r in range(0, len(vectors), chunk):
        v, o = vectors[r:r + chunk], out[r:r + chunk]
        hvp(spec, flat, x[:data_chunk], y[:data_chunk], v, o)
        if data_chunk < n:
            o.mul_(data_chunk / n)
            for i in range(data_chunk, n, data_chunk):
                xc, yc = x[i:i + data_chunk], y[i:i + data_chunk]
                o.add_(hvp(spec, flat, xc, yc, v), alpha=len(xc) / n)
    return out


def model_hvp(spec: CNNSpec, params: Params, x: torch.Tensor, y: torch.Tensor, vectors: torch.Tensor,
              data_chunk: int | None = None, vec_chunk: int = 64, budget: int | None = None) -> torch.Tensor:
    """`kernel_hvp` for vectors [R, P] in the model's `functional.flatten` order."""
    out = torch.zeros_like(vectors)
    for r in range(0, len(vectors), vec_chunk):
        v = to_kernel(spec, unflatten(vectors[r:r + vec_chunk], params))
        hv = kernel_hvp(spec, to_kernel(spec, params), x, y, v, data_chunk, vec_chunk, budget)
        out[r:r + vec_chunk] = flatten(from_kernel(spec, hv), batch_dims=1)
    return out
