"""The Gauss-Newton curvature of IF: its matrix-free product against a dense J^T H J, CG converging on it where the
exact Hessian stalls, and the option's place in the scores' provenance."""
from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from helpers import autograd_grads
from tda.engine.functional import flatten, split_params, unflatten
from tda.engine.hvp import batched_gnvp, batched_hvp
from tda.methods.influence import IF, cg_scores, conjugate_gradient, lissa_scores


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 6), nn.GELU(),
                         nn.Linear(6, 4)).double().eval()


def tiny_data(n: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def dense_gauss_newton(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mean_n J_n^T (diag(p_n) - p_n p_n^T) J_n with J_n from torch.autograd.functional.jacobian (independent path)."""
    params, frozen = split_params(model)
    flat0 = flatten(params)

    def logits_of(flat: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**frozen, **unflatten(flat, params)}, (x,))

    jac = torch.autograd.functional.jacobian(logits_of, flat0)  # [N, C, P]
    with torch.no_grad():
        p = torch.softmax(logits_of(flat0), dim=-1)
    h = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # [N, C, C]
    return torch.einsum("ncp,ncd,ndq->pq", jac, h, jac) / len(x)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params, frozen = split_params(model)
    flat0 = flatten(params)

    def loss(flat: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {**frozen, **unflatten(flat, params)}, (x,))
        return nn.functional.cross_entropy(out, y)

    return torch.autograd.functional.hessian(loss, flat0)


@pytest.mark.parametrize("data_chunk,vec_chunk", [(None, 64), (3, 2)])
def test_gnvp_matches_dense_jt_h_j(data_chunk: int | None, vec_chunk: int) -> None:
    model = tiny_net()
    x, _ = tiny_data()
    params, frozen = split_params(model)
    g = dense_gauss_newton(model, x)
    assert torch.allclose(g, g.T, atol=1e-12) and torch.linalg.eigvalsh(g).min() > -1e-12  # PSD, as it must be
    v = torch.randn(5, g.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fast = batched_gnvp(model, params, frozen, x, v, data_chunk=data_chunk, vec_chunk=vec_chunk)
    torch.testing.assert_close(fast, v @ g.T, rtol=1e-10, atol=1e-12)


def test_cg_converges_on_gauss_newton_where_the_exact_hessian_does_not() -> None:
    model = tiny_net(3)
    x, y = tiny_data(12, 4)
    params, frozen = split_params(model)
    damping, tol = 1e-3, 1e-6
    eig = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    assert eig.min() < -10 * damping  # H + damping I is indefinite: CG has no guarantee there
    b = torch.randn(4, eig.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, exact = conjugate_gradient(lambda v: batched_hvp(model, params, frozen, x, y, v) + damping * v, b, tol, 150)
    _, gn = conjugate_gradient(lambda v: batched_gnvp(model, params, frozen, x, v) + damping * v, b, tol, 150)
    assert not bool((exact["rel_residual"] <= tol).all()) and exact["negative_curvature"] > 0
    assert gn["converged"] and float(gn["rel_residual"].max()) <= tol and gn["negative_curvature"] == 0


def test_cg_scores_with_gauss_newton_equal_a_dense_solve() -> None:
    model = tiny_net(5)
    x, y = tiny_data(6, 6)
    xt, yt = tiny_data(4, 7)
    params, frozen = split_params(model)
    damping = 5e-3
    tau, info = cg_scores(model, params, frozen, x, y, xt, yt, damping, tol=1e-10, max_iter=400,
                          hessian="gauss-newton")
    g = dense_gauss_newton(model, x)
    g_tr, g_te = autograd_grads(model, x, y), autograd_grads(model, xt, yt)
    ref = -g_tr @ torch.linalg.solve(g + damping * torch.eye(len(g), dtype=g.dtype), g_te.T)
    assert info["converged"] and info["max_rel_residual"] <= 1e-10
    torch.testing.assert_close(tau, ref, rtol=1e-6, atol=1e-9 * ref.abs().max().item())


def test_lissa_with_gauss_newton_uses_the_batches_gauss_newton() -> None:
    model = tiny_net(7)
    x, y = tiny_data(10, 8)
    xt, yt = tiny_data(3, 9)
    params, frozen = split_params(model)
    damp, scale, bs = 5e-3, 10.0, 4
    tau, _ = lissa_scores(model, params, frozen, x, y, xt, yt, damp, scale, bs, order="direct",
                          hessian="gauss-newton")
    g_tr, g_te = autograd_grads(model, x, y), autograd_grads(model, xt, yt)
    h = g_te.T.clone()
    for i in range(0, len(x), bs):  # h_t = v + (1 - damp) h - G_t h / scale, the recursion written out densely
        h = g_te.T + (1 - damp) * h - dense_gauss_newton(model, x[i:i + bs]) @ h / scale
    torch.testing.assert_close(tau, -(g_tr @ h) / scale, rtol=1e-9, atol=1e-12)


def test_hessian_option_is_a_key_setting() -> None:
    class Cfg:
        weight_decay = 5e-3

    class Backend:
        cfg = Cfg()

    assert "hessian" in IF.key_options
    assert IF().key_settings(Backend()) == {"solver": "lissa"}  # scores from before the option stay current
    assert IF(solver="cg").key_settings(Backend()) == {"solver": "cg", "damping": 5e-3, "tol": 1e-4, "max_iter": 500}
    gn = IF(solver="cg", hessian="gauss-newton").key_settings(Backend())
    assert gn["hessian"] == "gauss-newton" and gn != IF(solver="cg").key_settings(Backend())
    p = argparse.ArgumentParser()
    IF.add_arguments(p)
    assert IF.from_args(p.parse_args(["--solver", "cg", "--hessian", "gauss-newton"])).hessian == "gauss-newton"
    with pytest.raises(SystemExit):
        p.parse_args(["--hessian", "fisher"])
