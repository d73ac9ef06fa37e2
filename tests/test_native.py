"""The C kernels of the GELU + max-pool blocks (tda/kernels/native.py) in float32, against torch's own ops.

float64 goes through the same kernels in test_kernels.py (there against autograd, to 1e-12); here the
float32 code, which evaluates GELU 8 lanes at a time with its own erf and exp, is held to torch's float32
GELU and pooling, and the build's cache and fallback are checked.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import close
from tda.engine.functional import split_params
from tda.kernels import forward as K
from tda.kernels import native
from tda.kernels.blocks import Workspace, im2col
from tda.kernels.layout import ConvLayer, spec_for, to_kernel, views
from tda.models import CNN, CNN3L

F32 = torch.float32


@pytest.fixture(autouse=True)
def c_kernels(monkeypatch):
    monkeypatch.setenv("TDA_C_KERNELS", "1")
    if native.library() is None:
        pytest.skip("no C compiler: the C kernels are not built here")


def _grid(b: int, hp: int, wp: int, c: int, seed: int = 0) -> torch.Tensor:
    """Pre-activations on a 2hp x 2wp grid, channels-last, with exact ties in a third of the windows."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 2 * hp, 2 * wp, c, generator=g) * 2
    z[:, :, : (2 * wp) // 3] = 0.375
    return z


def _torch_gelu_pool(z: torch.Tensor):
    a = F.gelu(z).permute(0, 3, 1, 2)
    out, idx = F.max_pool2d_with_indices(a, 2)
    return out.permute(0, 2, 3, 1), idx.permute(0, 2, 3, 1)


def test_float32_gelu_and_its_derivative_match_float64_to_torch_accuracy():
    v = torch.linspace(-10, 10, 8 * 4001, dtype=torch.float64)
    z = v.float().view(-1, 1, 1, 8).expand(-1, 2, 2, 8).contiguous()  # every window holds one value 4 times
    n = z.shape[0]
    pooled, idx = torch.empty(n, 1, 1, 8), torch.empty(n, 1, 1, 8, dtype=torch.int32)
    z_sel, d_sel = torch.empty(n, 1, 8), torch.empty(n, 1, 8)
    native.gelu_pool(z.view(-1, 8), n, 1, 1, pooled, idx, z_sel, d_sel)
    exact = v.float().double()
    ref = F.gelu(exact).view(n, 8)
    dref = torch.ops.aten.gelu_backward(torch.ones_like(exact), exact).view(n, 8)
    torch_err = (F.gelu(exact.float()).double() - F.gelu(exact)).abs().max()
    assert (pooled.view(n, 8).double() - ref).abs().max() <= max(5e-7, 1.5 * torch_err)
    assert (d_sel.view(n, 8).double() - dref).abs().max() <= 5e-7
    assert torch.equal(idx, torch.zeros_like(idx))  # all four tie: the first wins
    assert torch.equal(z_sel.view(n, 8), z[:, 0, 0])


def test_float32_gelu_pool_and_backward_match_torch():
    b, hp, wp, c = 3, 6, 5, 16
    z = _grid(b, hp, wp, c)
    pooled, idx = torch.empty(b, hp, wp, c), torch.empty(b, hp, wp, c, dtype=torch.int32)
    z_sel, d_sel = torch.empty(b, hp * wp, c), torch.empty(b, hp * wp, c)
    native.gelu_pool(z.view(-1, c), b, hp, wp, pooled, idx, z_sel, d_sel)
    ref, ref_idx = _torch_gelu_pool(z)
    close(pooled, ref, 1e-6)
    assert torch.equal(idx.long(), ref_idx)
    close(z_sel, z.view(b, -1, c).gather(1, ref_idx.reshape(b, -1, c)), 0)
    d = torch.randn(b, hp, wp, c, generator=torch.Generator().manual_seed(1))
    gs, dz = torch.empty(b, hp * wp, c), torch.full((b * 4 * hp * wp, c), float("nan"))
    native.gelu_pool_backward(d, idx, d_sel, b, hp, wp, gs, dz)
    zr = z.clone().requires_grad_(True)
    _torch_gelu_pool(zr)[0].backward(d)
    close(dz.view_as(z), zr.grad, 1e-6)  # every entry written, the winners' gradients in place


@pytest.mark.parametrize("k,cin,pad", [(3, 32, 0), (3, 64, 2), (5, 32, 0)])
def test_float32_direct_conv_block_matches_im2col_gemm(k, cin, pad):
    g = torch.Generator().manual_seed(k + cin)
    b, h, cout = 3, 13, 24
    x = torch.rand(b, h + 2 * pad, h + 2 * pad, cin, generator=g)
    if pad:
        x[:, :pad] = x[:, -pad:] = x[:, :, :pad] = x[:, :, -pad:] = 0
    w, bias = torch.randn(k * k * cin, cout, generator=g) / (k * cin ** 0.5), torch.randn(cout, generator=g)
    layer = ConvLayer("conv", cin, cout, k, pad, h, h)
    hp, wp = layer.hp, layer.wp
    z = torch.addmm(bias, im2col(x, layer), w)
    ref, ref_idx = _torch_gelu_pool(z.view(b, 2 * hp, 2 * wp, cout))
    pooled, idx = torch.empty(b, hp, wp, cout), torch.empty(b, hp, wp, cout, dtype=torch.int32)
    z_sel, d_sel = torch.empty(b, hp * wp, cout), torch.empty(b, hp * wp, cout)
    native.conv_direct_gelu_pool(x, w, bias, k, hp, wp, pooled, idx, z_sel, d_sel)
    close(pooled, ref, 1e-5)
    assert (idx.long() != ref_idx).float().mean() < 1e-3  # only windows whose GELUs tie up to rounding
    close(z_sel, z.view(b, -1, cout).gather(1, idx.view(b, -1, cout).long()), 1e-5)
    plain = torch.empty_like(pooled)
    native.conv_direct_gelu_pool(x, w, bias, k, hp, wp, plain)  # without the backward's outputs
    assert torch.equal(plain, pooled)


def test_float32_fused_first_conv_and_its_weight_gradient():
    g = torch.Generator().manual_seed(5)
    b, hp, wp, taps, c = 4, 13, 13, 9, 32
    cols = torch.rand(b * 4 * hp * wp, taps, generator=g)
    cols[: len(cols) // 3] = 0.25  # constant patches: exact ties
    w, bias = torch.randn(taps, c, generator=g), torch.randn(c, generator=g) * 0.1
    z = torch.addmm(bias, cols, w)
    ref, ref_idx = _torch_gelu_pool(z.view(b, 2 * hp, 2 * wp, c))
    pooled, idx = torch.empty(b, hp, wp, c), torch.empty(b, hp, wp, c, dtype=torch.int32)
    z_sel, d_sel = torch.empty(b, hp * wp, c), torch.empty(b, hp * wp, c)
    native.conv_gelu_pool(cols, w, bias, b, hp, wp, pooled, idx, z_sel, d_sel)
    close(pooled, ref, 1e-6)
    assert (idx.long() != ref_idx).float().mean() < 1e-3
    d = torch.randn(b, hp * wp, c, generator=g)
    zr = z.clone().requires_grad_(True)
    out = F.max_pool2d(F.gelu(zr.view(b, 2 * hp, 2 * wp, c).permute(0, 3, 1, 2)), 2).permute(0, 2, 3, 1)
    out.backward(d.view(b, hp, wp, c))
    gs, dw = torch.empty(b, hp * wp, c), torch.full((taps, c), float("nan"))
    native.conv_gelu_pool_backward(cols, d, idx, d_sel, b, hp, wp, gs, dw)
    close(dw, cols.t() @ zr.grad, 1e-5)
    per = torch.full((b, taps + 1, c), float("nan"))[:, 1:]  # per sample, at a stride that is not taps * c
    native.conv_gelu_pool_backward(cols, d, idx, d_sel, b, hp, wp, gs, per)
    close(per.sum(0), dw, 1e-5)
    close(per[1], cols.view(b, -1, taps)[1].t() @ zr.grad[1 * 4 * hp * wp:2 * 4 * hp * wp], 1e-5)


@pytest.mark.parametrize("arch,channels,size", [(CNN, 1, 28), (CNN3L, 1, 28), (CNN, 3, 32)])
def test_float32_loss_gradient_with_and_without_the_c_kernels(arch, channels, size, monkeypatch):
    torch.manual_seed(0)
    model = arch(channels).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(9, channels, size, size, generator=g), torch.randint(0, 10, (9,), generator=g)
    x[..., : size // 3] = 0.0
    params, frozen = split_params(model)
    spec = spec_for(model, params, frozen, x)
    flat = to_kernel(spec, params)
    calls = []
    for name in ("gelu_pool", "conv_gelu_pool", "conv_direct_gelu_pool"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _r=real, _n=name, **kw: calls.append(_n) or _r(*a, **kw))

    def grad(c: bool) -> torch.Tensor:
        monkeypatch.setenv("TDA_C_KERNELS", "1" if c else "0")
        out = torch.full_like(flat, float("nan"))
        K.loss_grad(spec, views(spec, flat), K.first_cols(spec, x), F.one_hot(y, 10).float(),
                    torch.full((9,), 1 / 9), views(spec, out), Workspace())
        return out

    with_c = grad(True)
    first = "conv_gelu_pool" if spec.convs[0].k ** 2 * channels <= native.FUSED_TAPS else "gelu_pool"
    assert calls == [first] + ["conv_direct_gelu_pool"] * (len(spec.convs) - 1)
    calls.clear()
    without = grad(False)
    assert calls == []
    close(with_c, without, 1e-5)
    assert torch.isfinite(with_c).all()


def test_the_library_is_cached_and_a_failed_build_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.setenv("TDA_KERNEL_CACHE", str(tmp_path))
    assert native.library() is not None
    built = list(tmp_path.glob("gelu_pool-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob(".gelu_pool-*"))
    monkeypatch.setattr(native, "_lib", False)
    mtime = built[0].stat().st_mtime_ns
    assert native.library() is not None and built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.setenv("TDA_KERNEL_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.delenv("TDA_REQUIRE_C_KERNELS", raising=False)
    with pytest.warns(RuntimeWarning, match="torch's ops instead"):
        assert native.library() is None
    assert not native.applies(F32, 32)
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.setenv("TDA_REQUIRE_C_KERNELS", "1")
    with pytest.raises(RuntimeError, match="could not be built"):
        native.library()
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.setenv("TDA_C_KERNELS", "0")
    assert native.library() is None and native._lib is False  # off: not even tried
