"""A loss of the user's own (a regression MSE) through the API: training, GD/GC, ATS, IF (LiSSA, CG on the Hessian
and on the Gauss-Newton matrix) and LOO (continue, paired, scratch) each equal a plain loop written here: autograd
per sample, torch.optim.Adam retrainings, the plain LiSSA recursion, dense solves. In float64 on a small MLP."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import tda
from helpers import close
from tda import dispatch
from tda.engine.functional import cross_entropy, split_params
from tda.engine.hvp import batched_gnvp
from tda.models import CNN

SEEDS = (3, 11)
TRAINING = tda.Training(epochs=4, checkpoints=2, lr=1e-2, weight_decay=1e-3, batch_size=4)
N, M = 10, 5  # LiSSA's batches of 8: two of them


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error of every sample, [B]."""
    return ((out - target) ** 2).sum(1)


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N + M, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3 * torch.randn(N + M, 1, generator=g,
                                                                                              dtype=torch.float64)
    train, test = (x[:N], y[:N]), (x[N:], y[N:])
    post = tda.train_posterior(make_net, train, SEEDS, TRAINING, loss=mse, progress=False)
    return post, train, test


def params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())


def flat_grad(value: torch.Tensor, model: nn.Module, create_graph: bool = False, keep: bool = False) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, params(model), create_graph=create_graph,
                                                               retain_graph=keep or create_graph)])


def sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One autograd call per sample, [B, P]."""
    return torch.stack([flat_grad(mse(model(x[i:i + 1]), y[i:i + 1]).sum(), model) for i in range(len(x))])


def loss_on(model: nn.Module, test) -> torch.Tensor:
    with torch.no_grad():
        return mse(model(test[0]), test[1])


def each_model(post):
    for i in range(len(post.seeds)):
        for c in range(len(post.epochs)):
            yield i, c, post.model(i, c)


def reference_training(seed: int, train) -> list[dict]:
    """torch.manual_seed, the model, a shuffled DataLoader, torch.optim.Adam on the batch's mean MSE."""
    x, y = train
    torch.manual_seed(seed)
    model = make_net()
    loader = DataLoader(range(N), batch_size=TRAINING.batch_size, shuffle=True)
    batches = [list(loader) for _ in range(TRAINING.epochs)]
    opt = torch.optim.Adam(model.parameters(), lr=TRAINING.lr, weight_decay=TRAINING.weight_decay)
    kept = []
    for epoch in range(TRAINING.epochs):
        for idx in batches[epoch]:
            opt.zero_grad()
            mse(model(x[idx]), y[idx]).mean().backward()
            opt.step()
        if epoch >= TRAINING.epochs - TRAINING.checkpoints:
            kept.append({k: v.clone() for k, v in model.state_dict().items()})
    return kept


def test_training_with_a_loss_of_your_own_is_the_plain_adam_loop(problem):
    post, train, _ = problem
    for i, seed in enumerate(SEEDS):
        ref = reference_training(seed, train)
        got = [ck["state_dict"] for ck in post.checkpoints(i)]
        assert len(got) == len(ref) == TRAINING.checkpoints
        for a, b in zip(got, ref):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_grad_dot_and_cos_with_mse_equal_autograd_per_sample(problem):
    post, train, test = problem
    gd, gc = tda.attribute("gd", post, train, test, progress=False), tda.attribute("gc", post, train, test,
                                                                                     progress=False)
    assert gd.shape == gc.shape == (len(SEEDS), TRAINING.checkpoints, N, M)
    for i, c, model in each_model(post):
        g_tr, g_te = sample_grads(model, *train), sample_grads(model, *test)
        close(gd[i, c], g_tr @ g_te.T, 1e-10)
        close(gc[i, c], (g_tr @ g_te.T) / (g_tr.norm(dim=1)[:, None] * g_te.norm(dim=1)[None]), 1e-10)


def test_a_loss_passed_to_attribute_replaces_the_posteriors(problem):
    post, train, test = problem
    gd = tda.attribute("gd", post, train, test, progress=False)
    doubled = tda.attribute("gd", post, train, test, loss=lambda out, t: 2 * mse(out, t), progress=False)
    close(doubled, 4 * gd, 1e-12)
    both = tda.attribute("gd_gc", post, train, test, progress=False)
    assert set(both) == {"gd", "gc"} and torch.equal(both["gd"], gd)


def test_ats_with_mse_equals_one_torch_adam_step_per_sample(problem):
    post, train, test = problem
    ats = tda.attribute("ats", post, train, test, progress=False)
    for i, c, model in each_model(post):
        base = loss_on(model, test)
        ref = []
        for j in range(N):
            m = copy.deepcopy(model)
            opt = torch.optim.Adam(m.parameters(), lr=TRAINING.lr, weight_decay=TRAINING.weight_decay)
            mse(m(train[0][j:j + 1]), train[1][j:j + 1]).mean().backward()
            opt.step()
            ref.append(loss_on(m, test) - base)
        close(ats[i, c], torch.stack(ref), 1e-9)


def test_lissa_with_mse_equals_the_plain_recursion(problem):
    post, train, test = problem
    damp, scale = 0.01, 20.0
    got = tda.attribute("if", post, train, test, damp=damp, scale=scale, depth=5, progress=False,
                        order="direct")
    x, y = train
    batches = [(x[b:b + 8], y[b:b + 8]) for b in range(0, N, 8)]  # the reference's unshuffled batches of 8
    for i, c, model in each_model(post):
        g_tr = sample_grads(model, *train)
        cols = []
        for k in range(M):
            v = sample_grads(model, test[0][k:k + 1], test[1][k:k + 1])[0]
            h = v.clone()
            for t in range(5):
                xb, yb = batches[t % len(batches)]
                g = flat_grad(mse(model(xb), yb).mean(), model, create_graph=True)
                hh = flat_grad((g * h).sum(), model)
                h = v + (1 - damp) * h - hh / scale
            cols.append(-(g_tr @ (h / scale)))
        close(got[i, c], torch.stack(cols, 1), 1e-9)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of the mean MSE over the flattened parameters, row by row with double backward."""
    g = flat_grad(mse(model(x), y).mean(), model, create_graph=True)
    return torch.stack([flat_grad(g[r], model, keep=True) for r in range(len(g))])


def dense_gauss_newton(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mean_n J_n^T (2 I) J_n: the Gauss-Newton matrix of the squared error, J_n the output's Jacobian."""
    rows = [flat_grad(model(x[n:n + 1]).sum(), model) for n in range(len(x))]
    return torch.stack([2 * torch.outer(j, j) for j in rows]).mean(0)


@pytest.mark.parametrize("hessian, damping", [("exact", 4.0), ("gauss-newton", 0.05)])
def test_cg_with_mse_equals_a_dense_solve(problem, hessian, damping):
    """Damped enough to be positive definite: this barely trained net's Hessian has eigenvalues down to -3."""
    post, train, test = problem
    got = tda.attribute("if", post, train, test, solver="cg", hessian=hessian, damping=damping, tol=1e-12,
                        max_iter=400, progress=False)
    for i, c, model in each_model(post):
        h = dense_hessian(model, *train) if hessian == "exact" else dense_gauss_newton(model, train[0])
        g_tr, g_te = sample_grads(model, *train), sample_grads(model, *test)
        s_test = torch.linalg.solve(h + damping * torch.eye(len(h), dtype=h.dtype), g_te.T)
        close(got[i, c], -(g_tr @ s_test), 1e-7)


def removal_retraining(start: nn.Module, seed: int, train, j: int | None, epochs: int, order_after_build: bool,
                       snapshots: list[int]) -> list[nn.Module]:
    """From `start`, torch.optim.Adam over the shuffled DataLoader's batches (drawn after torch.manual_seed(seed),
    and after building a model when `order_after_build`), sample j's loss weighted 0 (the batch mean still divides
    by the batch's size); copies of the model after each epoch in `snapshots`."""
    x, y = train
    torch.manual_seed(seed)
    if order_after_build:
        make_net()
    loader = DataLoader(range(N), batch_size=TRAINING.batch_size, shuffle=True)
    batches = [list(loader) for _ in range(epochs)]
    m = copy.deepcopy(start)
    opt = torch.optim.Adam(m.parameters(), lr=TRAINING.lr, weight_decay=TRAINING.weight_decay)
    out = []
    for epoch in range(epochs):
        for idx in batches[epoch]:
            w = torch.ones(len(idx), dtype=torch.float64)
            if j is not None:
                w[idx == j] = 0
            opt.zero_grad()
            ((w * mse(m(x[idx]), y[idx])).sum() / len(idx)).backward()
            opt.step()
        if epoch in snapshots:
            out.append(copy.deepcopy(m))
    return out


@pytest.mark.parametrize("protocol", ["continue", "paired"])
def test_loo_from_the_checkpoints_with_mse_equals_torch_adam_retrainings(problem, protocol):
    post, train, test = problem
    got = tda.attribute("loo", post, train, test, protocol=protocol, progress=False)
    last = [TRAINING.epochs - 1]
    for i, c, model in each_model(post):
        seed = SEEDS[i]
        base = (loss_on(model, test) if protocol == "continue" else
                loss_on(removal_retraining(model, seed, train, None, TRAINING.epochs, False, last)[0], test))
        ref = [loss_on(removal_retraining(model, seed, train, j, TRAINING.epochs, False, last)[0], test) - base
               for j in range(N)]
        close(got[i, c], torch.stack(ref), 1e-9)


def test_loo_from_scratch_with_mse_equals_torch_adam_retrainings_from_the_initialisation(problem):
    post, train, test = problem
    got = tda.attribute("loo", post, train, test, protocol="scratch", progress=False)
    snaps = list(range(TRAINING.epochs - TRAINING.checkpoints, TRAINING.epochs))
    for i, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        init = make_net()
        full = removal_retraining(init, seed, train, None, TRAINING.epochs, True, snaps)
        for j in range(N):
            removed = removal_retraining(init, seed, train, j, TRAINING.epochs, True, snaps)
            for c in range(len(snaps)):
                close(got[i, c, j], loss_on(removed[c], test) - loss_on(full[c], test), 1e-9)


def test_gauss_newton_of_any_loss_is_the_loss_hessian_in_the_outputs():
    """The generic product (torch.func.hessian of the per-sample loss) equals the dense J^T H J, and for
    cross-entropy passed as a loss of one's own it equals the closed form diag(p) - p p^T."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    p, frozen = split_params(model)
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    v = torch.randn(4, sum(t.numel() for t in p.values()), dtype=torch.float64)

    def my_ce(out, target):
        return torch.nn.functional.cross_entropy(out, target, reduction="none")

    generic = batched_gnvp(model, p, frozen, x, v, data_chunk=4, vec_chunk=3, y=y, loss=my_ce)
    close(generic, batched_gnvp(model, p, frozen, x, v), 1e-10)
    # a loss with a non-diagonal output Hessian: squared error of the outputs' sum, 0.5 (1^T z - t)^2
    t = torch.randn(9, dtype=torch.float64)

    def sum_sq(out, target):
        return 0.5 * (out.sum(1) - target) ** 2

    jac = torch.stack([torch.stack([flat_grad(model(x[n:n + 1])[0, k], model) for k in range(3)]) for n in range(9)])
    dense = torch.einsum("nkp,nkl,nlq->pq", jac, torch.ones(9, 3, 3, dtype=torch.float64), jac) / 9
    close(batched_gnvp(model, p, frozen, x, v, y=t, loss=sum_sq), v @ dense, 1e-10)
    with pytest.raises(ValueError, match="targets"):
        batched_gnvp(model, p, frozen, x, v, loss=sum_sq)


def test_the_cnn_kernels_compute_only_cross_entropy():
    model = CNN(1, 10).eval()
    p, frozen = split_params(model)
    x = torch.randn(2, 1, 28, 28)
    assert dispatch.path(model, p, frozen, x) in ("C kernels", "CNN kernels on torch ops")
    assert dispatch.path(model, p, frozen, x, loss=cross_entropy) == dispatch.path(model, p, frozen, x)
    assert dispatch.path(model, p, frozen, x, loss=mse) == "torch.func on cpu"
    assert dispatch.kernel_spec(model, p, frozen, x, loss=lambda o, t: cross_entropy(o, t)) is None
