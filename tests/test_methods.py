"""The five TDA methods' fast paths against independent plain loops written here.

Everything is float64 so the comparison measures the algorithms, not float32 rounding (in float32 the
vmapped and looped paths differ by ~1e-6 relative, mostly through Adam's division by sqrt(v) + eps).
Tolerance: 1e-7 relative to the reference's largest entry.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import autograd_grads, autograd_hvp, close
from tda.backends import epoch_batches
from tda.engine.adam import AdamState, adam_init, adam_step
from tda.methods.ats import ats_scores
from tda.dispatch import train_ensemble
from tda.engine.ensemble import removal_weights, stack
from tda.engine.functional import flatten, split_params
from tda.methods.grad_sim import grad_dot_and_cos
from tda.methods.influence import cg_scores, conjugate_gradient, lissa_scores
from tda.methods.loo import loo_continue, loo_scratch
from tda.models import CNN

RTOL = 1e-7
DT = torch.float64


class TinyNet(nn.Module):
    """Small enough (P = 237) for a dense Hessian: conv on 8x8 inputs, GELU, pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 3 * 3, 6)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.gelu(self.conv(x)), 2).flatten(1))


def _tiny_data(n: int, m: int, seed: int = 0, size: int = 28, classes: int = 3, dup: bool = True):
    """Random images; test sample 0 is an exact copy of training sample 0 (for the sign checks)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g, dtype=DT)
    y = torch.randint(0, classes, (n,), generator=g)
    xt = torch.rand(m, 1, size, size, generator=g, dtype=DT)
    yt = torch.randint(0, classes, (m,), generator=g)
    if dup:
        xt[0], yt[0] = x[0], y[0]
    return x, y, xt, yt


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(3)
    model = CNN().to(DT).eval()
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(5)
    model = TinyNet().to(DT).eval()
    # a few plain Adam steps so the point is not the initialisation
    x, y, _, _ = _tiny_data(20, 1, seed=9, size=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


# ---------------------------------------------------------------- functional Adam
def test_functional_adam_equals_torch_adam_step_for_step():
    torch.manual_seed(0)
    model = TinyNet().to(DT)
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(ref.parameters(), lr=3e-3, weight_decay=5e-3)
    k = 3  # stacked copies must each behave like the single model
    params = stack(split_params(model)[0], k)
    state = adam_init(params)
    for step in range(12):
        grads = {n: torch.randn_like(p) * (10.0 ** (step % 4 - 2)) for n, p in ref.named_parameters()}
        for n, p in ref.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        adam_step(params, {n: g.expand(k, *g.shape) for n, g in grads.items()}, state, 3e-3, 5e-3)
        for n, p in ref.named_parameters():
            for j in range(k):
                torch.testing.assert_close(params[n][j], p.detach(), rtol=1e-14, atol=0)
                torch.testing.assert_close(state.exp_avg_sq[n][j], opt.state[p]["exp_avg_sq"], rtol=1e-14, atol=0)
    assert isinstance(state, AdamState) and state.step == 12


# ---------------------------------------------------------------- LOO
LR, WD = 1e-2, 5e-3  # a larger lr than training so the removal effects are far from rounding


def _loop_retrain(model, x, y, xt, yt, batches, remove, snapshots):
    """Plain reference: an ordinary nn.Module, torch.optim.Adam, loss.backward(), sample `remove` zeroed."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WD)
    w = torch.ones(len(y), dtype=DT)
    if remove is not None:
        w[remove] = 0
    out = []
    for epoch, ep in enumerate(batches):
        for idx in ep:
            opt.zero_grad()
            loss = (w[idx] * F.cross_entropy(model(x[idx]), y[idx], reduction="none")).sum() / len(idx)
            loss.backward()
            opt.step()
        if epoch in snapshots:
            with torch.no_grad():
                out.append(F.cross_entropy(model(xt), yt, reduction="none"))
    return torch.stack(out)


@pytest.fixture(scope="module")
def loo_setup(cnn):
    x, y, xt, yt = _tiny_data(6, 4)
    torch.manual_seed(11)
    batches = epoch_batches(6, 4, 3)  # batches of 4 and 2: each batch divides by its own size
    return x, y, xt, yt, batches


@pytest.mark.parametrize("vectorize", [True, False])
def test_loo_paper_and_paired_equal_sequential_retraining(cnn, loo_setup, vectorize):
    x, y, xt, yt, batches = loo_setup
    params, frozen = split_params(cnn)
    last = [len(batches) - 1]
    with torch.no_grad():
        theta_loss = F.cross_entropy(cnn(xt), yt, reduction="none")
    control = _loop_retrain(cnn, x, y, xt, yt, batches, None, last)[0]
    removed = torch.stack([_loop_retrain(cnn, x, y, xt, yt, batches, j, last)[0] for j in range(6)])
    paper = loo_continue(cnn, params, frozen, x, y, xt, yt, batches, LR, WD, paired=False, vectorize=vectorize)
    paired = loo_continue(cnn, params, frozen, x, y, xt, yt, batches, LR, WD, paired=True, chunk=3,
                          vectorize=vectorize)
    close(paper, removed - theta_loss)
    close(paired, removed - control)
    assert paired[0, 0] > 0  # removing the exact duplicate of test sample 0 raises its loss


def test_loo_scratch_equals_side_by_side_retraining(cnn, loo_setup):
    x, y, xt, yt, batches = loo_setup
    params, frozen = split_params(cnn)
    snaps = [1, 2]
    full = _loop_retrain(cnn, x, y, xt, yt, batches, None, snaps)
    removed = torch.stack([_loop_retrain(cnn, x, y, xt, yt, batches, j, snaps) for j in range(6)], dim=1)
    tau, control = loo_scratch(cnn, params, frozen, x, y, xt, yt, batches, LR, WD, snaps, chunk=4)
    close(control, full)
    close(tau, removed - full.unsqueeze(1))
    assert (tau[:, 0, 0] > 0).all()


class DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x.flatten(1)))))


@pytest.mark.parametrize("vectorize", [True, False])
def test_ensemble_chunks_are_exact_and_share_dropout_masks(vectorize):
    torch.manual_seed(0)
    model = DropNet().to(DT)
    params, frozen = split_params(model)
    x, y = torch.randn(5, 1, 4, 4, dtype=DT), torch.randint(0, 3, (5,))
    batches = [[torch.tensor([0, 1, 2]), torch.tensor([3, 4])]] * 2
    w = torch.ones(4, 5, dtype=DT)
    w[2, 1] = 0
    sched = lambda s: 1e-2 * (1 - s / 4)  # noqa: E731 - a per-step schedule, as the ViT's linear decay
    kw = dict(train_mode=True, vectorize=vectorize, evaluate=lambda p: flatten(p, 1))
    torch.manual_seed(1)
    whole = train_ensemble(model, params, frozen, x, y, batches, w, sched, WD, **kw)[0]
    torch.manual_seed(1)
    chunked = train_ensemble(model, params, frozen, x, y, batches, w, sched, WD, chunk=1, **kw)[0]
    close(chunked, whole, 1e-12)
    close(whole[1], whole[0], 1e-12)  # identical weights -> identical masks -> identical members
    assert not torch.allclose(whole[2], whole[0])


def test_removal_weights():
    w = removal_weights(3, control=True)
    assert w.tolist() == [[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]]


# ---------------------------------------------------------------- ATS
def test_ats_equals_one_torch_adam_step_per_sample(cnn):
    x, y, xt, yt = _tiny_data(5, 4, seed=1)
    params, frozen = split_params(cnn)
    lr = 1e-3
    with torch.no_grad():
        base = F.cross_entropy(cnn(xt), yt, reduction="none")
    ref = []
    for j in range(5):
        m = copy.deepcopy(cnn)
        opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=WD)
        F.cross_entropy(m(x[j:j + 1]), y[j:j + 1]).backward()
        opt.step()
        with torch.no_grad():
            ref.append(F.cross_entropy(m(xt), yt, reduction="none") - base)
    ref = torch.stack(ref)
    for vectorize in (True, False):
        close(ats_scores(cnn, params, frozen, x, y, xt, yt, lr, WD, member_chunk=2, vectorize=vectorize), ref)
    assert ref[0, 0] < 0  # a step on the duplicate lowers the test sample's loss: ATS < 0 = helps


# ---------------------------------------------------------------- IF
@pytest.mark.parametrize("n,m", [(20, 5), (9, 12)])
def test_lissa_both_orders_equal_per_test_sample_recursion(tiny, n, m):
    x, y, xt, yt = _tiny_data(n, m, seed=2, size=8)
    params, frozen = split_params(tiny)
    damp, scale = 5e-3, 20.0  # a small scale so the Hessian term matters (the reference's 1e4 nearly hides it)
    g_tr = autograd_grads(tiny, x, y)
    ref = torch.zeros(n, m, dtype=DT)
    for i in range(m):  # FastIF's s_test for one test sample, plainly
        v = autograd_grads(tiny, xt[i:i + 1], yt[i:i + 1])[0]
        h = v.clone()
        for t in range(math.ceil(n / 8)):
            h = v + (1 - damp) * h - autograd_hvp(tiny, x[8 * t:8 * t + 8], y[8 * t:8 * t + 8], h) / scale
        ref[:, i] = -(g_tr @ (h / scale))
    for order in ("direct", "transposed"):
        tau, used = lissa_scores(tiny, params, frozen, x, y, xt, yt, damp, scale, 8, order, vec_chunk=4,
                                 test_chunk=3)
        assert used == order
        close(tau, ref)
    assert lissa_scores(tiny, params, frozen, x, y, xt, yt, damp, scale)[1] == ("transposed" if n < m else "direct")
    assert ref[0, 0] < 0  # IF < 0 = helps


@pytest.mark.parametrize("n,m", [(6, 10), (12, 4)])
def test_cg_equals_dense_solve_with_exact_hessian(tiny, n, m):
    x, y, xt, yt = _tiny_data(n, m, seed=4, size=8)
    params, frozen = split_params(tiny)
    names = list(params)
    shapes = [params[k].shape for k in names]

    def flat_loss(v):
        ps = dict(zip(names, (t.reshape(s) for t, s in zip(torch.split(v, [math.prod(s) for s in shapes]), shapes))))
        return F.cross_entropy(torch.func.functional_call(tiny, {**frozen, **ps}, (x,)), y)

    hess = torch.autograd.functional.hessian(flat_loss, flatten(params))
    lam = max(0.0, -torch.linalg.eigvalsh(hess).min().item()) + 0.05  # positive definite for the dense solve
    a = hess + lam * torch.eye(len(hess), dtype=DT)
    g_tr, g_te = autograd_grads(tiny, x, y), autograd_grads(tiny, xt, yt)
    ref = -(g_tr @ torch.linalg.solve(a, g_te.T))
    tau, info = cg_scores(tiny, params, frozen, x, y, xt, yt, lam, tol=1e-11, max_iter=2000, data_chunk=5)
    assert info["converged"] and info["max_rel_residual"] <= 1e-11
    assert info["solved_for"] == ("train" if n <= m else "test")
    close(tau, ref)
    assert ref[0, 0] < 0


def test_conjugate_gradient_flags_indefinite_systems():
    a = torch.diag(torch.tensor([3.0, 1.0, -0.5], dtype=DT))
    b = torch.ones(2, 3, dtype=DT)
    x, info = conjugate_gradient(lambda v: v @ a, b, tol=1e-12, max_iter=50)
    # stopped there, not after the budget (tests/test_trust.py), with the iterate of smallest residual
    assert info["negative_curvature"] == 2 and not info["converged"] and info["iterations"] == 2
    close(info["rel_residual"], (b - x @ a).norm(dim=1) / b.norm(dim=1))
    assert bool((info["rel_residual"] <= 1).all())


# ---------------------------------------------------------------- GD / GC
def test_grad_dot_and_cos_equal_per_pair_autograd(cnn):
    x, y, xt, yt = _tiny_data(4, 3, seed=6)
    params, frozen = split_params(cnn)
    gd_ref = torch.zeros(4, 3, dtype=DT)
    gc_ref = torch.zeros(4, 3, dtype=DT)
    for j in range(4):
        for i in range(3):
            gj = autograd_grads(cnn, x[j:j + 1], y[j:j + 1])[0]
            gi = autograd_grads(cnn, xt[i:i + 1], yt[i:i + 1])[0]
            gd_ref[j, i] = gj @ gi
            gc_ref[j, i] = gj @ gi / (gj.norm() * gi.norm())
    gd, gc = grad_dot_and_cos(cnn, params, frozen, x, y, xt, yt, grad_chunk=3, test_chunk=2)
    close(gd, gd_ref)
    close(gc, gc_ref)
    assert gd[0, 0] > 0 and abs(gc[0, 0].item() - 1) < 1e-10  # a duplicate: cosine 1, GD > 0 = helps


def test_cnn_loo_batches_are_the_reference_draw():
    """The reference's LOO: manual_seed(seed), then a fresh DataLoader(shuffle=True) per epoch, no model built."""
    from torch.utils.data import DataLoader

    from tda.backends import get_backend
    from tda.config import parse_experiment
    cfg = parse_experiment("cnn_digits3_10pc")
    got = get_backend(cfg).continuation_batches(446, 40)
    torch.manual_seed(446)
    loader = DataLoader(list(range(40)), batch_size=32, shuffle=True)
    ref = [[b.clone() for b in loader] for _ in range(cfg.epochs)]
    assert len(got) == cfg.epochs and all(len(e) == 2 for e in got)
    assert all(torch.equal(a, b) for ea, eb in zip(got, ref) for a, b in zip(ea, eb))
