"""Fast paths with no other reference, each against a plain loop or a dense formula written here.

- the vectorised `scratch` LOO (vmapped members: the CUDA default) on the CNN against sequential
  torch.optim.Adam retrainings;
- the ViT-LoRA's vectorised LOO with LoRA dropout on against plain fine-tuning that draws the same masks;
- LiSSA end to end on a real CNN through the CPU kernels (both orders) against the per-test-sample
  recursion with autograd Hessian-vector products;
- CG on a real CNN through the CPU kernels (solved for either side) against textbook conjugate gradient, one
  right-hand side at a time, with autograd Hessian-vector products;
- LiSSA in transposed order with the Gauss-Newton matrix against the direct recursion with a dense J^T H J.

float64 throughout, so differences measure the algorithms (summation order only): 1e-7 relative to the
reference's largest entry. The C kernels in float32 are held to the generic path in test_kernels_float32.py.
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import autograd_grads, autograd_hvp, close
from tda.engine.functional import flatten, split_params, unflatten
from tda.kernels import hvp as kernel_hvp
from tda.kernels import native, tangent
from tda.methods.influence import cg_scores, lissa_scores
from tda.methods.loo import loo_scratch
from tda.models import CNN

DT = torch.float64
WD = 5e-3


def _data(n: int, m: int, shape: tuple[int, ...], classes: int, seed: int):
    """Random inputs and labels; test sample 0 is a copy of training sample 0 (so some scores have a known sign)."""
    g = torch.Generator().manual_seed(seed)
    x, xt = torch.randn(n, *shape, generator=g, dtype=DT), torch.randn(m, *shape, generator=g, dtype=DT)
    y, yt = torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (m,), generator=g)
    xt[0], yt[0] = x[0], y[0]
    return x, y, xt, yt


def _plain_retrain(model: nn.Module, x, y, xt, yt, batches, remove: int | None, lr: float, total: int,
                   call=lambda m, x: m(x), seed: int | None = None) -> torch.Tensor:
    """One plain retraining: a copy of the model, torch.optim.Adam with a LambdaLR linear decay, loss.backward(),
    sample `remove`'s loss zeroed (each batch mean still divides by the batch size); with `seed`, the global
    generator is set to it first and the model trains in train mode (dropout on). Test losses after every epoch."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
    w = torch.ones(len(y), dtype=DT)
    if remove is not None:
        w[remove] = 0
    if seed is not None:
        torch.manual_seed(seed)
    out = []
    for epoch in batches:
        model.train(seed is not None)
        for idx in epoch:
            opt.zero_grad()
            ((w[idx] * F.cross_entropy(call(model, x[idx]), y[idx], reduction="none")).sum() / len(idx)).backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            out.append(F.cross_entropy(call(model, xt), yt, reduction="none"))
    return torch.stack(out)


def _plain_scratch_loo(model, x, y, xt, yt, batches, lr, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """tau [epochs, N, M] = L(theta_-j) - L(theta) and the full model's test losses, one retraining at a time."""
    total = sum(len(e) for e in batches)
    full = _plain_retrain(model, x, y, xt, yt, batches, None, lr, total, **kw)
    removed = torch.stack([_plain_retrain(model, x, y, xt, yt, batches, j, lr, total, **kw)
                           for j in range(len(y))], dim=1)
    return removed - full.unsqueeze(1), full


# batches of 2, 2 and 1 (2 does not divide N = 5), two epochs of different orders
BATCHES = [[torch.tensor([3, 0]), torch.tensor([4, 1]), torch.tensor([2])],
           [torch.tensor([1, 2]), torch.tensor([0, 4]), torch.tensor([3])]]


# ---------------------------------------------------------------- scratch LOO, vmapped members
def test_vectorised_scratch_loo_equals_sequential_adam_retrainings():
    torch.manual_seed(0)
    model = CNN().to(DT).eval()
    x, y, xt, yt = _data(5, 3, (1, 28, 28), 10, seed=1)
    params, frozen = split_params(model)
    lr, total = 1e-2, 6
    tau, control = loo_scratch(model, params, frozen, x, y, xt, yt, BATCHES, lambda s: lr * (1 - s / total), WD,
                               snapshot_epochs=[0, 1], chunk=4, vectorize=True)  # 6 members: chunks of 4 and 2
    ref, full = _plain_scratch_loo(model, x, y, xt, yt, BATCHES, lr)
    close(control, full)
    close(tau, ref)
    assert ref.abs().amax(dim=(0, 2)).min() > 1e-3  # every removal moves the test losses far above rounding


# ---------------------------------------------------------------- ViT-LoRA LOO with dropout, vmapped members
@pytest.fixture(scope="module")
def lora_vit(tmp_path_factory):
    """The tiny random ViT of `python -m tda.vit --make_tiny`, a 4-way head and LoRA (r 4) with dropout 0.5."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import ViTForImageClassification

    from tda import vit
    path = vit.make_tiny(tmp_path_factory.mktemp("tiny_vit"))
    torch.manual_seed(0)
    with vit.quiet_transformers():
        base = ViTForImageClassification.from_pretrained(path, num_labels=4, attn_implementation="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, bias="none",
                                                target_modules=["q_proj", "v_proj"]))
    for p in model.base_model.model.classifier.parameters():
        p.requires_grad_(True)
    return model.to(DT).eval()


def test_vectorised_vit_loo_with_lora_dropout_equals_plain_finetuning(lora_vit):
    """vmap(randomness='same') draws one dropout mask per step for all members, and the RNG is rewound for every
    chunk: so each member must equal a plain fine-tuning started from the same generator state."""
    model = lora_vit
    x, y, xt, yt = _data(5, 3, (3, 32, 32), 4, seed=2)
    params, frozen = split_params(model)
    lr, total, seed = 5e-2, 6, 7
    torch.manual_seed(seed)
    tau, control = loo_scratch(model, params, frozen, x, y, xt, yt, BATCHES, lambda s: lr * (1 - s / total), WD,
                               snapshot_epochs=[0, 1], chunk=4, train_mode=True, vectorize=True)
    logits = lambda m, inputs: m(pixel_values=inputs).logits  # noqa: E731
    ref, full = _plain_scratch_loo(model, x, y, xt, yt, BATCHES, lr, call=logits, seed=seed)
    close(control, full)
    close(tau, ref)
    # the masks matter: without dropout (or with other masks) the same retraining ends elsewhere
    other = _plain_retrain(model, x, y, xt, yt, BATCHES, None, lr, total, call=logits, seed=seed + 1)
    assert (other - full).abs().max() > 1e-2 * full.abs().max()


# ---------------------------------------------------------------- LiSSA on the CNN, through the kernels
def _plain_lissa(model, x, y, xt, yt, damp: float, scale: float, steps: int, curvature) -> torch.Tensor:
    """FastIF's s_test for one test sample at a time: h_0 = v, h_t = v + (1 - damp) h - H_t h / scale with
    H_t h = curvature(t, h) for the t-th batch (0-based), t < steps; tau_ji = -g_j . h_T / scale."""
    g_tr = autograd_grads(model, x, y)
    out = torch.zeros(len(y), len(yt), dtype=DT)
    for i in range(len(yt)):
        v = autograd_grads(model, xt[i:i + 1], yt[i:i + 1])[0]
        h = v.clone()
        for t in range(steps):
            h = v + (1 - damp) * h - curvature(t, h) / scale
        out[:, i] = -(g_tr @ h) / scale
    return out


def test_lissa_on_the_cnn_through_the_kernels_equals_the_plain_recursion(monkeypatch):
    torch.manual_seed(3)
    model = CNN().to(DT)
    x, y, xt, yt = _data(19, 3, (1, 28, 28), 10, seed=4)  # batches of 8, 8 and 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):  # a few plain Adam steps on the training data: not the initialisation
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    params, frozen = split_params(model)
    damp, scale = 1e-2, 30.0  # a small scale (the reference's is 1e4): the Hessian terms are much of s_test
    calls = []
    kernel = kernel_hvp.hvp
    monkeypatch.setattr(kernel_hvp, "hvp", lambda *a: calls.append(1) or kernel(*a))
    ref = _plain_lissa(model, x, y, xt, yt, damp, scale, 3,
                       lambda t, h: autograd_hvp(model, x[8 * t:8 * t + 8], y[8 * t:8 * t + 8], h))
    tangents = []
    c_tangent = tangent.hvp
    monkeypatch.setattr(tangent, "hvp", lambda *a: tangents.append(1) or c_tangent(*a))
    for order in ("direct", "transposed"):
        n_calls = len(calls)
        tau, used = lissa_scores(model, params, frozen, x, y, xt, yt, damp, scale, 8, order, vec_chunk=2,
                                 test_chunk=2)
        assert used == order and len(calls) > n_calls  # the Hessian-vector products ran through the kernels
        close(tau, ref)
    assert len(tangents) == len(calls) or native.library() is None  # their conv tangents in C where built
    no_hessian = sum((1 - damp) ** k for k in range(4)) / scale  # h_T without the H_t terms: a multiple of v
    grad_dot = -autograd_grads(model, x, y) @ autograd_grads(model, xt, yt).T * no_hessian
    assert (ref - grad_dot).abs().max() > 0.05 * ref.abs().max()  # the Hessian terms matter at this scale
    assert ref[0, 0] < 0  # the duplicate helps: IF < 0


def _plain_cg(matvec, b: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Textbook conjugate gradient for A x = b, one right-hand side b [P], from x = 0 until |r| <= tol |b|."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(max_iter):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        if r.norm() <= tol * b.norm():
            return x
        p, rr = r + (r @ r) / rr * p, r @ r
    raise AssertionError("the plain CG did not converge")


@pytest.mark.parametrize("n,m", [(7, 3), (3, 7)])
def test_cg_on_the_cnn_through_the_kernels_equals_plain_conjugate_gradient(n, m, monkeypatch):
    torch.manual_seed(3)
    model = CNN().to(DT)
    x, y, xt, yt = _data(n, m, (1, 28, 28), 10, seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    params, frozen = split_params(model)
    damping = 10.0  # the Hessian's eigenvalues reach about -5 here: H + 10 I is positive definite, CG converges
    calls = []
    c_tangent = tangent.hvp
    monkeypatch.setattr(tangent, "hvp", lambda *a: calls.append(1) or c_tangent(*a))
    tau, info = cg_scores(model, params, frozen, x, y, xt, yt, damping, tol=1e-11, max_iter=200, data_chunk=4,
                          vec_chunk=2)
    assert info["converged"] and info["solved_for"] == ("train" if n <= m else "test")
    assert calls or native.library() is None  # the conv tangents in C where the library is built
    g_tr, g_te = autograd_grads(model, x, y), autograd_grads(model, xt, yt)
    a = lambda v: autograd_hvp(model, x, y, v) + damping * v  # noqa: E731
    s_test = torch.stack([_plain_cg(a, g, 1e-12, 200) for g in g_te])
    ref = -(g_tr @ s_test.T)
    close(tau, ref)
    assert (ref + g_tr @ g_te.T / damping).abs().max() > 0.05 * ref.abs().max()  # the Hessian terms matter


# ---------------------------------------------------------------- LiSSA, Gauss-Newton, transposed order
def _dense_gauss_newton(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mean_n J_n^T (diag(p_n) - p_n p_n^T) J_n, J_n the logits' Jacobian by torch.autograd.functional.jacobian."""
    params, frozen = split_params(model)

    def logits_of(flat: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**frozen, **unflatten(flat, params)}, (x,))

    flat0 = flatten(params)
    jac = torch.autograd.functional.jacobian(logits_of, flat0)  # [N, C, P]
    with torch.no_grad():
        p = torch.softmax(logits_of(flat0), dim=-1)
    h = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("ncp,ncd,ndq->pq", jac, h, jac) / len(x)


@pytest.mark.parametrize("n,m", [(11, 4), (5, 9)])
def test_lissa_transposed_with_gauss_newton_equals_the_dense_direct_recursion(n, m):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.GELU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 6), nn.GELU(),
                          nn.Linear(6, 4)).to(DT).eval()
    x, y, xt, yt = _data(n, m, (1, 6, 6), 4, seed=6)
    params, frozen = split_params(model)
    damp, scale, bs = 1e-2, 1.0, 4
    gs = [_dense_gauss_newton(model, x[i:i + bs]) for i in range(0, n, bs)]
    ref = _plain_lissa(model, x, y, xt, yt, damp, scale, len(gs), lambda t, h: gs[t] @ h)
    tau, used = lissa_scores(model, params, frozen, x, y, xt, yt, damp, scale, bs, "transposed",
                             hessian="gauss-newton", vec_chunk=3, test_chunk=3)
    assert used == "transposed"
    close(tau, ref)
    # the batches' Gauss-Newton matrices do not commute: applied in the wrong order, the sum is another one
    assert (gs[0] @ gs[1] - gs[1] @ gs[0]).abs().max() > 1e-3 * (gs[0] @ gs[1]).abs().max()

