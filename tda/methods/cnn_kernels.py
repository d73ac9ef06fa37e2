"""The paper's CNNs (conv-GELU-maxpool blocks, then linear-GELU-linear) as large matrix products, forward and backward.

On the CPU a member's training step through autograd spends more time outside the matrix products
than in them (NCHW max-pooling, GELU's backward at every position, reorders). Here activations are
channels-last and each convolution is one GEMM over an im2col of only the positions the floor
pooling keeps; pooling is torch's own channels-last kernel (the first maximum of a window wins, as
in the model); GELU's derivative is taken only at the positions the pool selected; every buffer is
reused across members and steps. Parameters are in the kernel layout of `cnn_layout`.

Only the order of floating-point sums differs from the model's own forward and backward. (Where two
entries of a pooling window tie up to rounding, that can hand the window's gradient to the other.)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import native
from .cnn_layout import CNNSpec, ConvLayer, cnn_spec, from_kernel, to_kernel, views  # noqa: F401 - the kernels' API

Workspace = dict


# ---------------------------------------------------------------- building blocks
def _buf(ws: Workspace, tag: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable buffer (kept in the workspace across members and steps); its contents are stale."""
    key = (tag, shape, like.dtype)
    if key not in ws:
        ws[key] = torch.empty(shape, dtype=like.dtype)
    return ws[key]


def _windows(a: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    """Strided view [B, 2 hp, 2 wp, k, k, C] of a padded channels-last input: the im2col of the pooled outputs only."""
    b, sb, sh, sw, sc = a.shape[0], *a.stride()
    k = layer.k
    return a.as_strided((b, 2 * layer.hp, 2 * layer.wp, k, k, layer.c_in), (sb, sh, sw, sh, sw, sc),
                        a.storage_offset())


def im2col(a: torch.Tensor, layer: ConvLayer, out: torch.Tensor | None = None) -> torch.Tensor:
    """im2col [B * 2hp * 2wp, k * k * C] of a channels-last input [B, h + 2pad, w + 2pad, C], pooled positions only."""
    v = _windows(a, layer)
    if out is None:
        return v.reshape(-1, layer.k * layer.k * layer.c_in)
    out = out.view(v.shape)
    out.copy_(v)
    return out.view(-1, layer.k * layer.k * layer.c_in)


def first_cols(spec: CNNSpec, x: torch.Tensor) -> torch.Tensor:
    """The first layer's im2col of NCHW inputs (shared by every member)."""
    layer = spec.convs[0]
    a = x.permute(0, 2, 3, 1)
    if layer.pad:
        a = F.pad(a, (0, 0, layer.pad, layer.pad, layer.pad, layer.pad))
    return im2col(a, layer)


def _padded(ws: Workspace, tag: str, b: int, layer: ConvLayer, like: torch.Tensor) -> torch.Tensor:
    """A zero-bordered channels-last input buffer [B, h + 2 pad, w + 2 pad, C] (only its interior is ever written)."""
    p = layer.pad
    key = (tag, (b, layer.h + 2 * p, layer.w + 2 * p, layer.c_in), like.dtype)
    if key not in ws:
        ws[key] = torch.zeros(key[1], dtype=like.dtype)
    return ws[key]


def _interior(a: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    p = layer.pad
    return a[:, p:p + layer.h, p:p + layer.w] if p else a


def _gelu(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu.out(z, out=out)


def _nchw(t: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """A channels-last buffer seen as the NCHW tensor torch's pooling kernels take (no copy)."""
    return t.view(b, h, w, -1).permute(0, 3, 1, 2)


_POOL = ([2, 2], [2, 2], [0, 0], [1, 1], False)


def _offsets(ws: Workspace, li: int, b: int, positions: int, pooled: int, c: int) -> torch.Tensor:
    """Flat offsets b * positions * C + c of every pooled entry of a [B, positions, C] buffer, [B, pooled, C]."""
    key = ("offsets", li, b, positions, pooled, c)
    if key not in ws:
        ws[key] = (torch.arange(b).view(b, 1, 1) * positions * c + torch.arange(c)).expand(b, pooled, c).contiguous()
    return ws[key]


class Block(NamedTuple):
    """What a conv-GELU-pool block's backward needs: its im2col (None for a block computed directly from its
    input x, whose backward forms it), pre-activations z (the buffer then takes dz; None where z was never
    written), the pool's winners (grid positions [B, hp, wp, C]), z there [B, hp*wp, C], and GELU' there
    (C kernels) or GELU's outputs on the whole grid (torch's ops)."""

    cols: torch.Tensor | None
    z: torch.Tensor | None
    idx: torch.Tensor
    z_sel: torch.Tensor
    d_sel: torch.Tensor | None  # GELU'(z_sel) (C kernels)
    a: torch.Tensor | None  # GELU(z) on the whole grid (torch's ops)
    x: torch.Tensor | None = None  # the block's channels-last input, padding included (direct blocks)


def _gelu_pool(ws: Workspace, li: int, z: torch.Tensor, b: int, layer: ConvLayer,
               save: bool) -> tuple[torch.Tensor, Block | None]:
    """maxpool2(GELU(z)) [B, hp, wp, C] of a block's pre-activations, and (save) what its backward needs."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    pooled = _buf(ws, f"p{li}", (b, hp, wp, c), z)
    if native.applies(z.dtype, c):
        idx = _buf(ws, f"i{li}", (b, hp, wp, c), torch.empty(0, dtype=torch.int32))
        z_sel, d_sel = (_buf(ws, f"{t}{li}", (b, hp * wp, c), z) for t in ("s", "ds")) if save else (None, None)
        native.gelu_pool(z, b, hp, wp, pooled, idx, z_sel, d_sel)
        return pooled, Block(None, z, idx, z_sel, d_sel, None) if save else None
    a = _gelu(z, _buf(ws, f"a{li}", tuple(z.shape), z))
    idx = _buf(ws, f"i{li}", (b, hp, wp, c), torch.empty(0, dtype=torch.long))
    torch.ops.aten.max_pool2d_with_indices.out(_nchw(a, b, 2 * hp, 2 * wp), *_POOL,
                                               out=_nchw(pooled, b, hp, wp), indices=_nchw(idx, b, hp, wp))
    if not save:
        return pooled, None
    # z at the selected positions (for GELU's derivative there): flat offsets b*4hp*wp*C + idx*C + c
    flat = torch.add(_offsets(ws, li, b, 4 * hp * wp, hp * wp, c), idx.view(b, -1, c), alpha=c,
                     out=_buf(ws, f"o{li}", (b, hp * wp, c), idx))
    z_sel = torch.index_select(z.view(-1), 0, flat.view(-1), out=_buf(ws, f"s{li}", (b * hp * wp * c,), z))
    return pooled, Block(None, z, idx, z_sel.view(b, hp * wp, c), None, a)


def _conv_gelu_pool(ws: Workspace, cols: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, b: int,
                    layer: ConvLayer, save: bool) -> tuple[torch.Tensor, Block | None]:
    """The first block fused (C kernels): `_gelu_pool` of bias + cols w without writing z (Block.z is None)."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    pooled = _buf(ws, "p0", (b, hp, wp, c), cols)
    idx = _buf(ws, "i0", (b, hp, wp, c), torch.empty(0, dtype=torch.int32))
    z_sel, d_sel = (_buf(ws, f"{t}0", (b, hp * wp, c), cols) for t in ("s", "ds")) if save else (None, None)
    native.conv_gelu_pool(cols, w, bias, b, hp, wp, pooled, idx, z_sel, d_sel)
    return pooled, Block(cols, None, idx, z_sel, d_sel, None) if save else None


def _direct(ws: Workspace, li: int, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, b: int,
            layer: ConvLayer, save: bool) -> tuple[torch.Tensor, Block | None]:
    """A later block straight from its channels-last input (C kernels): no im2col, no z."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    pooled = _buf(ws, f"p{li}", (b, hp, wp, c), x)
    if not save:
        native.conv_direct_gelu_pool(x, w, bias, layer.k, hp, wp, pooled)
        return pooled, None
    idx = _buf(ws, f"i{li}", (b, hp, wp, c), torch.empty(0, dtype=torch.int32))
    z_sel, d_sel = (_buf(ws, f"{t}{li}", (b, hp * wp, c), x) for t in ("s", "ds"))
    native.conv_direct_gelu_pool(x, w, bias, layer.k, hp, wp, pooled, idx, z_sel, d_sel)
    return pooled, Block(None, None, idx, z_sel, d_sel, None, x)


def _gelu_pool_backward(ws: Workspace, li: int, d: torch.Tensor, blk: Block, b: int,
                        layer: ConvLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(gs, dz): the gradient at the selected pre-activations [B, hp*wp, C] and on the whole grid (in z's buffer)."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    gs = _buf(ws, f"gs{li}", (b, hp * wp, c), d)
    dz = blk.z  # z itself is no longer needed: its buffer takes the gradient
    if blk.d_sel is not None:
        native.gelu_pool_backward(d.reshape(b, hp * wp, c), blk.idx, blk.d_sel, b, hp, wp, gs, dz)
        return gs, dz
    torch.ops.aten.gelu_backward.grad_input(d.reshape(b, hp * wp, c), blk.z_sel,
                                            approximate="none", grad_input=gs)
    torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
        _nchw(gs, b, hp, wp), _nchw(blk.a, b, 2 * hp, 2 * wp), *_POOL, _nchw(blk.idx, b, hp, wp),
        grad_input=_nchw(dz, b, 2 * hp, 2 * wp))
    return gs, dz


def _cols(ws: Workspace, li: int, x: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    return im2col(x, layer, _buf(ws, f"c{li}", (len(x) * 4 * layer.hp * layer.wp, layer.k * layer.k * layer.c_in), x))


def _conv_forward(spec: CNNSpec, p: dict[str, torch.Tensor], cols1: torch.Tensor, b: int, ws: Workspace,
                  save: bool, keep_cols: bool = False) -> tuple[torch.Tensor, list[Block]]:
    """Every conv-GELU-pool block; returns the pooled channels-last output [B, hp * wp * C] and what backward needs.

    keep_cols: every saved block holds its im2col (no block is computed directly from its input)."""
    saved, cols, x = [], cols1, None
    for li, layer in enumerate(spec.convs):
        w, bias = p[f"{layer.name}.weight"], p[f"{layer.name}.bias"]
        if li == 0 and native.fuses(cols.dtype, cols.shape[1], layer.c_out):
            pooled, blk = _conv_gelu_pool(ws, cols, w, bias, b, layer, save)
        elif li > 0 and not keep_cols and native.applies(x.dtype, layer.c_out):
            pooled, blk = _direct(ws, li, x, w, bias, b, layer, save)
        else:
            cols = cols if li == 0 else _cols(ws, li, x, layer)
            z = torch.addmm(bias, cols, w, out=_buf(ws, f"z{li}", (b * 4 * layer.hp * layer.wp, layer.c_out), cols))
            pooled, blk = _gelu_pool(ws, li, z, b, layer, save)
            blk = blk._replace(cols=cols) if save else None
        if save:
            saved.append(blk)
        if li + 1 < len(spec.convs):
            nxt, x = spec.convs[li + 1], pooled
            if nxt.pad:
                x = _padded(ws, f"x{li + 1}", b, nxt, pooled)
                _interior(x, nxt).copy_(pooled)
    return pooled.view(b, -1), saved


def losses(spec: CNNSpec, p: dict[str, torch.Tensor], cols1: torch.Tensor, y: torch.Tensor,
           ws: Workspace) -> torch.Tensor:
    """Per-sample cross-entropy [B] of one member (kernel-layout views `p`) on samples given by their first im2col."""
    b = len(y)
    h, _ = _conv_forward(spec, p, cols1, b, ws, save=False)
    for j, (name, _, n_out) in enumerate(spec.fcs):
        h = torch.addmm(p[f"{name}.bias"], h, p[f"{name}.weight"], out=_buf(ws, f"f{j}", (b, n_out), h))
        if j + 1 < len(spec.fcs):
            h = _gelu(h, _buf(ws, f"g{j}", (b, n_out), h))
    return F.cross_entropy(h, y, reduction="none")


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
    pooled, saved = _conv_forward(spec, p, cols1, b, ws, save=True)
    h, fc_saved = pooled, []
    for j, (name, _, n_out) in enumerate(spec.fcs):
        z = torch.addmm(p[f"{name}.bias"], h, p[f"{name}.weight"], out=_buf(ws, f"f{j}", (b, n_out), h))
        fc_saved.append((h, z))
        if j + 1 < len(spec.fcs):
            h = _gelu(z, _buf(ws, f"g{j}", (b, n_out), h))
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
        dh = torch.mm(d, p[f"{name}.weight"].t(), out=_buf(ws, f"d{j}", (b, h_in.shape[1]), d))
        d = torch.ops.aten.gelu_backward(dh, fc_saved[j - 1][1]) if j > 0 else dh
    for li in reversed(range(len(spec.convs))):
        layer = spec.convs[li]
        d = _conv_backward(ws, li, layer, saved[li], d, p[f"{layer.name}.weight"], g[f"{layer.name}.weight"],
                           g[f"{layer.name}.bias"], b, per_sample)


def _conv_backward(ws: Workspace, li: int, layer: ConvLayer, blk: Block, d: torch.Tensor, w: torch.Tensor,
                   gw: torch.Tensor, gb: torch.Tensor, b: int, per_sample: bool) -> torch.Tensor | None:
    """One block's backward from the gradient d at its pooled output: its weight and bias gradients into gw, gb
    (per sample: with a leading sample dimension); returns the gradient at its input (None for the first block)."""
    c, hw = layer.c_out, layer.hp * layer.wp
    d = d.reshape(b, hw, c)
    if blk.x is not None:  # a direct block: each window passes one gradient per channel, added patch by patch
        gs = torch.mul(d, blk.d_sel, out=_buf(ws, f"gs{li}", (b, hw, c), d))
        taps = layer.k * layer.k * layer.c_in
        dw_t = _buf(ws, f"dwt{li}", (b, c, taps) if per_sample else (c, taps), d)
        native.pool_conv_backward_weight(blk.x, gs, blk.idx, layer.k, layer.hp, layer.wp, dw_t)
        gw.copy_(dw_t.transpose(-1, -2))
    elif blk.z is None:  # the fused first block: its weight gradient from the winners' im2col rows
        gs = _buf(ws, "gs0", (b, hw, c), d)
        native.conv_gelu_pool_backward(blk.cols, d.contiguous(), blk.idx, blk.d_sel, b, layer.hp, layer.wp, gs, gw)
    else:
        gs, dz = _gelu_pool_backward(ws, li, d, blk, b, layer)
        if per_sample:
            gw.copy_(torch.bmm(blk.cols.view(b, -1, blk.cols.shape[1]).transpose(1, 2), dz.view(b, -1, c)))
        else:
            torch.mm(blk.cols.t(), dz, out=gw)
    torch.sum(gs, 1, out=gb) if per_sample else torch.sum(gs.view(-1, c), 0, out=gb)
    if li == 0:
        return None
    dx = _buf(ws, f"dx{li}", (b, layer.h + 2 * layer.pad, layer.w + 2 * layer.pad, layer.c_in), d)
    if blk.x is not None:
        native.pool_conv_backward_input(gs, blk.idx, w.t().contiguous(), layer.k, layer.hp, layer.wp, dx)
        return _interior(dx, layer)
    return _col2im(torch.mm(dz, w.t(), out=blk.cols), layer, dx)  # the block's im2col (li > 0) is used up


def _col2im(dcols: torch.Tensor, layer: ConvLayer, out: torch.Tensor) -> torch.Tensor:
    """Adjoint of `im2col`: every column's gradient summed back onto the input, [B, h, w, C] (padding cropped).

    For a kernel row ky, the k column taps of output x land on input x..x+k-1: one contiguous run of
    k*C values; outputs x congruent mod k land on disjoint runs, so each (ky, x mod k) is one add.
    """
    b, k, c, h2, w2 = out.shape[0], layer.k, layer.c_in, 2 * layer.hp, 2 * layer.wp
    out.zero_()
    v = dcols.view(b, h2, w2, k, k * c)
    rows = out.view(b, out.shape[1], -1)
    for ky in range(k):
        for r in range(min(k, w2)):
            n = len(range(r, w2, k))
            rows[:, ky:ky + h2, r * c:(r + n * k) * c].view(b, h2, n, k * c).add_(v[:, :, r::k, ky])
    return _interior(out, layer)


def per_sample_grads(spec: CNNSpec, p: dict[str, torch.Tensor], cols1: torch.Tensor, onehot: torch.Tensor,
                     ws: Workspace) -> torch.Tensor:
    """Flat kernel-layout gradient of each sample's own loss CE_b, [B, P] (one batched backward)."""
    out = cols1.new_empty(len(onehot), spec.numel)
    loss_grad(spec, p, cols1, onehot, cols1.new_ones(len(onehot)), views(spec, out), ws, per_sample=True)
    return out
