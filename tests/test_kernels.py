"""The CPU kernels of the paper's CNNs (tda.kernels: forward, ensemble, grads, hvp) against autograd and the
generic engine, and the dispatcher that chooses between them.

float64 throughout, so differences measure the algorithms (summation order only), not float32 rounding.
Inputs have large constant regions, as the digits' background has: max-pool windows then hold exact
ties, which the kernels must break as torch's max_pool2d does (the first maximum). Every test runs
twice: with the C kernels of the GELU + pool blocks and with torch's ops alone (no C compiler).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import autograd_grads, autograd_hvp, close
from tda.dispatch import curvature_product, member_logits, member_losses, sample_grads, train_ensemble
from tda.dispatch import path as dispatch_path
from tda.engine.ensemble import removal_weights, stack
from tda.engine.functional import per_sample_losses, split_params
from tda.engine.grads import Grads
from tda.engine.memory import activation_bytes, chunk_size, default_chunk, member_bytes
from tda.kernels import ensemble as cnn_ensemble
from tda.kernels import forward as K
from tda.kernels import hvp as cnn_hvp
from tda.kernels import native, tangent
from tda.kernels.blocks import Workspace
from tda.kernels.grads import FactoredGrads
from tda.kernels.layout import from_kernel, spec_for, to_kernel, views
from tda.methods.ats import ats_scores
from tda.models import CNN, CNN3L

DT = torch.float64
ARCHS = [(CNN, 1, 28), (CNN3L, 1, 28), (CNN, 3, 32), (CNN3L, 3, 32)]
IDS = ["cnn", "cnn3l", "cnn_rgb", "cnn3l_rgb"]

pytestmark = pytest.mark.xdist_group("kernels")  # one process, so that each reference below is computed once

_REFERENCES: dict = {}


def reference(key: tuple, compute):
    """A reference (autograd, or the generic path) computed once per test and architecture: every test runs twice,
    with the C kernels and with torch's ops, against the same reference, which neither of them computes."""
    if key not in _REFERENCES:
        _REFERENCES[key] = compute()
    return _REFERENCES[key]


@pytest.fixture(autouse=True, params=["c_kernels", "torch_ops"])
def block_ops(request, monkeypatch):
    """The GELU + pool blocks through the C kernels, then through torch's ops (as where no compiler is found)."""
    monkeypatch.setenv("TDA_C_KERNELS", "1" if request.param == "c_kernels" else "0")
    if request.param == "c_kernels" and native.library() is None:
        pytest.skip("no C compiler: the C kernels are not built here")
    return request.param


def _images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random images whose left third is constant (exact ties in the first max-pool windows)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g, dtype=DT)
    x[..., : size // 3] = 0.25
    return x


def _model(arch, channels: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return arch(channels).to(DT).eval()


class Wrapped(nn.Module):
    """The same network under another class: the kernels do not recognise it, so the generic path runs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_loss_grad_equals_autograd(arch, channels, size):
    model = _model(arch, channels)
    x, y = _images(7, channels, size), torch.randint(0, 10, (7,), generator=torch.Generator().manual_seed(1))
    w = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 2.0, 1.0], dtype=DT)
    params, frozen = split_params(model)
    spec = spec_for(model, params, frozen, x)
    assert spec is not None
    flat = to_kernel(spec, params)
    grad = torch.full_like(flat, float("nan"))  # every entry must be written
    K.loss_grad(spec, views(spec, flat), K.first_cols(spec, x), F.one_hot(y, 10).to(DT), w / len(y),
                views(spec, grad), Workspace())
    ref = reference(("loss_grad", arch, channels), lambda: dict(zip(params, torch.autograd.grad(
        (w * F.cross_entropy(model(x), y, reduction="none")).sum() / len(y), list(model.parameters())))))
    got = from_kernel(spec, grad.unsqueeze(0))
    for n in params:
        close(got[n][0], ref[n], 1e-12)


def test_pooling_ties_between_different_patches_go_to_the_first_maximum():
    """Exact ties whose patches differ (so the tie rule changes the gradient): the first maximum wins, as in torch."""
    model = _model(CNN, 1)
    with torch.no_grad():
        model.conv1.weight.fill_(0.125)
        model.conv1.bias.zero_()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 4, (6, 1, 28, 28), generator=g).to(DT) / 4  # every conv1 output is exact: ties survive rounding
    y = torch.randint(0, 10, (6,), generator=g)
    with torch.no_grad():
        windows = F.unfold(F.gelu(model.conv1(x)), 2, stride=2).view(6, 32, 4, -1)
    tied = (windows == windows.amax(2, keepdim=True)).sum(2) > 1
    assert tied.float().mean() > 0.05
    params, frozen = split_params(model)
    spec = spec_for(model, params, frozen, x)
    grad = torch.zeros_like(to_kernel(spec, params))
    K.loss_grad(spec, views(spec, to_kernel(spec, params)), K.first_cols(spec, x), F.one_hot(y, 10).to(DT),
                torch.full((6,), 1 / 6, dtype=DT), views(spec, grad), Workspace())
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), model.conv1.weight)[0]
    close(from_kernel(spec, grad.unsqueeze(0))["conv1.weight"][0], ref, 1e-12)


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_member_losses_equal_the_model(arch, channels, size):
    model = _model(arch, channels)
    params, frozen = split_params(model)
    x, y = _images(45, channels, size, seed=2), torch.randint(0, 10, (45,))
    members = stack(params, 3)
    members["fc2.bias"][1, 3] += 0.5  # members differ
    got = member_losses(model, members, frozen, x, y, vectorize=False)
    ref = reference(("member_losses", arch, channels), lambda: torch.stack(
        [per_sample_losses(model, {n: t[k] for n, t in members.items()}, frozen, x, y) for k in range(3)]))
    close(got, ref, 1e-12)
    assert not torch.allclose(got[1], got[0])


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_member_logits_equal_the_model(arch, channels, size):
    model = _model(arch, channels)
    params, frozen = split_params(model)
    x = _images(45, channels, size, seed=3)  # 45: a last forward of 13 samples after the blocks of 32
    members = stack(params, 3)
    members["conv1.weight"][2] *= 1.1  # members differ
    got = member_logits(model, members, frozen, x)
    assert dispatch_path(model, params, frozen, x).startswith(("C kernels", "CNN kernels"))
    with torch.no_grad():
        ref = torch.stack([torch.func.functional_call(model, {**frozen, **{n: t[k] for n, t in members.items()}}, (x,))
                           for k in range(3)])
    close(got, ref, 1e-12)
    assert not torch.allclose(got[2], got[0])


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_layout_round_trip(arch, channels, size):
    params, frozen = split_params(_model(arch, channels))
    spec = spec_for(_model(arch, channels), params, frozen, _images(1, channels, size))
    members = {n: torch.randn(2, *t.shape, dtype=DT) for n, t in params.items()}
    flat = to_kernel(spec, members)
    assert flat.shape == (2, spec.numel) and spec.numel == sum(t.numel() for t in params.values())
    back = from_kernel(spec, flat)
    assert all(torch.equal(back[n], members[n]) for n in params)


@pytest.mark.parametrize("arch,channels,size", ARCHS[1:3], ids=IDS[1:3])
def test_ensemble_training_equals_generic_path(arch, channels, size):
    """Kernel LOO training (CPU) against the generic functional path on the same network, with a control member."""
    model = _model(arch, channels, seed=4)
    x, y = _images(6, channels, size, seed=5), torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(6))
    batches = [[torch.tensor([4, 0, 2, 5]), torch.tensor([1, 3])], [torch.tensor([3, 1, 0, 2]), torch.tensor([5, 4])]]
    w = removal_weights(6, control=True, dtype=DT)
    params, frozen = split_params(model)
    kernel = train_ensemble(model, params, frozen, x, y, batches, w, 1e-2, 5e-3, snapshot_epochs=[0, 1],
                            vectorize=False, chunk=4)
    wrapped = Wrapped(model)
    generic = reference(("ensemble", arch, channels), lambda: train_ensemble(
        wrapped, *split_params(wrapped), x, y, batches, w, 1e-2, 5e-3, snapshot_epochs=[0, 1], vectorize=False))
    for snap_k, snap_g in zip(kernel, generic):
        for n in params:
            close(snap_k[n], snap_g[f"inner.{n}"])
    assert not torch.allclose(kernel[1]["conv1.weight"][1], kernel[1]["conv1.weight"][0])


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_per_sample_grads_and_ats_equal_the_generic_path(arch, channels, size):
    model = _model(arch, channels, seed=7)
    g = torch.Generator().manual_seed(8)
    x, y = _images(5, channels, size, seed=8), torch.randint(0, 10, (5,), generator=g)
    xt, yt = _images(4, channels, size, seed=9), torch.randint(0, 10, (4,), generator=g)
    params, frozen = split_params(model)
    spec = spec_for(model, params, frozen, x)
    per_sample = from_kernel(spec, cnn_ensemble.sample_grads(spec, to_kernel(spec, params), x, y))
    ref = reference(("grads", arch, channels), lambda: autograd_grads(model, x, y))
    close(torch.cat([per_sample[n].flatten(1) for n in params], dim=1), ref, 1e-12)
    wrapped = Wrapped(model)
    generic = reference(("ats", arch, channels), lambda: ats_scores(wrapped, *split_params(wrapped), x, y, xt, yt,
                                                                    1e-2, 5e-3, vectorize=False))
    close(ats_scores(model, params, frozen, x, y, xt, yt, 1e-2, 5e-3, vectorize=False, member_chunk=2), generic)
    assert generic.abs().min() > 0


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_factored_grads_equal_materialised_autograd_grads(arch, channels, size):
    model = _model(arch, channels, seed=5)
    g = torch.Generator().manual_seed(6)
    xa, ya = _images(5, channels, size, seed=6), torch.randint(0, 10, (5,), generator=g)
    xb, yb = _images(7, channels, size, seed=7), torch.randint(0, 10, (7,), generator=g)
    ga, gb = reference(("factored", arch, channels), lambda: (autograd_grads(model, xa, ya),
                                                              autograd_grads(model, xb, yb)))
    params, frozen = split_params(model)
    fa = sample_grads(model, params, frozen, xa, ya, chunk=2)
    fb = sample_grads(model, params, frozen, xb, yb, chunk=3)
    assert isinstance(fa, FactoredGrads) and isinstance(fb, FactoredGrads)
    close(fa.dot(fb), ga @ gb.T, 1e-12)
    close(fb.norms(), gb.norm(dim=1), 1e-12)
    v = torch.randn(3, ga.shape[1], generator=g, dtype=DT)
    close(fb.dot_vectors(v), v @ gb.T, 1e-12)
    wrapped = Wrapped(model)  # the generic path materialises them
    generic = sample_grads(wrapped, *split_params(wrapped), xb, yb)
    assert isinstance(generic, Grads)
    close(generic.dot_vectors(v), v @ gb.T, 1e-12)


@pytest.mark.parametrize("arch,channels,size", ARCHS, ids=IDS)
def test_hvp_equals_double_backward(arch, channels, size, monkeypatch, block_ops):
    model = _model(arch, channels, seed=3)
    g = torch.Generator().manual_seed(4)
    x, y = _images(6, channels, size, seed=4), torch.randint(0, 10, (6,), generator=g)
    params, frozen = split_params(model)
    v = torch.randn(3, sum(p.numel() for p in params.values()), generator=g, dtype=DT)
    ref = reference(("hvp", arch, channels), lambda: torch.stack([autograd_hvp(model, x, y, vi) for vi in v]))
    calls, tangents = [], []
    kernel, c_tangent = cnn_hvp.hvp, tangent.hvp
    monkeypatch.setattr(cnn_hvp, "hvp", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(tangent, "hvp", lambda *a: tangents.append(1) or c_tangent(*a))
    close(curvature_product(model, params, frozen, x, y, v, data_chunk=4, vec_chunk=2), ref, 1e-12)
    assert len(calls) == 4  # 2 vector chunks x 2 data chunks, through the kernel
    # the conv blocks' tangents in C (csrc/hvp.c, its float64 loops) where the library is built, else torch's ops
    assert len(tangents) == (4 if block_ops == "c_kernels" else 0)
    wrapped = Wrapped(model)
    close(curvature_product(wrapped, *split_params(wrapped), x, y, v), ref, 1e-12)
    assert len(calls) == 4


def test_training_takes_the_kernel_path_for_cnns_only(monkeypatch):
    calls = []
    real = cnn_ensemble.train_members
    monkeypatch.setattr(cnn_ensemble, "train_members", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = _model(CNN, 1)
    x, y = _images(3, 1, 28), torch.tensor([0, 1, 2])
    batches, w = [[torch.arange(3)]], removal_weights(3, control=False, dtype=DT)
    for m in (model, Wrapped(model)):
        p, f = split_params(m)
        train_ensemble(m, p, f, x, y, batches, w, 1e-3, 0.0, vectorize=False)
    assert calls == [1]
    p, f = split_params(model)
    assert spec_for(model, p, f, x) is not None
    assert spec_for(model, p, f, x.float()) is None  # inputs and parameters of different dtypes
    assert spec_for(model, p, {"extra": torch.zeros(1)}, x) is None  # frozen tensors: not the plain CNN
    assert spec_for(model, p, f, x[:, :, :4, :4]) is None  # too small for its layers
    assert spec_for(Wrapped(model), *split_params(Wrapped(model)), x) is None


# ---------------------------------------------------------------- chunks from memory
def test_chunk_size_from_a_stated_budget():
    per = member_bytes(1000, 4, 0, training=True)
    assert per == 1000 * 4 * 5
    assert chunk_size(per, 10 * per + 1, 30) == 10
    assert chunk_size(per, 100 * per, 30) == 30  # never more than the members
    assert chunk_size(per, per - 1, 30) == 1  # always at least one
    assert member_bytes(1000, 8, 123, training=False) == 1000 * 8 * 2 + 123


def test_default_chunk_counts_activations_per_member_only_when_vmapped():
    model = _model(CNN, 1).float()
    params, frozen = split_params(model)
    x = _images(4, 1, 28).float()
    act = activation_bytes(model, params, frozen, x[:1])
    assert activation_bytes(model, params, frozen, x[:2]) == 2 * act
    assert act > 4 * (32 * 26 * 26 + 64 * 11 * 11)  # at least the two conv outputs
    n_params = sum(t.numel() for t in params.values())
    per_vmapped = member_bytes(n_params, 4, act * 30 * 2, training=True)
    budget = 7 * per_vmapped + 10
    assert default_chunk(model, params, frozen, x, 30, 100, training=True, vectorized=True, budget=budget) == 7
    looped = budget // member_bytes(n_params, 4, 0, training=True)
    shared = act * 30 * 2 // member_bytes(n_params, 4, 0, training=True)
    got = default_chunk(model, params, frozen, x, 30, 1000, training=True, vectorized=False, budget=budget)
    assert got in (looped - shared, looped - shared - 1)


def test_measuring_activations_draws_no_random_numbers():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3)).to(DT).train()
    params, frozen = split_params(model)
    torch.manual_seed(0)
    activation_bytes(model, params, frozen, torch.randn(2, 16, dtype=DT))
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.randn(2, 16, dtype=DT)
    assert torch.equal(after, torch.rand(3))
