"""C kernels of the Hessian-vector products' tangent passes (`csrc/hvp.c`): their Python face.

R tangent vectors at once; an argument that differs between vectors is [R, ...] with its leading stride
given to C, one shared by all vectors has no R dimension (stride 0). Each call checks its arguments
(dtypes, contiguity, channels a multiple of the library's lanes, index dtype, every buffer's size) with a
real error before the C code touches memory, as `native` does.
"""
from __future__ import annotations

import torch

from .native import KernelArgumentError, _check, _index, _lanes, _ptr, _sfx, _window, lanes, library  # noqa: F401


def applies(dtype: torch.dtype, channels: list[int]) -> bool:
    """Whether these kernels serve blocks of these output channels in `dtype` (and the library is available)."""
    n = lanes()
    return dtype in (torch.float32, torch.float64) and n > 0 and all(c % n == 0 for c in channels)


def _arg(t: torch.Tensor | None, dims: int, r: int, numel: int, like: torch.Tensor, what: str) -> int:
    """Check an argument, shared (`dims` dimensions, contiguous) or per vector ([R, ...], each vector's block
    contiguous, at any stride); returns its stride between vectors (0: shared)."""
    if t is None:
        return 0
    _check(t.dtype == like.dtype and t.device.type == "cpu", f"{what}: {t.dtype} on {t.device}, needs {like.dtype} "
           "on the CPU")
    if t.dim() == dims:
        _check(t.is_contiguous() and t.numel() == numel, f"{what} of shape {tuple(t.shape)}: {numel} contiguous values")
        return 0
    _check(t.dim() == dims + 1 and t.shape[0] == r and t[0].is_contiguous() and t[0].numel() == numel
           and (r == 1 or t.stride(0) >= numel), f"{what} of shape {tuple(t.shape)}: [{r}, ...] with {numel} contiguous "
           "values per vector")
    return t.stride(0)


def _out(t: torch.Tensor, numel: int, like: torch.Tensor, what: str) -> None:
    _check(t.dtype == like.dtype and t.device.type == "cpu" and t.is_contiguous() and t.numel() == numel,
           f"{what}: needs {numel} contiguous {like.dtype} values on the CPU")


def _epilogue(out: torch.Tensor, bias: torch.Tensor | None, gain: torch.Tensor | None, nxt: torch.Tensor | None,
              r: int, b: int, hp: int, wp: int, c: int, pad: int) -> int:
    """Check the winners kernels' bias ([C] shared or [R, C]), GELU' gain [B, hp*wp, C] and next tangent input
    [R, B, hp + 2 pad, wp + 2 pad, C]; returns the bias's stride between vectors."""
    _out(out, r * b * hp * wp * c, out, "out")
    _check((gain is None) == (nxt is None) and pad >= 0, "gain and nxt: both or neither (pad >= 0)")
    if nxt is not None:
        _arg(gain, 3, 1, b * hp * wp * c, out, "gain")
        _out(nxt, r * b * (hp + 2 * pad) * (wp + 2 * pad) * c, out, "nxt")
    return _arg(bias, 1, r, c, out, "bias")


def conv_winners(x1: torch.Tensor, w1: torch.Tensor, x2: torch.Tensor | None, w2: torch.Tensor | None,
                 bias: torch.Tensor | None, idx: torch.Tensor, r: int, b: int, k: int, hp: int, wp: int,
                 out: torch.Tensor, gain: torch.Tensor | None = None, nxt: torch.Tensor | None = None,
                 pad: int = 0) -> None:
    """out [R, B, hp*wp, C] = bias + the k x k convolution x1 * w1 (+ x2 * w2) at each window's winner
    idx [B, hp*wp, C]; with `nxt`, also nxt [R, B, hp + 2 pad, wp + 2 pad, C] = out * gain inside a zero border.

    x: channels-last inputs [B, H, W, C_in] (padding included), shared or [R, B, ...]; w: kernel-layout weights
    [k*k*C_in, C], shared or [R, ...]; bias [C] or [R, C]."""
    h, wd, cin = x1.shape[-3:]
    c = out.shape[-1]
    _lanes(c)
    _check(x1.dtype in (torch.float32, torch.float64), f"dtype {x1.dtype}, not float32/float64")
    _check((x2 is None) == (w2 is None), "x2 and w2: both or neither")
    _window(h, wd, k, hp, wp)
    _index(idx, b * hp * wp * c)
    bias_r = _epilogue(out, bias, gain, nxt, r, b, hp, wp, c, pad)
    _check(out.dtype == x1.dtype, f"out of dtype {out.dtype}, not {x1.dtype}")
    xn, wn = b * h * wd * cin, k * k * cin * c
    strides = [_arg(x1, 4, r, xn, x1, "x1"), _arg(w1, 2, r, wn, x1, "w1"), _arg(x2, 4, r, xn, x1, "x2"),
               _arg(w2, 2, r, wn, x1, "w2")]
    getattr(library(), f"hvp_conv_winners_{_sfx(x1)}")(
        _ptr(x1), strides[0], _ptr(w1), strides[1], _ptr(x2), strides[2], _ptr(w2), strides[3], _ptr(bias), bias_r,
        _ptr(idx), r, b, h, wd, cin, k, c, hp, wp, _ptr(out), _ptr(gain), _ptr(nxt), pad)


def cols_winners(cols: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor, r: int, b: int,
                 hp: int, wp: int, out: torch.Tensor, gain: torch.Tensor | None = None,
                 nxt: torch.Tensor | None = None, pad: int = 0) -> None:
    """`conv_winners` from the im2col cols [B*4hp*wp, K] of a block's input: out = bias + cols w at each window's
    winner, w [K, C] shared or [R, K, C]."""
    taps, c = cols.shape[1], out.shape[-1]
    _lanes(c)
    _check(cols.dtype in (torch.float32, torch.float64), f"dtype {cols.dtype}, not float32/float64")
    _arg(cols, 2, 1, b * 4 * hp * wp * taps, cols, "the im2col")
    _index(idx, b * hp * wp * c)
    _check(out.dtype == cols.dtype, f"out of dtype {out.dtype}, not {cols.dtype}")
    bias_r = _epilogue(out, bias, gain, nxt, r, b, hp, wp, c, pad)
    getattr(library(), f"hvp_cols_winners_{_sfx(cols)}")(
        _ptr(cols), _ptr(w), _arg(w, 2, r, taps * c, cols, "w"), _ptr(bias), bias_r, _ptr(idx), r, b, hp, wp, taps,
        c, _ptr(out), _ptr(gain), _ptr(nxt), pad)


def conv_backward_weight(x1: torch.Tensor, g1: torch.Tensor, x2: torch.Tensor | None, g2: torch.Tensor | None,
                         idx: torch.Tensor, r: int, b: int, k: int, hp: int, wp: int, dw_t: torch.Tensor) -> None:
    """dw_t [R, C, k*k*C_in] = sum over samples and windows of g1 [B, hp*wp, C] times x1's patch at the winner
    (+ g2 times x2's); x and g shared or per vector, as in `conv_winners`. Overwritten."""
    h, wd, cin = x1.shape[-3:]
    c = dw_t.shape[-2]
    n, xn = b * hp * wp * c, b * h * wd * cin
    _lanes(c)
    _check(x1.dtype in (torch.float32, torch.float64), f"dtype {x1.dtype}, not float32/float64")
    _check((x2 is None) == (g2 is None), "x2 and g2: both or neither")
    _window(h, wd, k, hp, wp)
    _index(idx, n)
    _out(dw_t, r * c * k * k * cin, x1, "dw_t")
    strides = [_arg(x1, 4, r, xn, x1, "x1"), _arg(g1, 3, r, n, x1, "g1"), _arg(x2, 4, r, xn, x1, "x2"),
               _arg(g2, 3, r, n, x1, "g2")]
    getattr(library(), f"hvp_conv_backward_weight_{_sfx(x1)}")(
        _ptr(x1), strides[0], _ptr(g1), strides[1], _ptr(x2), strides[2], _ptr(g2), strides[3], _ptr(idx), r, b, h, wd,
        cin, k, c, hp, wp, _ptr(dw_t))


def conv_backward_input(g1: torch.Tensor, w1_t: torch.Tensor, g2: torch.Tensor | None, w2_t: torch.Tensor | None,
                        idx: torch.Tensor, r: int, b: int, k: int, hp: int, wp: int, dx: torch.Tensor | None,
                        shape: tuple[int, int, int], prev: tuple | None = None, pad: int = 0) -> None:
    """The gradient at a block's input of shape (H, W, C_in) (padding included): every window's g1 [B, hp*wp, C]
    times the transposed weights w1_t [C, k*k*C_in] added onto its winner's patch (+ g2 with w2_t); shared or per
    vector. Into dx [R, B, H, W, C_in] (overwritten), or with prev = (gain, e, dz, dgs) instead the previous
    block's dgs [R, B, n, C_in] = dx inside the padding (`pad`) * gain [B, n, C_in] + e [B, n, C_in] * dz
    [R, B, n, C_in] (n = (H - 2 pad) (W - 2 pad)): the R-operator's GELU' and GELU'' terms."""
    h, wd, cin = shape
    c = g1.shape[-1]
    n, wn = b * hp * wp * c, k * k * cin * c
    _lanes(c)
    _check(g1.dtype in (torch.float32, torch.float64), f"dtype {g1.dtype}, not float32/float64")
    _check((g2 is None) == (w2_t is None), "g2 and w2_t: both or neither")
    _window(h, wd, k, hp, wp)
    _index(idx, n)
    _check((dx is None) != (prev is None), "dx or prev: exactly one")
    if dx is not None:
        _out(dx, r * b * h * wd * cin, g1, "dx")
        gain = e = dz = dgs = None
    else:
        gain, e, dz, dgs = prev
        n2 = b * (h - 2 * pad) * (wd - 2 * pad) * cin
        _check(pad >= 0 and h > 2 * pad and wd > 2 * pad, f"padding {pad} of a {h} x {wd} input")
        _arg(gain, 3, 1, n2, g1, "gain"), _arg(e, 3, 1, n2, g1, "e")
        _out(dz, r * n2, g1, "dz"), _out(dgs, r * n2, g1, "dgs")
    strides = [_arg(g1, 3, r, n, g1, "g1"), _arg(w1_t, 2, r, wn, g1, "w1_t"), _arg(g2, 3, r, n, g1, "g2"),
               _arg(w2_t, 2, r, wn, g1, "w2_t")]
    status = getattr(library(), f"hvp_conv_backward_input_{_sfx(g1)}")(
        _ptr(g1), strides[0], _ptr(w1_t), strides[1], _ptr(g2), strides[2], _ptr(w2_t), strides[3], _ptr(idx), r, b, h,
        wd, cin, k, c, hp, wp, _ptr(dx), _ptr(gain), _ptr(e), _ptr(dz), _ptr(dgs), pad)
    if status != 0:
        raise MemoryError("the Hessian-vector kernels could not allocate their scratch buffer")


def cols_backward_weight(cols: torch.Tensor, g: torch.Tensor, idx: torch.Tensor, r: int, b: int, hp: int, wp: int,
                         dw: torch.Tensor) -> None:
    """dw [R, K, C] (each vector's [K, C] block contiguous, the vectors at any stride; overwritten) = the im2col rows
    [B*4hp*wp, K] of each window's winner times g [B, hp*wp, C] (shared or [R, ...]), summed."""
    taps, c = cols.shape[1], g.shape[-1]
    n = b * hp * wp * c
    _lanes(c)
    _check(cols.dtype in (torch.float32, torch.float64), f"dtype {cols.dtype}, not float32/float64")
    _arg(cols, 2, 1, b * 4 * hp * wp * taps, cols, "the im2col")
    _index(idx, n)
    stride = _arg(dw, 2, r, taps * c, cols, "dw") if r > 1 or dw.dim() == 3 else 0
    _check(dw.dim() == 3 or r == 1, "dw: [R, K, C]")
    getattr(library(), f"hvp_cols_backward_weight_{_sfx(cols)}")(_ptr(cols), _ptr(g), _arg(g, 3, r, n, cols, "g"),
                                                                 _ptr(idx), r, b, hp, wp, taps, c, dw.data_ptr(),
                                                                 stride)
