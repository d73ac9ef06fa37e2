"""C kernels for the CNNs' GELU + max-pool blocks (`csrc/gelu_pool.c`), compiled with the system's C compiler on
first use and loaded with ctypes; where there is no compiler the CNN kernels use torch's own ops instead.

The compiled library is cached (TDA_KERNEL_CACHE, default ~/.cache/bayes-tda) under a name that hashes the
source, the compiler, its flags and the CPU, so a shared home directory serves machines of several kinds.
TDA_C_KERNELS=0 turns the C kernels off (torch's ops only); TDA_REQUIRE_C_KERNELS=1 makes a failed build an
error instead of a warning (CI sets it, so the tests cannot silently run the fallback alone).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "gelu_pool.c"
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11")
#: channels are processed 8 float lanes at a time
LANES = 8
#: the first conv is fused with its GELU and pooling up to this many taps (k*k*C_in): grey inputs (9 taps),
#: where its GEMM is too thin to pay for writing z; RGB's 75 taps run faster as torch's GEMM (measured)
FUSED_TAPS = 27

_lib: ctypes.CDLL | None | bool = False  # False: not tried yet


def enabled() -> bool:
    """Whether the C kernels are wanted (TDA_C_KERNELS is not 0)."""
    return os.environ.get("TDA_C_KERNELS", "1") != "0"


def _cpu_tag() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        import platform
        return platform.processor() + platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("TDA_KERNEL_CACHE") or Path.home() / ".cache" / "bayes-tda")


def _build(compiler: str) -> Path:
    """The compiled library's path, compiling it (atomically: a temporary name, then a rename) when not cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, *FLAGS, _cpu_tag()]).encode())
    for root in (_cache_dir(), Path(tempfile.gettempdir()) / "bayes-tda"):
        target = root / f"gelu_pool-{key.hexdigest()[:16]}.so"
        if target.exists():
            return target
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=root, prefix=".gelu_pool-", suffix=".so")
            os.close(fd)
        except OSError:
            continue  # cache not writable: the next candidate
        try:
            subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                           check=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target
    raise OSError("no writable directory for the compiled kernels (set TDA_KERNEL_CACHE)")


def _load() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    try:
        if compiler is None:
            raise OSError("no C compiler found (install gcc, or set CC)")
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        msg = f"the C kernels could not be built, the CNN kernels use torch's ops instead: {detail.strip()[:500]}"
        if os.environ.get("TDA_REQUIRE_C_KERNELS") == "1":
            raise RuntimeError(msg) from e
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for sfx in ("f32", "f64"):
        getattr(lib, f"gelu_pool_{sfx}").argtypes = [p, i64, i64, i64, i64, p, p, p, p]
        getattr(lib, f"gelu_pool_backward_{sfx}").argtypes = [p, p, p, i64, i64, i64, i64, p, p]
        getattr(lib, f"conv_gelu_pool_{sfx}").argtypes = [p, p, p, i64, i64, i64, i64, i64, p, p, p, p]
        getattr(lib, f"conv_gelu_pool_backward_{sfx}").argtypes = [p, p, p, p, i64, i64, i64, i64, i64, p, p, i64]
        getattr(lib, f"conv_direct_gelu_pool_{sfx}").argtypes = [p, p, p, *[i64] * 8, p, p, p, p]
        getattr(lib, f"pool_conv_backward_weight_{sfx}").argtypes = [p, p, p, *[i64] * 8, p, i64]
        getattr(lib, f"pool_conv_backward_input_{sfx}").argtypes = [p, p, p, *[i64] * 8, p]
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded C library, built on first call; None where the kernels are off or could not be built."""
    global _lib
    if not enabled():
        return None
    if _lib is False:
        _lib = _load()
    return _lib


def applies(dtype: torch.dtype, channels: int) -> bool:
    """Whether the C kernels serve a block of `channels` channels in `dtype` (and are available)."""
    return dtype in (torch.float32, torch.float64) and channels % LANES == 0 and library() is not None


def _sfx(t: torch.Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def _ptr(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()


def gelu_pool(z: torch.Tensor, b: int, hp: int, wp: int, pooled: torch.Tensor, idx: torch.Tensor,
              z_sel: torch.Tensor | None = None, d_sel: torch.Tensor | None = None) -> None:
    """pooled = maxpool2(GELU(z)) of a channels-last [B*2hp*2wp, C] grid; idx (int32) the winners' grid positions,
    z_sel their pre-activations and d_sel GELU' there (each [B, hp, wp, C], the last two optional)."""
    c = z.shape[-1]
    assert idx.dtype == torch.int32 and pooled.dtype == z.dtype and z.numel() == b * 4 * hp * wp * c
    getattr(library(), f"gelu_pool_{_sfx(z)}")(_ptr(z), b, hp, wp, c, _ptr(pooled), _ptr(idx), _ptr(z_sel),
                                              _ptr(d_sel))


def gelu_pool_backward(d: torch.Tensor, idx: torch.Tensor, d_sel: torch.Tensor, b: int, hp: int, wp: int,
                       gs: torch.Tensor, dz: torch.Tensor) -> None:
    """Backward of `gelu_pool` for the gradient d at the pooled outputs: gs = d * GELU'(z_sel), dz on the whole grid."""
    c = d.shape[-1]
    assert dz.numel() == b * 4 * hp * wp * c and d.dtype == d_sel.dtype == gs.dtype == dz.dtype
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
    assert cols.shape == (b * 4 * hp * wp, k) and idx.dtype == torch.int32
    getattr(library(), f"conv_gelu_pool_{_sfx(cols)}")(_ptr(cols), _ptr(w), _ptr(bias), b, hp, wp, k, c,
                                                       _ptr(pooled), _ptr(idx), _ptr(z_sel), _ptr(d_sel))


def conv_gelu_pool_backward(cols: torch.Tensor, d: torch.Tensor, idx: torch.Tensor, d_sel: torch.Tensor, b: int,
                            hp: int, wp: int, gs: torch.Tensor, dw: torch.Tensor) -> None:
    """Backward of `conv_gelu_pool`: gs = d * GELU'(z_sel), and the weight gradient into dw ([K, C], or [B, K, C]
    per sample: each sample's [K, C] block contiguous, the samples at any stride)."""
    k, c = dw.shape[-2:]
    assert dw.stride()[-2:] == (c, 1) and d.is_contiguous() and d.dtype == cols.dtype == dw.dtype
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
    assert w.shape[0] == k * k * cin and cout % LANES == 0 and pooled.shape == (b, hp, wp, cout)
    getattr(library(), f"conv_direct_gelu_pool_{_sfx(x)}")(_ptr(x), _ptr(w), _ptr(bias), b, h, wd, cin, k, cout, hp,
                                                           wp, _ptr(pooled), _ptr(idx), _ptr(z_sel), _ptr(d_sel))


def pool_conv_backward_weight(x: torch.Tensor, gs: torch.Tensor, idx: torch.Tensor, k: int, hp: int, wp: int,
                               dw_t: torch.Tensor) -> None:
    """Weight gradient of a direct block from its input x [B, H, W, C_in] and the gradient gs [B, hp*wp, C_out] at
    the winners idx: into dw_t [C_out, k*k*C_in] (transposed kernel layout), or [B, C_out, k*k*C_in] per sample
    (each sample's block contiguous, the samples at any stride)."""
    b, h, wd, cin = x.shape
    cout = gs.shape[-1]
    assert dw_t.shape[-2:] == (cout, k * k * cin) and dw_t.stride()[-2:] == (k * k * cin, 1)
    assert gs.is_contiguous() and gs.dtype == x.dtype == dw_t.dtype
    stride = dw_t.stride(0) if dw_t.dim() == 3 else 0
    getattr(library(), f"pool_conv_backward_weight_{_sfx(x)}")(_ptr(x), _ptr(gs), _ptr(idx), b, h, wd, cin, k, cout,
                                                               hp, wp, dw_t.data_ptr(), stride)


def pool_conv_backward_input(gs: torch.Tensor, idx: torch.Tensor, w_t: torch.Tensor, k: int, hp: int, wp: int,
                              dx: torch.Tensor) -> None:
    """Input gradient of a direct block: dx [B, H, W, C_in] (padding included, overwritten) from gs [B, hp*wp, C_out]
    at the winners idx and the transposed weights w_t [C_out, k*k*C_in]."""
    b, h, wd, cin = dx.shape
    cout = gs.shape[-1]
    assert w_t.shape == (cout, k * k * cin) and gs.is_contiguous() and gs.dtype == w_t.dtype == dx.dtype
    getattr(library(), f"pool_conv_backward_input_{_sfx(gs)}")(_ptr(gs), _ptr(idx), _ptr(w_t), b, h, wd, cin, k, cout,
                                                              hp, wp, _ptr(dx))


if __name__ == "__main__":  # python -m tda.kernels.native: build the library and say where it is
    lib = library()
    print(lib._name if lib is not None else "C kernels off or unavailable", file=sys.stdout)
