"""The C kernels end to end in float32, the dtype the pipeline runs in, against the generic torch.func path.

All four CNN variants (CNN and CNN3L on grey 28x28 and colour 32x32 images; CNN3L's first convolution on
colour images has exactly native.FUSED_TAPS = 27 taps, the largest the fused kernel takes): per-sample
losses, per-sample gradients (dot products and norms of the factored gradients against materialised ones),
one LOO run and one ATS run. Batch sizes and chunks do not divide N. Inputs and the first convolution are
scaled so that pre-activations reach |z| > 13 in both directions: there GELU saturates (to 0 and to z) and
the C kernels' exp(-z^2/2) leaves its reduced range (it is clamped at exp(-87), |z| > 13.2).

The generic path is forced by wrapping the same network in another class, which the kernels do not compute.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tda.dispatch import curvature_product, member_losses, path, sample_grads
from tda.engine.ensemble import stack
from tda.engine.functional import split_params
from tda.kernels import native, tangent
from tda.methods.ats import ats_scores
from tda.methods.loo import loo_continue
from tda.models import CNN, CNN3L

ARCHS = [(CNN, 1, 28), (CNN3L, 1, 28), (CNN, 3, 32), (CNN3L, 3, 32)]
IDS = ["cnn", "cnn3l", "cnn_rgb", "cnn3l_rgb"]
# Tolerances, relative to the generic result's largest entry. float32 rounds at 6e-8; the two paths differ
# in the order of their sums and by a few ulps in GELU (the C kernels' vectorised erf), nothing else.
# Measured over 3 seeds x 4 variants, the largest differences were: losses 4e-7 (one forward); gradient dot
# products 1e-5 and norms 3e-5 (sums of ~2e5 products each); LOO 6e-5 and ATS 2e-5. The scores are
# differences of test losses after Adam steps, and Adam's first steps are nearly lr * sign(g): where an
# entry of g is near 0, its rounding decides the sign. At lr 1e-3 either float32 path lay up to 8e-4 from
# float64 for that reason alone, so LR is 1e-4 (the flips cost O(lr^2)). Hessian-vector products (sums over
# the batch of products of the GELU', GELU'' and pooled activations): over 3 seeds x 4 variants the C kernels lay
# at most 3e-6 from float64, the generic float32 path 1.4e-5. Each bound is several times the
# largest measured difference; a wrong index, sign or clamp misses it by orders of magnitude.
RTOL = {"loss": 2e-6, "grad": 2e-4, "scores": 5e-4, "hvp": 3e-5}
LR, WD = 1e-4, 5e-3
Z_SATURATED = 13.0


class Wrapped(nn.Module):
    """The same network under another class: the kernels do not recognise it, so the generic path runs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.fixture(autouse=True)
def c_kernels(monkeypatch):
    monkeypatch.setenv("TDA_C_KERNELS", "1")
    if native.library() is None:
        pytest.skip("no C compiler: the C kernels are not built here")


def _close(fast: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    torch.testing.assert_close(fast, ref, rtol=rtol, atol=rtol * ref.abs().max().item())


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_float32_kernels_equal_the_generic_path_end_to_end(arch, channels, size, monkeypatch):
    torch.manual_seed(0)
    model = arch(channels).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(3)
    g = torch.Generator().manual_seed(1)
    n, m = 7, 5
    x, xt = 4 * torch.randn(n, channels, size, size, generator=g), 4 * torch.randn(m, channels, size, size, generator=g)
    y, yt = torch.randint(0, 10, (n,), generator=g), torch.randint(0, 10, (m,), generator=g)
    with torch.no_grad():
        z = model.conv1(torch.cat([x, xt]))
    assert (z < -Z_SATURATED).float().mean() > 0.01 and (z > Z_SATURATED).float().mean() > 0.01
    params, frozen = split_params(model)
    wrapped = Wrapped(model)
    wparams, wfrozen = split_params(wrapped)
    assert path(model, params, frozen, x) == "C kernels" and path(wrapped, wparams, wfrozen, x) == "torch.func on cpu"
    fused = []
    real = native.conv_gelu_pool
    monkeypatch.setattr(native, "conv_gelu_pool", lambda *a: fused.append(1) or real(*a))

    # per-sample losses of two different members
    members = stack(params, 2)
    members["fc2.bias"][1] += 0.3
    losses = member_losses(model, members, frozen, x, y, vectorize=False)
    _close(losses, member_losses(wrapped, {f"inner.{k}": v for k, v in members.items()}, wfrozen, x, y,
                                 vectorize=False), RTOL["loss"])
    # the first convolution runs fused with its GELU and pooling up to 27 taps: all but CNN on colour (75)
    assert bool(fused) == (model.conv1.weight[0].numel() <= native.FUSED_TAPS)

    # per-sample gradients: factored (kernels) against materialised (vmap of grad), chunks of 3 and 2
    fa, fb = sample_grads(model, params, frozen, x, y, chunk=3), sample_grads(model, params, frozen, xt, yt, chunk=2)
    ga, gb = sample_grads(wrapped, wparams, wfrozen, x, y), sample_grads(wrapped, wparams, wfrozen, xt, yt)
    assert type(fa).__name__ == "FactoredGrads" and type(ga).__name__ == "Grads"
    _close(fa.dot(fb), ga.dot(gb), RTOL["grad"])
    _close(fb.norms(), gb.norms(), RTOL["grad"])

    # LOO: two epochs of batches of 3, 3 and 1, members trained 3 at a time
    batches = [[torch.tensor([4, 0, 6]), torch.tensor([1, 3, 5]), torch.tensor([2])],
               [torch.tensor([6, 2, 3]), torch.tensor([0, 5, 1]), torch.tensor([4])]]
    loo = loo_continue(model, params, frozen, x, y, xt, yt, batches, LR, WD, chunk=3, vectorize=False)
    ref = loo_continue(wrapped, wparams, wfrozen, x, y, xt, yt, batches, LR, WD, chunk=3, vectorize=False)
    _close(loo, ref, RTOL["scores"])
    assert ref.abs().amax(1).min() > 0.1  # every removal moves the test losses far above float32 rounding

    # ATS: one fresh-Adam step per sample, perturbed models evaluated 3 at a time
    ats = ats_scores(model, params, frozen, x, y, xt, yt, LR, WD, member_chunk=3, vectorize=False)
    _close(ats, ats_scores(wrapped, wparams, wfrozen, x, y, xt, yt, LR, WD, member_chunk=3, vectorize=False),
           RTOL["scores"])
    assert losses.dtype == loo.dtype == ats.dtype == torch.float32


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_float32_hessian_vector_products_in_c_equal_float64(arch, channels, size, monkeypatch):
    """H v with the conv blocks' tangents in C (csrc/hvp.c's float kernels) against the generic path's torch.func
    H v of the same network in float64 and in float32, GELU saturated as above."""
    torch.manual_seed(0)
    model = arch(channels).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(3)
    g = torch.Generator().manual_seed(1)
    x, y = 4 * torch.randn(7, channels, size, size, generator=g), torch.randint(0, 10, (7,), generator=g)
    params, frozen = split_params(model)
    v = torch.randn(3, sum(p.numel() for p in params.values()), generator=g)
    calls = []
    real = tangent.hvp
    monkeypatch.setattr(tangent, "hvp", lambda *a: calls.append(1) or real(*a))
    fast = curvature_product(model, params, frozen, x, y, v, data_chunk=4, vec_chunk=2)  # chunks do not divide
    assert len(calls) == 4 and fast.dtype == torch.float32
    wrapped = Wrapped(model)
    generic = curvature_product(wrapped, *split_params(wrapped), x, y, v)
    wide = Wrapped(arch(channels).double().eval())
    wide.inner.load_state_dict(model.state_dict())
    ref = curvature_product(wide, *split_params(wide), x.double(), y, v.double())
    assert not calls[4:]  # neither reference ran through the kernels
    _close(fast.double(), ref, RTOL["hvp"])
    _close(fast, generic, 2 * RTOL["hvp"])
    assert ref.abs().max() > 1e-3 * v.abs().max()  # the products are far above float32 rounding of v
