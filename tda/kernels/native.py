"""C kernels for the CNNs' GELU + max-pool blocks (`csrc/gelu_pool.c`): their Python face. Each call checks its
arguments (dtypes, contiguity, channels a multiple of the vectors' lanes, index dtype, buffer sizes, window
bounds) with a real error before the C code touches memory, then calls the compiled library (`build` compiles
and loads it safely, on first use). Where there is no compiler the CNN kernels use torch's own ops instead.

TDA_C_KERNELS=0 turns the C kernels off (torch's ops only); TDA_REQUIRE_C_KERNELS=1 makes a failed build an
error instead of a warning (CI sets it, so the tests cannot silently run the fallback alone).
"""
from __future__ import annotations

import ctypes
import os
import sys

import torch

from . import build
from .build import HEADERS, SOURCE, SOURCES, source_text  # noqa: F401 - where the C source is

#: the first conv is fused with its GELU and pooling up to this many taps (k*k*C_in): grey inputs (9 taps),
#: where its GEMM is too thin to pay for writing z; RGB's 75 taps run faster as torch's GEMM (measured)
FUSED_TAPS = 27

_lib: ctypes.CDLL | None | bool = False  # False: not tried yet


def enabled() -> bool:
    """Whether the C kernels are wanted (TDA_C_KERNELS is not 0)."""
    return os.environ.get("TDA_C_KERNELS", "1") != "0"


def library() -> ctypes.CDLL | None:
    """The loaded C library, built on first call; None where the kernels are off or could not be built."""
    global _lib
    if not enabled():
        return None
    if _lib is False:
        _lib = build.load()
    return _lib


def lanes() -> int:
    """Float lanes of the library's vectors (16 with AVX-512, else 8): channels must be a multiple of this; 0 without
    the library."""
    lib = library()
    return int(lib.kernel_lanes()) if lib is not None else 0


def applies(dtype: torch.dtype, channels: int) -> bool:
    """Whether the C kernels serve a block of `channels` channels in `dtype` (and are available)."""
    n = lanes()
    return dtype in (torch.float32, torch.float64) and n > 0 and channels % n == 0


class KernelArgumentError(ValueError):
    """Arguments the C kernels cannot take (they would read or write outside their buffers): a bug in the caller."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise KernelArgumentError(f"C kernel arguments: {what}")


def _sfx(t: torch.Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def _floats(*ts: torch.Tensor | None) -> None:
    """Every given tensor: float32 or float64 (all the same), contiguous, on the CPU."""
    given = [t for t in ts if t is not None]
    _check(given[0].dtype in (torch.float32, torch.float64), f"dtype {given[0].dtype}, not float32/float64")
    for t in given:
        _check(t.dtype == given[0].dtype, f"mixed dtypes {t.dtype} and {given[0].dtype}")
        _check(t.device.type == "cpu", f"a tensor on {t.device}, not the CPU")
        _check(t.is_contiguous(), f"a non-contiguous tensor of shape {tuple(t.shape)}")


def _sized(t: torch.Tensor | None, numel: int, what: str) -> None:
    if t is not None:
        _check(t.numel() == numel, f"{what} has {t.numel()} elements, needs {numel}")


def _index(idx: torch.Tensor | None, numel: int) -> None:
    if idx is not None:
        _check(idx.dtype == torch.int32, f"winner indices of dtype {idx.dtype}, not int32")
        _check(idx.is_contiguous() and idx.device.type == "cpu", "winner indices not contiguous on the CPU")
        _sized(idx, numel, "the winner indices")


def _lanes(c: int) -> None:
    _check(c > 0 and c % lanes() == 0, f"{c} channels: the kernels need a positive multiple of {lanes()}")


def _window(h: int, w: int, k: int, hp: int, wp: int) -> None:
    _check(min(h, w, k, hp, wp) > 0 and 2 * hp + k - 1 <= h and 2 * wp + k - 1 <= w,
           f"a {hp} x {wp} pooled grid of {k} x {k} windows does not fit a {h} x {w} input")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def gelu_pool(z: torch.Tensor, b: int, hp: int, wp: int, pooled: torch.Tensor, idx: torch.Tensor,
              z_sel: torch.Tensor | None = None, d_sel: torch.Tensor | None = None) -> None:
    """pooled = maxpool2(GELU(z)) of a channels-last [B*2hp*2wp, C] grid; idx (int32) the winners' grid positions,
    z_sel their pre-activations and d_sel GELU' there (each [B, hp, wp, C], the last two optional)."""
    c = z.shape[-1]
    _lanes(c)
    _floats(z, pooled, z_sel, d_sel)
    _sized(z, b * 4 * hp * wp * c, "the grid z")
    for t, what in ((pooled, "pooled"), (z_sel, "z_sel"), (d_sel, "d_sel")):
        _sized(t, b * hp * wp * c, what)
    _index(idx, b * hp * wp * c)
    getattr(library(), f"gelu_pool_{_sfx(z)}")(_ptr(z), b, hp, wp, c, _ptr(pooled), _ptr(idx), _ptr(z_sel),
                                              _ptr(d_sel))


def gelu_pool_backward(d: torch.Tensor, idx: torch.Tensor, d_sel: torch.Tensor, b: int, hp: int, wp: int,
                       gs: torch.Tensor, dz: torch.Tensor) -> None:
    """Backward of `gelu_pool` for the gradient d at the pooled outputs: gs = d * GELU'(z_sel), dz on the whole grid."""
    c = d.shape[-1]
    _lanes(c)
    _floats(d, d_sel, gs, dz)
    for t, what in ((d, "d"), (d_sel, "d_sel"), (gs, "gs")):
        _sized(t, b * hp * wp * c, what)
    _sized(dz, b * 4 * hp * wp * c, "dz")
    _index(idx, b * hp * wp * c)
    getattr(library(), f"gelu_pool_backward_{_sfx(d)}")(_ptr(d), _ptr(idx), _ptr(d_sel), b, hp, wp, c, _ptr(gs),
                                                       _ptr(dz))


def fuses(dtype: torch.dtype, taps: int, channels: int) -> bool:
    """Whether a first conv of `taps` taps and `channels` outputs runs fused with its GELU and pooling."""
    return taps <= FUSED_TAPS and applies(dtype, channels)


def conv_gelu_pool(cols: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, b: int, hp: int, wp: int,
                   pooled: torch.Tensor, idx: torch.Tensor, z_sel: torch.Tensor | None = None,
                   d_sel: torch.Tensor | None = None) -> None:
    """`gelu_pool` of z = bias + cols w (im2col rows [B*2hp*2wp, K], w [K, C]) without writing z."""
    k, c = w.shape
    _lanes(c)
    _floats(cols, w, bias, pooled, z_sel, d_sel)
    _check(tuple(cols.shape) == (b * 4 * hp * wp, k), f"im2col of shape {tuple(cols.shape)}, needs {(b * 4 * hp * wp, k)}")
    _sized(bias, c, "the bias")
    for t, what in ((pooled, "pooled"), (z_sel, "z_sel"), (d_sel, "d_sel")):
        _sized(t, b * hp * wp * c, what)
    _index(idx, b * hp * wp * c)
    getattr(library(), f"conv_gelu_pool_{_sfx(cols)}")(_ptr(cols), _ptr(w), _ptr(bias), b, hp, wp, k, c,
                                                       _ptr(pooled), _ptr(idx), _ptr(z_sel), _ptr(d_sel))


def conv_gelu_pool_backward(cols: torch.Tensor, d: torch.Tensor, idx: torch.Tensor, d_sel: torch.Tensor, b: int,
                            hp: int, wp: int, gs: torch.Tensor, dw: torch.Tensor) -> None:
    """Backward of `conv_gelu_pool`: gs = d * GELU'(z_sel), and the weight gradient into dw ([K, C], or [B, K, C]
    per sample: each sample's [K, C] block contiguous, the samples at any stride)."""
    k, c = dw.shape[-2:]
    _lanes(c)
    _floats(cols, d, d_sel, gs)
    _check(dw.dtype == cols.dtype and dw.device.type == "cpu", f"dw of dtype {dw.dtype}, not {cols.dtype}")
    _check(dw.stride()[-2:] == (c, 1), "dw: each sample's [K, C] block must be contiguous")
    _check(dw.dim() == 2 or (dw.dim() == 3 and dw.shape[0] == b and dw.stride(0) >= k * c),
           f"dw of shape {tuple(dw.shape)}: [K, C] or [B, K, C] with B = {b}")
    _check(tuple(cols.shape) == (b * 4 * hp * wp, k), f"im2col of shape {tuple(cols.shape)}, needs {(b * 4 * hp * wp, k)}")
    for t, what in ((d, "d"), (d_sel, "d_sel"), (gs, "gs")):
        _sized(t, b * hp * wp * c, what)
    _index(idx, b * hp * wp * c)
    stride = dw.stride(0) if dw.dim() == 3 else 0
    getattr(library(), f"conv_gelu_pool_backward_{_sfx(cols)}")(_ptr(cols), _ptr(d), _ptr(idx), _ptr(d_sel), b, hp,
                                                                wp, k, c, _ptr(gs), dw.data_ptr(), stride)


def conv_direct_gelu_pool(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, k: int, hp: int, wp: int,
                          pooled: torch.Tensor, idx: torch.Tensor | None = None, z_sel: torch.Tensor | None = None,
                          d_sel: torch.Tensor | None = None) -> None:
    """`gelu_pool` of a k x k convolution of channels-last inputs x [B, H, W, C_in] (zero padding included in x)
    with kernel-layout weights w [k*k*C_in, C_out], straight from x: no im2col, no z."""
    b, h, wd, cin = x.shape
    cout = w.shape[1]
    _lanes(cout)
    _floats(x, w, bias, pooled, z_sel, d_sel)
    _window(h, wd, k, hp, wp)
    _check(w.shape[0] == k * k * cin, f"weights of shape {tuple(w.shape)} for {k} x {k} x {cin} taps")
    _sized(bias, cout, "the bias")
    for t, what in ((pooled, "pooled"), (z_sel, "z_sel"), (d_sel, "d_sel")):
        _sized(t, b * hp * wp * cout, what)
    _index(idx, b * hp * wp * cout)
    getattr(library(), f"conv_direct_gelu_pool_{_sfx(x)}")(_ptr(x), _ptr(w), _ptr(bias), b, h, wd, cin, k, cout, hp,
                                                           wp, _ptr(pooled), _ptr(idx), _ptr(z_sel), _ptr(d_sel))


def pool_conv_backward_weight(x: torch.Tensor, gs: torch.Tensor, idx: torch.Tensor, k: int, hp: int, wp: int,
                               dw_t: torch.Tensor) -> None:
    """Weight gradient of a direct block from its input x [B, H, W, C_in] and the gradient gs [B, hp*wp, C_out] at
    the winners idx: into dw_t [C_out, k*k*C_in] (transposed kernel layout), or [B, C_out, k*k*C_in] per sample
    (each sample's block contiguous, the samples at any stride)."""
    b, h, wd, cin = x.shape
    cout = gs.shape[-1]
    _lanes(cout)
    _floats(x, gs)
    _window(h, wd, k, hp, wp)
    _check(dw_t.dtype == x.dtype and dw_t.device.type == "cpu", f"dw_t of dtype {dw_t.dtype}, not {x.dtype}")
    _check(tuple(dw_t.shape[-2:]) == (cout, k * k * cin) and dw_t.stride()[-2:] == (k * k * cin, 1),
           f"dw_t of shape {tuple(dw_t.shape)}: each [C_out, k*k*C_in] block contiguous")
    _check(dw_t.dim() == 2 or (dw_t.dim() == 3 and dw_t.shape[0] == b and dw_t.stride(0) >= cout * k * k * cin),
           f"dw_t of shape {tuple(dw_t.shape)}: [C_out, taps] or [B, C_out, taps] with B = {b}")
    _sized(gs, b * hp * wp * cout, "gs")
    _index(idx, b * hp * wp * cout)
    stride = dw_t.stride(0) if dw_t.dim() == 3 else 0
    getattr(library(), f"pool_conv_backward_weight_{_sfx(x)}")(_ptr(x), _ptr(gs), _ptr(idx), b, h, wd, cin, k, cout,
                                                               hp, wp, dw_t.data_ptr(), stride)


def pool_conv_backward_input(gs: torch.Tensor, idx: torch.Tensor, w_t: torch.Tensor, k: int, hp: int, wp: int,
                              dx: torch.Tensor) -> None:
    """Input gradient of a direct block: dx [B, H, W, C_in] (padding included, overwritten) from gs [B, hp*wp, C_out]
    at the winners idx and the transposed weights w_t [C_out, k*k*C_in]."""
    b, h, wd, cin = dx.shape
    cout = gs.shape[-1]
    _lanes(cout)
    _floats(gs, w_t, dx)
    _window(h, wd, k, hp, wp)
    _check(tuple(w_t.shape) == (cout, k * k * cin), f"transposed weights of shape {tuple(w_t.shape)}, need "
           f"{(cout, k * k * cin)}")
    _sized(gs, b * hp * wp * cout, "gs")
    _index(idx, b * hp * wp * cout)
    getattr(library(), f"pool_conv_backward_input_{_sfx(gs)}")(_ptr(gs), _ptr(idx), _ptr(w_t), b, h, wd, cin, k, cout,
                                                              hp, wp, _ptr(dx))


if __name__ == "__main__":  # python -m tda.kernels.native: build the library and say where it is
    lib = library()
    print(lib._name if lib is not None else "C kernels off or unavailable", file=sys.stdout)
