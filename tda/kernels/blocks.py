"""The conv-GELU-maxpool blocks of the CPU kernels (`forward`), forward and backward, on channels-last tensors.

A block is computed by the C kernels of `native` where they apply (the first convolution fused with
its pool; later convolutions directly from their input; the backward window by window) and by torch's
ops otherwise (a GEMM over an im2col of the positions the floor pooling keeps, torch's channels-last
max-pool with indices, GELU's derivative at the winners). Every buffer is reused across members and
steps through a `Workspace`.
"""
from __future__ import annotations

import enum
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from . import native
from .layout import ConvLayer


class Buf(enum.Enum):
    """What a workspace buffer holds; with the layer it belongs to, its shape and dtype it names one buffer."""

    COLS = "im2col of a block's input"
    Z = "a block's pre-activations (then their gradient)"
    POOLED = "a block's pooled output"
    INDICES = "the pool's winners"
    Z_SEL = "pre-activations at the winners"
    GELU_D = "GELU' at the winners"
    GELU_OUT = "GELU of the whole grid (torch's ops)"
    OFFSETS = "flat offsets of the pooled entries"
    SEL_OFFSETS = "flat offsets of the winners"
    GRAD_SEL = "the gradient at the winners"
    DW_T = "a direct block's transposed weight gradient"
    DX = "the gradient at a block's padded input"
    PADDED = "a block's zero-bordered input"
    FC_OUT = "a linear layer's output"
    FC_GELU = "GELU of a linear layer's output"
    FC_DIN = "the gradient at a linear layer's input"


class Workspace:
    """Buffers reused across members and steps, one per (what, layer, shape, dtype); their contents are stale."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, what: Buf, layer: int, shape: tuple[int, ...], dtype: torch.dtype,
            make: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """The buffer, allocated on first use (by `make` when given: e.g. zeroed once, or computed contents)."""
        key = (what, layer, tuple(shape), dtype)
        t = self._bufs.get(key)
        if t is None:
            t = self._bufs[key] = make() if make is not None else torch.empty(shape, dtype=dtype)
        return t


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


def padded_cols(a: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    """im2col (pooled positions only) of a channels-last input [B, h, w, C] without its padding: zeros added first."""
    if layer.pad:
        a = F.pad(a, (0, 0, layer.pad, layer.pad, layer.pad, layer.pad))
    return im2col(a, layer)


def padded_input(ws: Workspace, li: int, b: int, layer: ConvLayer, dtype: torch.dtype) -> torch.Tensor:
    """Block li's zero-bordered channels-last input buffer [B, h + 2 pad, w + 2 pad, C] (only its interior is ever
    written, so the border stays zero)."""
    p = layer.pad
    shape = (b, layer.h + 2 * p, layer.w + 2 * p, layer.c_in)
    return ws.get(Buf.PADDED, li, shape, dtype, lambda: torch.zeros(shape, dtype=dtype))


def interior(a: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    p = layer.pad
    return a[:, p:p + layer.h, p:p + layer.w] if p else a


def gelu_into(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu.out(z, out=out)


def _nchw(t: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """A channels-last buffer seen as the NCHW tensor torch's pooling kernels take (no copy)."""
    return t.view(b, h, w, -1).permute(0, 3, 1, 2)


_POOL = ([2, 2], [2, 2], [0, 0], [1, 1], False)


def _offsets(ws: Workspace, li: int, b: int, positions: int, pooled: int, c: int) -> torch.Tensor:
    """Flat offsets b * positions * C + c of every pooled entry of a [B, positions, C] buffer, [B, pooled, C]."""
    return ws.get(Buf.OFFSETS, li, (b, positions, pooled, c), torch.long, lambda: (
        torch.arange(b).view(b, 1, 1) * positions * c + torch.arange(c)).expand(b, pooled, c).contiguous())


class Block(NamedTuple):
    """What a conv-GELU-pool block's backward needs: its im2col (None for a direct block), pre-activations z
    (the buffer then takes dz; None where z was never written), the pool's winners (grid positions
    [B, hp, wp, C]), z there [B, hp*wp, C], and GELU' there (C kernels) or GELU's outputs on the whole grid
    (torch's ops); a direct block also its input x."""

    cols: torch.Tensor | None
    z: torch.Tensor | None
    idx: torch.Tensor
    z_sel: torch.Tensor
    d_sel: torch.Tensor | None  # GELU'(z_sel) (C kernels)
    a: torch.Tensor | None  # GELU(z) on the whole grid (torch's ops)
    x: torch.Tensor | None = None  # the block's channels-last input, padding included (direct blocks)


def pooled_block(ws: Workspace, li: int, z: torch.Tensor, b: int, layer: ConvLayer,
               save: bool) -> tuple[torch.Tensor, Block | None]:
    """maxpool2(GELU(z)) [B, hp, wp, C] of a block's pre-activations, and (save) what its backward needs."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    pooled = ws.get(Buf.POOLED, li, (b, hp, wp, c), z.dtype)
    if native.applies(z.dtype, c):
        idx = ws.get(Buf.INDICES, li, (b, hp, wp, c), torch.int32)
        z_sel, d_sel = (ws.get(t, li, (b, hp * wp, c), z.dtype) for t in (Buf.Z_SEL, Buf.GELU_D)) if save else (None, None)
        native.gelu_pool(z, b, hp, wp, pooled, idx, z_sel, d_sel)
        return pooled, Block(None, z, idx, z_sel, d_sel, None) if save else None
    a = gelu_into(z, ws.get(Buf.GELU_OUT, li, tuple(z.shape), z.dtype))
    idx = ws.get(Buf.INDICES, li, (b, hp, wp, c), torch.long)
    torch.ops.aten.max_pool2d_with_indices.out(_nchw(a, b, 2 * hp, 2 * wp), *_POOL,
                                               out=_nchw(pooled, b, hp, wp), indices=_nchw(idx, b, hp, wp))
    if not save:
        return pooled, None
    # z at the selected positions (for GELU's derivative there): flat offsets b*4hp*wp*C + idx*C + c
    flat = torch.add(_offsets(ws, li, b, 4 * hp * wp, hp * wp, c), idx.view(b, -1, c), alpha=c,
                     out=ws.get(Buf.SEL_OFFSETS, li, (b, hp * wp, c), idx.dtype))
    z_sel = torch.index_select(z.view(-1), 0, flat.view(-1), out=ws.get(Buf.Z_SEL, li, (b * hp * wp * c,), z.dtype))
    return pooled, Block(None, z, idx, z_sel.view(b, hp * wp, c), None, a)


def first_block(ws: Workspace, cols: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, b: int,
                    layer: ConvLayer, save: bool) -> tuple[torch.Tensor, Block | None]:
    """The first block fused (C kernels): `_gelu_pool` of bias + cols w without writing z (Block.z is None)."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    pooled = ws.get(Buf.POOLED, 0, (b, hp, wp, c), cols.dtype)
    idx = ws.get(Buf.INDICES, 0, (b, hp, wp, c), torch.int32)
    z_sel, d_sel = (ws.get(t, 0, (b, hp * wp, c), cols.dtype) for t in (Buf.Z_SEL, Buf.GELU_D)) if save else (None, None)
    native.conv_gelu_pool(cols, w, bias, b, hp, wp, pooled, idx, z_sel, d_sel)
    return pooled, Block(cols, None, idx, z_sel, d_sel, None) if save else None


def direct_block(ws: Workspace, li: int, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, b: int,
            layer: ConvLayer, save: bool) -> tuple[torch.Tensor, Block | None]:
    """A later block straight from its channels-last input (C kernels): no im2col, no z."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    pooled = ws.get(Buf.POOLED, li, (b, hp, wp, c), x.dtype)
    if not save:
        native.conv_direct_gelu_pool(x, w, bias, layer.k, hp, wp, pooled)
        return pooled, None
    idx = ws.get(Buf.INDICES, li, (b, hp, wp, c), torch.int32)
    z_sel, d_sel = (ws.get(t, li, (b, hp * wp, c), x.dtype) for t in (Buf.Z_SEL, Buf.GELU_D))
    native.conv_direct_gelu_pool(x, w, bias, layer.k, hp, wp, pooled, idx, z_sel, d_sel)
    return pooled, Block(None, None, idx, z_sel, d_sel, None, x)


def _gelu_pool_backward(ws: Workspace, li: int, d: torch.Tensor, blk: Block, b: int,
                        layer: ConvLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(gs, dz): the gradient at the selected pre-activations [B, hp*wp, C] and on the whole grid (in z's buffer)."""
    hp, wp, c = layer.hp, layer.wp, layer.c_out
    gs = ws.get(Buf.GRAD_SEL, li, (b, hp * wp, c), d.dtype)
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


def block_cols(ws: Workspace, li: int, x: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    """The im2col of block li's channels-last input, in the workspace's buffer."""
    shape = (len(x) * 4 * layer.hp * layer.wp, layer.k * layer.k * layer.c_in)
    return im2col(x, layer, ws.get(Buf.COLS, li, shape, x.dtype))


def block_backward(ws: Workspace, li: int, layer: ConvLayer, blk: Block, d: torch.Tensor, w: torch.Tensor,
                   gw: torch.Tensor, gb: torch.Tensor, b: int, per_sample: bool) -> torch.Tensor | None:
    """One block's backward from the gradient d at its pooled output: its weight and bias gradients into gw, gb
    (per sample: with a leading sample dimension); returns the gradient at its input (None for the first block)."""
    c, hw = layer.c_out, layer.hp * layer.wp
    d = d.reshape(b, hw, c)
    if blk.x is not None:  # a direct block: each window passes one gradient per channel, added patch by patch
        gs = torch.mul(d, blk.d_sel, out=ws.get(Buf.GRAD_SEL, li, (b, hw, c), d.dtype))
        taps = layer.k * layer.k * layer.c_in
        dw_t = ws.get(Buf.DW_T, li, (b, c, taps) if per_sample else (c, taps), d.dtype)
        native.pool_conv_backward_weight(blk.x, gs, blk.idx, layer.k, layer.hp, layer.wp, dw_t)
        gw.copy_(dw_t.transpose(-1, -2))
    elif blk.z is None:  # the fused first block: its weight gradient from the winners' im2col rows
        gs = ws.get(Buf.GRAD_SEL, 0, (b, hw, c), d.dtype)
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
    dx = ws.get(Buf.DX, li, (b, layer.h + 2 * layer.pad, layer.w + 2 * layer.pad, layer.c_in), d.dtype)
    if blk.x is not None:
        native.pool_conv_backward_input(gs, blk.idx, w.t().contiguous(), layer.k, layer.hp, layer.wp, dx)
        return interior(dx, layer)
    return col2im(torch.mm(dz, w.t(), out=blk.cols), layer, dx)  # the block's im2col (li > 0) is used up


def col2im(dcols: torch.Tensor, layer: ConvLayer, out: torch.Tensor) -> torch.Tensor:
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
    return interior(out, layer)
