"""Influence functions (IF, Koh & Liang's sign): tau_ij = -grad L_j . s_test(i), s_test ~ H^-1 grad L_i.

Two solvers: the reference's FastIF LiSSA recursion (one pass over batches of 8 of the unshuffled
training subset; with only ceil(N/8) steps it is nearly a scaled Grad-Dot), and conjugate gradient on
the damped full training Hessian, a converged inverse to compare it against. Either may use the
Gauss-Newton matrix instead of the Hessian (positive semi-definite, so damped CG converges).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import TDAError
from ..dispatch import coordinates
from ..engine.functional import Loss, Params, cross_entropy
from ..engine.hvp import HESSIANS
from ..ranges import NON_NEGATIVE, POSITIVE, POSITIVE_INT, Range
from .base import Method, Scores, SeedData, option, register

#: a LiSSA iterate this many times larger than where it started has diverged
DIVERGED = 1e8
LISSA_NOTE = ("LiSSA with one pass of T = ceil(N/batch) steps: s_test = h_T/scale stays close to "
              "(T+1) grad L_i / scale, so IF is nearly a scaled Grad-Dot")


def lissa_scores(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor, damp: float, scale: float, batch_size: int = 8,
                 order: str = "auto", grad_chunk: int = 256, vec_chunk: int = 64,
                 test_chunk: int = 256, hessian: str = "exact", depth: int | None = None,
                 loss: Loss = cross_entropy) -> tuple[torch.Tensor, str]:
    """IF by the FastIF LiSSA recursion, tau [N, M]; also returns the order used ('direct' or 'transposed').

    h_0 = v, h_t = v + A_t h_{t-1} with A_t = (1 - damp) I - H_t / scale, H_t the Hessian of the mean
    loss on the t-th batch of `batch_size` unshuffled training samples, t = 1..T = ceil(N / batch_size);
    s_test = h_T / scale. Thus h_T = B v, B = I + A_T + A_T A_{T-1} + ... + A_T...A_1, and since every A_t
    is symmetric g_j^T B g_i = (B^T g_j)^T g_i with B^T = I + A_T + A_{T-1} A_T + ... + A_1...A_T: the
    'transposed' order applies A_T, then A_{T-1}, ... to the N training gradients, accumulating the sum
    (N*T Hessian-vector products instead of M*T). order='auto' picks the smaller side. hessian='gauss-newton'
    uses the batches' Gauss-Newton matrices for H_t. `depth` takes T steps instead, cycling over the batches.
    A recursion that diverges (H_t / scale too large for the damping) stops with a one-line TDAError.
    """
    n, m = len(y_train), len(y_test)
    if order == "auto":
        order = "transposed" if n < m else "direct"
    if order not in ("direct", "transposed"):
        raise ValueError(f"order must be 'auto', 'direct' or 'transposed', got {order!r}")
    batches = [(x_train[i:i + batch_size], y_train[i:i + batch_size]) for i in range(0, n, batch_size)]
    steps = depth or len(batches)
    # the solver's vectors stay in one set of coordinates (the CNN kernels' own layout where they compute)
    coords = coordinates(model, params, frozen, x_train, hessian, loss=loss)

    spare: list[torch.Tensor] = []  # a buffer the size of the iterate, reused: fresh ones cost page faults

    def a_times(t: int, v: torch.Tensor, start_norm: float, plus: torch.Tensor | None = None,
                into: torch.Tensor | None = None) -> torch.Tensor:
        """A_t v (+ plus), and added into `into`; row by row, so that each row stays in cache for all its sums."""
        xb, yb = batches[t % len(batches)]
        buf = spare.pop() if spare and spare[0].shape == v.shape else None
        out, sq = coords.curvature(xb, yb, v, vec_chunk=vec_chunk, out=buf), 0.0
        for i in range(len(out)):
            row = out[i].mul_(-1 / scale).add_(v[i], alpha=1 - damp)
            sq += float(torch.dot(row, row))
            if plus is not None:
                row.add_(plus[i])
            if into is not None:
                into[i].add_(row)
        if not math.isfinite(sq) or math.sqrt(sq) > DIVERGED * start_norm:  # sq is not finite where any entry is not
            raise TDAError(f"LiSSA diverges at step {t + 1} of {steps}: the curvature is too large for scale {scale:g} "
                           f"and damping {damp:g}; raise --scale (or use --solver cg)")
        return out

    g_tr = coords.grads(x_train, y_train, grad_chunk)
    out = []
    if order == "transposed":
        acc, w, start = g_tr.clone(), g_tr, float(g_tr.norm())
        for t in reversed(range(steps)):
            w, last = a_times(t, w, start, into=acc), w
            spare[:] = [last] if last is not g_tr else []  # the previous iterate's memory takes the next product
        for i in range(0, m, test_chunk):
            out.append(coords.dot_grads(acc, x_test[i:i + test_chunk], y_test[i:i + test_chunk], grad_chunk)
                       .div_(-scale))
    else:
        for i in range(0, m, test_chunk):
            v = coords.grads(x_test[i:i + test_chunk], y_test[i:i + test_chunk], grad_chunk)
            h, start = v.clone(), float(v.norm())
            for t in range(steps):
                h, last = a_times(t, h, start, plus=v), h
                spare[:] = [last]
            out.append(-(g_tr @ (h / scale).T))
    return torch.cat(out, dim=1), order


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, tol: float = 1e-5,
                       max_iter: int = 500, patience: int | None = None) -> tuple[torch.Tensor, dict]:
    """Solve A x = b for a batch of right-hand sides [R, P] (A symmetric, given by `matvec` on [R, P]).

    Each column runs its own CG until ||r|| <= tol * ||b|| and keeps the iterate of smallest residual. A column
    stops early where CG cannot converge, rather than spending the iteration budget: at negative curvature
    (p^T A p <= 0: A is not positive definite, CG has no guarantee past it) or when its residual has not improved
    for `patience` iterations (default: max(20, max_iter // 10)). Returns x and {'iterations', 'rel_residual'
    (true ||b - A x|| / ||b|| per column), 'converged', 'negative_curvature' (columns stopped by it), 'stalled'}.
    """
    patience = patience or max(20, max_iter // 10)
    x = torch.zeros_like(b)
    best_x, best_rs = x.clone(), (b * b).sum(1)
    best_it = torch.zeros(len(b), dtype=torch.long, device=b.device)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    b_norm = b.norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    active = rs.sqrt() > tol * b_norm
    neg, stalled = torch.zeros_like(active), torch.zeros_like(active)
    it = 0
    while it < max_iter and bool(active.any()):
        it += 1
        ap = matvec(p)
        pap = (p * ap).sum(1)
        bad = active & ~(pap > 0)  # negative or zero curvature, or not finite
        neg |= bad
        active &= ~bad
        alpha = torch.where(active, rs / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(rs))
        x += alpha.unsqueeze(1) * p
        r -= alpha.unsqueeze(1) * ap
        rs_new = (r * r).sum(1)
        better = active & (rs_new < best_rs)
        best_x = torch.where(better.unsqueeze(1), x, best_x)
        best_rs = torch.where(better, rs_new, best_rs)
        best_it = torch.where(better, torch.full_like(best_it, it), best_it)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = torch.where(active.unsqueeze(1), r + beta.unsqueeze(1) * p, p)
        rs = torch.where(active, rs_new, rs)
        active &= rs.sqrt() > tol * b_norm
        stuck = active & (it - best_it >= patience)
        stalled |= stuck
        active &= ~stuck
    x = best_x
    rel = (b - matvec(x)).norm(dim=1) / b_norm
    return x, {"iterations": it, "rel_residual": rel, "converged": bool((rel <= tol).all()),
               "negative_curvature": int(neg.sum()), "stalled": int(stalled.sum())}


def cg_scores(model: nn.Module, params: Params, frozen: Params, x_train: torch.Tensor, y_train: torch.Tensor,
              x_test: torch.Tensor, y_test: torch.Tensor, damping: float, tol: float = 1e-5, max_iter: int = 500,
              grad_chunk: int = 256, vec_chunk: int = 64, data_chunk: int | None = 256,
              test_chunk: int = 256, hessian: str = "exact", loss: Loss = cross_entropy) -> tuple[torch.Tensor, dict]:
    """IF with s_test = (H + damping I)^-1 grad L_i by batched conjugate gradient, tau [N, M], and the solver's info.

    H is the Hessian of the mean training loss over all N samples (no weight decay), or with
    hessian='gauss-newton' its Gauss-Newton matrix G (positive semi-definite: G + damping I is positive
    definite and CG converges). The matrix is symmetric, so the system is solved for whichever gradient
    set (N train or M test) is smaller.
    """
    n, m = len(y_train), len(y_test)
    coords = coordinates(model, params, frozen, x_train, hessian, loss=loss)

    def matvec(v):
        return coords.curvature(x_train, y_train, v, data_chunk, vec_chunk).add_(v, alpha=damping)

    g_tr = coords.grads(x_train, y_train, grad_chunk)
    if n <= m:
        x, info = conjugate_gradient(matvec, g_tr, tol, max_iter)
        tau = torch.cat([-coords.dot_grads(x, x_test[i:i + test_chunk], y_test[i:i + test_chunk], grad_chunk)
                         for i in range(0, m, test_chunk)], dim=1)
        info["solved_for"] = "train"
    else:
        g_te = coords.grads(x_test, y_test, grad_chunk)
        x, info = conjugate_gradient(matvec, g_te, tol, max_iter)
        tau = -(g_tr @ x.T)
        info["solved_for"] = "test"
    info["max_rel_residual"] = float(info.pop("rel_residual").max()) if min(n, m) else 0.0
    return tau, info


def lissa_steps(n_train: int, batch_size: int) -> int:
    """T = ceil(N / batch): the reference's single pass over the unshuffled training subset."""
    return math.ceil(n_train / batch_size)


@register
@dataclass
class IF(Method):
    """Influence functions by LiSSA (the reference's settings) or conjugate gradient; tau < 0 means the sample helps."""

    name = "if"
    outputs = {"if": "IF"}
    script = "run_if.py"
    sign = -1
    key_options = ("solver", "hessian", "damping", "tol", "max_iter", "damp", "scale", "depth")

    solver: str = option("lissa", "lissa: the reference's one-pass FastIF recursion (nearly a scaled Grad-Dot); "
                         "cg: conjugate gradient on the damped full training Hessian", choices=("lissa", "cg"))
    hessian: str = option("exact", "the curvature: exact (the Hessian of the mean training loss; indefinite at a "
                          "trained net, so CG need not converge) or gauss-newton (J^T H_out J, positive "
                          "semi-definite: damped CG converges)", choices=HESSIANS)
    order: str = option("auto", "LiSSA: run the recursion on the test gradients (direct) or, equivalently, on "
                        "the training gradients (transposed); auto takes the smaller set",
                        choices=("auto", "direct", "transposed"))
    damping: float | None = option(None, "CG: lambda in (H + lambda I) (default: the weight decay)", type=float,
                                   range=NON_NEGATIVE)
    tol: float = option(1e-4, "CG: relative residual to reach", type=float, range=Range(gt=0, le=1))
    max_iter: int = option(500, "CG: iteration limit", type=int, range=POSITIVE_INT)
    damp: float | None = option(None, "LiSSA: damping of the recursion (default: the reference's 0.005)", type=float,
                                range=Range(ge=0, le=1))
    scale: float | None = option(None, "LiSSA: scale, H / scale must stay below 2 (default: the reference's 1e4)",
                                 type=float, range=POSITIVE)
    depth: int | None = option(None, "LiSSA: recursion steps, cycling over the batches of 8 (default: one pass, "
                               "ceil(N / 8))", type=int, range=POSITIVE_INT)
    chunk: int = option(64, "Hessian-vector products computed at once", type=int, range=POSITIVE_INT)

    def lissa(self, cfg, n_train: int) -> dict:
        """LiSSA's damping, scale, batch size and depth: the options, else the reference's."""
        return {"damp": cfg.lissa_damp if self.damp is None else self.damp,
                "scale": cfg.lissa_scale if self.scale is None else self.scale, "batch_size": cfg.lissa_batch_size,
                "steps": self.depth or lissa_steps(n_train, cfg.lissa_batch_size)}

    def key_settings(self, backend) -> dict:
        # the exact Hessian and the reference's LiSSA constants are left unnamed, so scores computed before those
        # options existed stay current
        curvature = {} if self.hessian == "exact" else {"hessian": self.hessian}
        if self.solver == "lissa":  # the CG options do not change LiSSA's scores
            given = {k: getattr(self, k) for k in ("damp", "scale", "depth") if getattr(self, k) is not None}
            return {"solver": "lissa", **curvature, **given}
        damping = backend.cfg.weight_decay if self.damping is None else self.damping
        return {"solver": "cg", **curvature, "damping": damping, "tol": self.tol, "max_iter": self.max_iter}

    def settings(self, data: SeedData) -> dict:
        cfg = data.cfg
        s = super().settings(data)
        if self.solver == "lissa":
            s.update(**self.lissa(cfg, data.n_train), note=LISSA_NOTE)
        else:
            s["damping"] = cfg.weight_decay if self.damping is None else self.damping
        return s

    def score_seed(self, data: SeedData) -> tuple[Scores, dict]:
        cfg, out, infos = data.cfg, [], []
        for ck in data.each_checkpoint(f"if/{self.solver}"):
            if self.solver == "lissa":
                c = self.lissa(cfg, data.n_train)
                tau, used = lissa_scores(*ck.tensors(), c["damp"], c["scale"], c["batch_size"], self.order,
                                         vec_chunk=self.chunk, hessian=self.hessian, depth=c["steps"],
                                         loss=data.loss)
                infos.append({"order": used})
            else:
                damping = cfg.weight_decay if self.damping is None else self.damping
                tau, info = cg_scores(*ck.tensors(), damping, self.tol, self.max_iter, vec_chunk=self.chunk,
                                      hessian=self.hessian, loss=data.loss)
                infos.append(info)
            out.append(tau)
        if self.solver == "lissa":
            facts = {"order": infos[0]["order"]}
        else:
            facts = {"solved_for": infos[0]["solved_for"], "iterations": [i["iterations"] for i in infos],
                     "max_rel_residual": [i["max_rel_residual"] for i in infos],
                     "converged": all(i["converged"] for i in infos),
                     "negative_curvature": [i["negative_curvature"] for i in infos],
                     "stalled": [i["stalled"] for i in infos]}
        return {"if": torch.stack(out)}, facts

    def note(self, settings: dict) -> str:
        if settings.get("converged") is False:
            neg, stalled = sum(settings.get("negative_curvature", [0])), sum(settings.get("stalled", [0]))
            why = (f"; stopped early: {neg} system(s) at negative curvature (the Hessian is indefinite: try --hessian "
                   "gauss-newton)" if neg else "") + (f", {stalled} stalled" if stalled else "")
            return (f" (CG did not reach tol {settings['tol']}: max relative residual "
                    f"{max(settings['max_rel_residual']):.2g}{why})")
        if settings.get("converged"):
            return f" (CG converged: max relative residual {max(settings['max_rel_residual']):.2g})"
        return ""
