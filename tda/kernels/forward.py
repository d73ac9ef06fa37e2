"""The paper's CNNs (conv-GELU-maxpool blocks, then linear-GELU-linear) on the CPU: per-sample losses, gradients.

On the CPU a member's training step through autograd spends more time outside the matrix products
than in them (NCHW max-pooling, GELU's backward at every position, reorders). Here activations are
channels-last; the conv-GELU-pool blocks are those of `blocks` (C kernels where there is a
compiler, else a GEMM over an im2col of only the positions the floor pooling keeps and torch's
channels-last max-pool); the linear layers are GEMMs; every buffer is reused across members and
steps. Parameters are in the kernel layout of `layout`.

Only the order of floating-point sums (and, in float32, GELU's last bits) differs from the model's
own forward and backward. (Where two entries of a pooling window tie up to rounding, that can hand
the window's gradient to the other.)
"""
from __future__ import annotations

import torch

from . import blocks as B
from . import native
from .blocks import Buf, Workspace
from .layout import CNNSpec, views


def first_cols(spec: CNNSpec, x: torch.Tensor) -> torch.Tensor:
    """The first layer's im2col of NCHW inputs (shared by every member)."""
    return B.padded_cols(x.permute(0, 2, 3, 1), spec.convs[0])


def conv_forward(spec: CNNSpec, p: dict[str, torch.Tensor], cols1: torch.Tensor, b: int, ws: Workspace,
                 save: bool, keep_cols: bool = False) -> tuple[torch.Tensor, list[B.Block]]:
    """Every conv-GELU-pool block; returns the pooled channels-last output [B, hp * wp * C] and what backward needs.

    keep_cols: every saved block holds its im2col (no block is computed directly from its input)."""
    saved, cols, x = [], cols1, None
    for li, layer in enumerate(spec.convs):
        w, bias = p[f"{layer.name}.weight"], p[f"{layer.name}.bias"]
        if li == 0 and native.fuses(cols.dtype, cols.shape[1], layer.c_out):
            pooled, blk = B.first_block(ws, cols, w, bias, b, layer, save)
        elif li > 0 and not keep_cols and native.applies(x.dtype, layer.c_out):
            pooled, blk = B.direct_block(ws, li, x, w, bias, b, layer, save)
        else:
            cols = cols if li == 0 else B.block_cols(ws, li, x, layer)
            z = torch.addmm(bias, cols, w, out=ws.get(Buf.Z, li, (b * 4 * layer.hp * layer.wp, layer.c_out),
                                                      cols.dtype))
            pooled, blk = B.pooled_block(ws, li, z, b, layer, save)
            blk = blk._replace(cols=cols) if save else None
        if save:
            saved.append(blk)
        if li + 1 < len(spec.convs):
            nxt, x = spec.convs[li + 1], pooled
            if nxt.pad:
                x = B.padded_input(ws, li + 1, b, nxt, pooled.dtype)
                B.interior(x, nxt).copy_(pooled)
    return pooled.view(b, -1), saved


def logits(spec: CNNSpec, p: dict[str, torch.Tensor], cols1: torch.Tensor, b: int, ws: Workspace) -> torch.Tensor:
    """Outputs [B, classes] of one member (kernel-layout views `p`) on b samples given by their first im2col (in a
    workspace buffer: valid until the next forward)."""
    h, _ = conv_forward(spec, p, cols1, b, ws, save=False)
    for j, (name, _, n_out) in enumerate(spec.fcs):
        h = torch.addmm(p[f"{name}.bias"], h, p[f"{name}.weight"], out=ws.get(Buf.FC_OUT, j, (b, n_out), h.dtype))
        if j + 1 < len(spec.fcs):
            h = B.gelu_into(h, ws.get(Buf.FC_GELU, j, (b, n_out), h.dtype))
    return h


def loss_grad(spec: CNNSpec, p: dict[str, torch.Tensor], cols1: torch.Tensor, onehot: torch.Tensor, w: torch.Tensor,
              g: dict[str, torch.Tensor], ws: Workspace, per_sample: bool = False,
              fc_factors: list | None = None) -> None:
    """Gradient of one member's loss sum_b w_b CE_b (labels as one-hot rows) into the kernel-layout views `g`.

    per_sample: instead the gradient of every w_b CE_b on its own, into views with a leading sample dimension.
    fc_factors (with per_sample): a list that receives, per linear layer, copies of its inputs [B, in] and of
    the gradients at its outputs [B, out] (the factors of its per-sample gradients) instead of the
    gradients themselves; `g` then needs only the convolutions' views.
    """
    b = len(onehot)
    pooled, saved = conv_forward(spec, p, cols1, b, ws, save=True)
    h, fc_saved = pooled, []
    for j, (name, _, n_out) in enumerate(spec.fcs):
        z = torch.addmm(p[f"{name}.bias"], h, p[f"{name}.weight"], out=ws.get(Buf.FC_OUT, j, (b, n_out), h.dtype))
        fc_saved.append((h, z))
        if j + 1 < len(spec.fcs):
            h = B.gelu_into(z, ws.get(Buf.FC_GELU, j, (b, n_out), h.dtype))
    # d(loss)/d(logits) = (softmax - onehot) * w_b
    d = torch.softmax(z, 1).sub_(onehot).mul_(w.unsqueeze(1))
    for j in reversed(range(len(spec.fcs))):
        name, h_in = spec.fcs[j][0], fc_saved[j][0]
        if fc_factors is not None:
            fc_factors.insert(0, (h_in.clone(), d.clone()))
        elif per_sample:
            torch.mul(h_in.unsqueeze(2), d.unsqueeze(1), out=g[f"{name}.weight"])
            g[f"{name}.bias"].copy_(d)
        else:
            torch.mm(h_in.t(), d, out=g[f"{name}.weight"])
            torch.sum(d, 0, out=g[f"{name}.bias"])
        dh = torch.mm(d, p[f"{name}.weight"].t(), out=ws.get(Buf.FC_DIN, j, (b, h_in.shape[1]), d.dtype))
        d = torch.ops.aten.gelu_backward(dh, fc_saved[j - 1][1]) if j > 0 else dh
    for li in reversed(range(len(spec.convs))):
        layer = spec.convs[li]
        d = B.block_backward(ws, li, layer, saved[li], d, p[f"{layer.name}.weight"], g[f"{layer.name}.weight"],
                             g[f"{layer.name}.bias"], b, per_sample)


def per_sample_grads(spec: CNNSpec, p: dict[str, torch.Tensor], cols1: torch.Tensor, onehot: torch.Tensor,
                     ws: Workspace) -> torch.Tensor:
    """Flat kernel-layout gradient of each sample's own loss CE_b, [B, P] (one batched backward)."""
    out = cols1.new_empty(len(onehot), spec.numel)
    loss_grad(spec, p, cols1, onehot, cols1.new_ones(len(onehot)), views(spec, out), ws, per_sample=True)
    return out
