"""The C kernels of the GELU + max-pool blocks (tda/kernels/native.py) in float32, against torch's own ops.

float64 goes through the same kernels in test_kernels.py (there against autograd, to 1e-12); here the
float32 code, which evaluates GELU 8 (16 with AVX-512) lanes at a time with its own erf and exp, is held to torch's float32
GELU and pooling, and the build's cache and fallback are checked.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import REPO, close
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
    L = 16  # channels: a multiple of the vectors' lanes (8, or 16 with AVX-512)
    v = torch.linspace(-10, 10, L * 2001, dtype=torch.float64)
    z = v.float().view(-1, 1, 1, L).expand(-1, 2, 2, L).contiguous()  # every window holds one value 4 times
    n = z.shape[0]
    pooled, idx = torch.empty(n, 1, 1, L), torch.empty(n, 1, 1, L, dtype=torch.int32)
    z_sel, d_sel = torch.empty(n, 1, L), torch.empty(n, 1, L)
    native.gelu_pool(z.view(-1, L), n, 1, 1, pooled, idx, z_sel, d_sel)
    exact = v.float().double()
    ref = F.gelu(exact).view(n, L)
    dref = torch.ops.aten.gelu_backward(torch.ones_like(exact), exact).view(n, L)
    torch_err = (F.gelu(exact.float()).double() - F.gelu(exact)).abs().max()
    assert (pooled.view(n, L).double() - ref).abs().max() <= max(5e-7, 1.5 * torch_err)
    assert (d_sel.view(n, L).double() - dref).abs().max() <= 5e-7
    assert torch.equal(idx, torch.zeros_like(idx))  # all four tie: the first wins
    assert torch.equal(z_sel.view(n, L), z[:, 0, 0])


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
    b, h, cout = 3, 13, 5 * native.lanes()  # five vectors of channels: a full block of accumulators and a tail
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


_WIDTH_SCRIPT = r"""
import sys, torch
torch.set_num_threads(1)
from tda.backends import epoch_batches
from tda.engine.functional import split_params
from tda.kernels import native
from tda.methods.influence import lissa_scores
from tda.methods.loo import loo_continue
from tda.models import CNN, CNN3L
g = torch.Generator().manual_seed(0)
out = {"lanes": native.lanes()}
for name, model, shape in (("cnn", CNN(1), (1, 28, 28)), ("cnn3l_rgb", CNN3L(3), (3, 32, 32))):
    torch.manual_seed(0)
    model = type(model)(shape[0]).eval()
    p, f = split_params(model)
    x, xt = torch.randn(12, *shape, generator=g), torch.randn(6, *shape, generator=g)
    y, yt = torch.randint(0, 10, (12,), generator=g), torch.randint(0, 10, (6,), generator=g)
    torch.manual_seed(1)
    out[name + " loo"] = loo_continue(model, p, f, x, y, xt, yt, epoch_batches(12, 4, 2), 1e-3, 5e-3)
    out[name + " if"] = lissa_scores(model, p, f, x, y, xt, yt, 0.01, 10.0)[0]
torch.save(out, sys.argv[1])
"""


def test_the_vector_width_changes_speed_not_results(tmp_path):
    """Built for 8 lanes (no AVX-512) the kernels give LOO and IF bit for bit what the default build gives: each lane
    sums its channel's taps in the same order. (On a CPU without AVX-512 both builds are 8 lanes wide.)"""
    outs = {}
    for label, cc in (("default", os.environ.get("CC", "gcc")), ("8 lanes", "gcc -mno-avx512f")):
        env = {**os.environ, "CC": cc, "TDA_KERNEL_CACHE": str(tmp_path / label.replace(" ", "_")),
               "PYTHONPATH": str(REPO), "TDA_C_KERNELS": "1"}
        r = subprocess.run([sys.executable, "-c", _WIDTH_SCRIPT, str(tmp_path / f"{label}.pt")], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        outs[label] = torch.load(tmp_path / f"{label}.pt")
    assert outs["8 lanes"]["lanes"] == 8 and outs["default"]["lanes"] in (8, 16)
    for key in outs["default"]:
        if key != "lanes":
            assert torch.equal(outs["default"][key], outs["8 lanes"][key]), key
