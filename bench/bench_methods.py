"""Time each TDA method's fast path (tda.methods) against a plain loop on the same inputs; print the ratios.

CNN of DESIGN 4 on sklearn's digits (28x28): 30 training samples (digits 0-2, 10 per class) and
90 or 900 test samples (all ten digits), one seed trained with the reference protocol, its 5
checkpoints. Run from the repo root: `python bench/bench_methods.py` (a few minutes on 2 CPU cores).

The plain loops are what one writes without torch.func: per-sample autograd calls, one
torch.optim.Adam per LOO/ATS model, a LiSSA recursion per test sample with double-backward HVPs,
Python loops over pairs. Where a loop is too slow to run in full it is timed on a slice and
scaled linearly (its cost is exactly linear in the sliced dimension); the table says so.
"""
from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tda.attribution import CNN_BACKEND  # noqa: E402
from tda.config import get_task, parse_experiment  # noqa: E402
from tda.data import transform  # noqa: E402
from tda.methods.ats import ats_scores  # noqa: E402
from tda.methods.common import split_params  # noqa: E402
from tda.methods.grad_sim import grad_dot_and_cos  # noqa: E402
from tda.methods.influence import lissa_scores  # noqa: E402
from tda.methods.loo import loo_continue  # noqa: E402
from tda.models import CNN  # noqa: E402
from tda.training import train_cnn  # noqa: E402

CFG = parse_experiment("cnn_digits3_10pc")
SEED = 446


def digits(n_test: int):
    """30 training images (0-2, 10 each) and n_test test images (all digits) from sklearn's digits, disjoint."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = transform(get_task("digits3"), torch.from_numpy(d.images.astype(np.float32)))
    labels = torch.from_numpy(d.target).long()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(labels), generator=g)
    train = torch.cat([perm[labels[perm] == c][:10] for c in range(3)])
    rest = perm[~torch.isin(perm, train)][:n_test]
    return images[train], labels[train], images[rest], labels[rest]


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


# ---------------------------------------------------------------- plain loops
def loop_grads(model, x, y):
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


def loop_ats(model, x, y, xt, yt):
    with torch.no_grad():
        base = F.cross_entropy(model(xt), yt, reduction="none")
    out = []
    for j in range(len(y)):
        m = copy.deepcopy(model)
        opt = torch.optim.Adam(m.parameters(), lr=CFG.lr, weight_decay=CFG.weight_decay)
        F.cross_entropy(m(x[j:j + 1]), y[j:j + 1]).backward()
        opt.step()
        with torch.no_grad():
            out.append(F.cross_entropy(m(xt), yt, reduction="none") - base)
    return torch.stack(out)


def loop_lissa(model, x, y, xt, yt):
    ps = list(model.parameters())
    damp, scale, bs = CFG.lissa_damp, CFG.lissa_scale, CFG.lissa_batch_size

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


def loop_loo(model, x, y, xt, yt, batches, members):
    """The reference's LOO: one plain retraining per removed sample (paper protocol)."""
    with torch.no_grad():
        base = F.cross_entropy(model(xt), yt, reduction="none")
    out = []
    for j in members:
        m = copy.deepcopy(model)
        opt = torch.optim.Adam(m.parameters(), lr=CFG.lr, weight_decay=CFG.weight_decay)
        w = torch.ones(len(y))
        w[j] = 0
        for ep in batches:
            for idx in ep:
                opt.zero_grad()
                ((w[idx] * F.cross_entropy(m(x[idx]), y[idx], reduction="none")).sum() / len(idx)).backward()
                opt.step()
        with torch.no_grad():
            out.append(F.cross_entropy(m(xt), yt, reduction="none") - base)
    return torch.stack(out)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test_sizes", type=int, nargs="+", default=[90, 900])
    p.add_argument("--loo_loop_members", type=int, default=3, help="LOO loop timed on this many members, scaled to 30")
    p.add_argument("--if_loop_tests", type=int, default=30, help="IF loop timed on at most this many test samples, scaled")
    p.add_argument("--gd_loop_tests", type=int, default=30, help="GD/GC loop timed on at most this many test samples, scaled")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = []
    for m_test in args.test_sizes:
        x, y, xt, yt = digits(m_test)
        ckpts = train_cnn(CFG, SEED, {"images": x, "labels": y}, {"images": xt, "labels": yt}, progress=False)
        batches = CNN_BACKEND.batches(CFG, SEED, len(y))  # the reference LOO's batch order
        models = []
        for ck in ckpts:
            mdl = CNN()
            mdl.load_state_dict(ck["state_dict"])
            models.append(mdl.eval())
        n = len(y)
        tag = f"{n} x {m_test}"

        def run(name, fast, loop, scale=1.0, note="", on=models):
            # fast and loop alternate checkpoint by checkpoint so both see the same background load
            tf = tl = cf = cl = 0.0
            err = 0.0
            for mdl in on:
                f_out, w, c = timed(lambda: fast(mdl, *split_params(mdl)))
                tf, cf = tf + w, cf + c
                l_out, w, c = timed(lambda: loop(mdl))
                tl, cl = tl + w * scale, cl + c * scale
                err = max(err, rel(f_out[tuple(slice(0, s) for s in l_out.shape)], l_out))
            rows.append((name, tag, tf, tl, cf, cl, err, note))
            print(f"{name:8s} {tag:9s} wall: fast {tf:7.2f} s loop {tl:8.2f} s x{tl / tf:6.1f} | "
                  f"cpu: fast {cf:7.2f} s loop {cl:8.2f} s x{cl / cf:6.1f} | max rel diff {err:.1e} {note}", flush=True)

        k = min(args.gd_loop_tests, m_test)
        run("GD+GC", lambda mdl, p, f: torch.cat(grad_dot_and_cos(mdl, p, f, x, y, xt, yt)),
            lambda mdl: torch.cat(loop_gd_gc(mdl, x, y, xt[:k], yt[:k])), m_test / k,
            "(per-pair loop as the reference's" + ("" if k == m_test else f", on {k} test samples, x{m_test / k:g}") + ")")
        run("ATS", lambda mdl, p, f: ats_scores(mdl, p, f, x, y, xt, yt, CFG.lr, CFG.weight_decay),
            lambda mdl: loop_ats(mdl, x, y, xt, yt))
        k = min(args.if_loop_tests, m_test)
        run("IF", lambda mdl, p, f: lissa_scores(mdl, p, f, x, y, xt, yt, CFG.lissa_damp, CFG.lissa_scale)[0],
            lambda mdl: loop_lissa(mdl, x, y, xt[:k], yt[:k]), m_test / k,
            "" if k == m_test else f"(loop on {k} test samples, x{m_test / k:g})")
        r = args.loo_loop_members
        run("LOO", lambda mdl, p, f: loo_continue(mdl, p, f, x, y, xt, yt, batches, CFG.lr, CFG.weight_decay),
            lambda mdl: loop_loo(mdl, x, y, xt, yt, batches, range(r)), n / r,
            f"(paper protocol; loop on {r} members, x{n / r:g})")
        if m_test == args.test_sizes[0]:  # why members are looped, not vmapped, on a CPU (common.use_vmap)
            run("LOO vmap", lambda mdl, p, f: loo_continue(mdl, p, f, x, y, xt, yt, batches, CFG.lr, CFG.weight_decay,
                                                            vectorize=True),
                lambda mdl: loop_loo(mdl, x, y, xt, yt, batches, range(r)), n / r,
                f"(members vmapped as on CUDA; first checkpoint only; loop on {r} members, x{n / r:g})", models[:1])
    print("\n| method | N x M | fast wall (s) | loop wall (s) | wall ratio | fast CPU (s) | loop CPU (s) "
          "| CPU ratio | max rel diff | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, tag, tf, tl, cf, cl, err, note in rows:
        print(f"| {name} | {tag} | {tf:.1f} | {tl:.1f} | {tl / tf:.1f} | {cf:.1f} | {cl:.1f} | {cl / cf:.1f} "
              f"| {err:.0e} | {note.strip('()')} |")


if __name__ == "__main__":
    main()
