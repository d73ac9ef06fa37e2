"""The plain loops the benchmark compares with: what one writes without torch.func (the reference code's structure)."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F


def loop_grads(model, x, y):
    """Per-sample gradients, one autograd call per sample, each flattened."""
    ps = list(model.parameters())
    out = []
    for i in range(len(y)):
        g = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), ps)
        out.append(torch.cat([t.flatten() for t in g]))
    return out


def loop_gd_gc(model, x, y, xt, yt):
    """The reference's structure: per test sample its gradient, then per training sample its gradient again."""
    gd = torch.zeros(len(y), len(yt))
    gc = torch.zeros(len(y), len(yt))
    for i in range(len(yt)):
        b = loop_grads(model, xt[i:i + 1], yt[i:i + 1])[0]
        for j in range(len(y)):
            a = loop_grads(model, x[j:j + 1], y[j:j + 1])[0]
            gd[j, i] = a @ b
            gc[j, i] = gd[j, i] / (a.norm() * b.norm())
    return gd, gc


def loop_ats(model, x, y, xt, yt, lr, weight_decay):
    """Per training sample: a copy of the model, one torch.optim.Adam step on it, test losses (batched)."""
    with torch.no_grad():
        base = F.cross_entropy(model(xt), yt, reduction="none")
    out = []
    for j in range(len(y)):
        m = copy.deepcopy(model)
        opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=weight_decay)
        F.cross_entropy(m(x[j:j + 1]), y[j:j + 1]).backward()
        opt.step()
        with torch.no_grad():
            out.append(F.cross_entropy(m(xt), yt, reduction="none") - base)
    return torch.stack(out)


def loop_lissa(model, x, y, xt, yt, cfg):
    """Per test sample the FastIF LiSSA recursion (double-backward HVPs), then dot products with training gradients."""
    ps = list(model.parameters())
    damp, scale, bs = cfg.lissa_damp, cfg.lissa_scale, cfg.lissa_batch_size

    def hvp(xb, yb, v):
        g = torch.autograd.grad(F.cross_entropy(model(xb), yb), ps, create_graph=True)
        gv = sum((gi * vi).sum() for gi, vi in zip(g, v))
        return torch.autograd.grad(gv, ps)

    gtr = torch.stack(loop_grads(model, x, y))
    out = torch.zeros(len(y), len(yt))
    for i in range(len(yt)):
        v = torch.autograd.grad(F.cross_entropy(model(xt[i:i + 1]), yt[i:i + 1]), ps)
        h = [t.clone() for t in v]
        for t in range(math.ceil(len(y) / bs)):
            hv = hvp(x[bs * t:bs * t + bs], y[bs * t:bs * t + bs], h)
            h = [vi + (1 - damp) * hi - hvi / scale for vi, hi, hvi in zip(v, h, hv)]
        out[:, i] = -(gtr @ torch.cat([t.flatten() for t in h]) / scale)
    return out


def loop_loo(model, x, y, xt, yt, batches, members, lr, weight_decay):
    """The reference's LOO: one plain retraining per removed sample (paper protocol)."""
    with torch.no_grad():
        base = F.cross_entropy(model(xt), yt, reduction="none")
    out = []
    for j in members:
        m = copy.deepcopy(model)
        opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=weight_decay)
        w = torch.ones(len(y), device=x.device)
        w[j] = 0
        for ep in batches:
            for idx in ep:
                idx = idx.to(x.device)
                opt.zero_grad()
                ((w[idx] * F.cross_entropy(m(x[idx]), y[idx], reduction="none")).sum() / len(idx)).backward()
                opt.step()
        with torch.no_grad():
            out.append(F.cross_entropy(m(xt), yt, reduction="none") - base)
    return torch.stack(out)
