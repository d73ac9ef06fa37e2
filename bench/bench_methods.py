"""Time each TDA method's fast path (tda.methods) against a plain loop on the same inputs; report ratios and GFLOP/s.

The paper's CNN on sklearn's digits (28x28): 30 training samples (digits 0-2, 10 per class) and
90 or 300 test samples (all ten digits), one seed trained with the reference protocol, its
checkpoints. Run from the repo root: `python bench/bench_methods.py` (about 5 minutes on one
thread of a 2-core CPU), or `--quick` (one size, two checkpoints, shorter loops; under 3 minutes),
which ends with one JSON line of the headline figures.

The plain loops are what one writes without torch.func: per-sample autograd calls, one
torch.optim.Adam per LOO/ATS model, a LiSSA recursion per test sample with double-backward HVPs,
Python loops over pairs. Where a loop is too slow to run in full it is timed on a slice and
scaled linearly (its cost is exactly linear in the sliced dimension); the table says so.
FLOPs are counted from the layer shapes (multiply-adds x 2, full convolution outputs; a backward
pass is the weight and input gradients, a Hessian-vector product twice a gradient) and divided by
the fast path's CPU time; the peak is the rate of a large float32 matrix product measured between
the methods of the same run on the same threads (the median, so that it sees the same load).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import digits, flop_counts, gemm_gflops, timed  # noqa: E402,F401 - digits: bench_before_after
from bench.loops import loop_ats, loop_gd_gc, loop_lissa, loop_loo  # noqa: E402
from tda.backends import get_backend  # noqa: E402
from tda.config import parse_experiment  # noqa: E402
from tda.methods.ats import ats_scores  # noqa: E402
from tda.dispatch import member_losses, train_ensemble  # noqa: E402
from tda.engine.ensemble import removal_weights, stack  # noqa: E402
from tda.engine.functional import split_params  # noqa: E402
from tda.kernels import native  # noqa: E402
from tda.methods.grad_sim import grad_dot_and_cos  # noqa: E402
from tda.methods.influence import lissa_scores  # noqa: E402
from tda.methods.loo import loo_continue  # noqa: E402
from tda.training import train_member  # noqa: E402

CFG = parse_experiment("cnn_digits3_10pc")
SEED = 446
METHODS = ("gd_gc", "ats", "if", "loo")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="30 x 90, 2 checkpoints, shorter loops; ends with a JSON line")
    p.add_argument("--test_sizes", type=int, nargs="+", default=None, help="default: 90 300 (quick: 90), N = 30")
    p.add_argument("--sizes", nargs="+", default=None, metavar="NxM",
                   help="training x test sizes instead, e.g. 30x90 150x900 (N a multiple of 3)")
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                   help="the methods timed (default: all)")
    p.add_argument("--ckpts", type=int, default=None, help="checkpoints timed (default: all 5; quick: 2)")
    p.add_argument("--loo_loop_members", type=int, default=3, help="LOO loop timed on this many members, scaled to 30")
    p.add_argument("--if_loop_tests", type=int, default=None, help="IF loop timed on this many test samples, scaled")
    p.add_argument("--gd_loop_tests", type=int, default=None, help="GD/GC loop timed on this many test samples, scaled")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--torch_ops", action="store_true",
                   help="the CNN kernels' GELU + pool blocks through torch's ops, not the C kernels (TDA_C_KERNELS=0)")
    args = p.parse_args(argv)
    quick = args.quick
    sizes = ([tuple(map(int, s.lower().split("x"))) for s in args.sizes] if args.sizes else
             [(30, m) for m in (args.test_sizes or ([90] if quick else [90, 300]))])
    methods = set(args.methods or METHODS)
    n_ckpts = args.ckpts or (2 if quick else 5)
    if_tests = args.if_loop_tests or (10 if quick else 30)
    gd_tests = args.gd_loop_tests or (10 if quick else 30)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.torch_ops:
        os.environ["TDA_C_KERNELS"] = "0"
    cpu = platform.processor() or platform.machine()
    blocks = "C kernels" if native.library() is not None else "torch's ops"
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}; GELU + pool blocks: {blocks}")
    backend = get_backend(CFG)
    peak = [gemm_gflops()]
    rows, summary = [], {}
    for n_train, m_test in sizes:
        x, y, xt, yt = digits(m_test, n_train)
        ckpts = train_member(backend, SEED, x, y, xt, yt, progress=False)[-n_ckpts:]
        batches = backend.continuation_batches(SEED, len(y))  # the reference LOO's batch order
        models = [copy.deepcopy(backend.load(ck)) for ck in ckpts]
        n = len(y)
        tag = f"{n} x {m_test}"
        flops = flop_counts(models[0], n, m_test, batches)

        def run(name, key, fast, loop, scale=1.0, note="", on=models):
            # fast and loop alternate checkpoint by checkpoint so both see the same background load
            tf = tl = cf = cl = 0.0
            err = 0.0
            for mdl in on:
                f_out, w, c = timed(lambda: fast(mdl, *split_params(mdl)))
                tf, cf = tf + w, cf + c
                if loop is not None:
                    l_out, w, c = timed(lambda: loop(mdl))
                    tl, cl = tl + w * scale, cl + c * scale
                    err = max(err, rel(f_out[tuple(slice(0, s) for s in l_out.shape)], l_out))
            peak.append(gemm_gflops())
            gf = flops[key] * len(on) / cf / 1e9
            rows.append((name, tag, tf, tl, cf, cl, err, gf, note))
            summary.setdefault((n_train, m_test), {})[key] = {"ratio_vs_loop": round(cl / cf, 3) if loop else None,
                                                   "gflops": round(gf, 2)}
            ratio = f"x{cl / cf:5.2f}" if loop else "     -"
            print(f"{name:19s} {tag:9s} cpu: fast {cf:7.2f} s loop {cl:8.2f} s {ratio} | wall: fast {tf:7.2f} s "
                  f"loop {tl:8.2f} s | {gf:5.1f} GFLOP/s | max rel diff {err:.1e} {note}", flush=True)

        k = min(gd_tests, m_test)
        if "gd_gc" in methods:
            run("GD+GC", "gd_gc", lambda mdl, p, f: torch.cat(grad_dot_and_cos(mdl, p, f, x, y, xt, yt)),
                lambda mdl: torch.cat(loop_gd_gc(mdl, x, y, xt[:k], yt[:k])), m_test / k,
                "(per-pair loop as the reference's" + ("" if k == m_test else f", on {k} test samples, x{m_test / k:g}")
                + ")")
        if "ats" in methods:
            run("ATS", "ats", lambda mdl, p, f: ats_scores(mdl, p, f, x, y, xt, yt, CFG.lr, CFG.weight_decay),
                lambda mdl: loop_ats(mdl, x, y, xt, yt, CFG.lr, CFG.weight_decay))
            run("ATS fwd", "ats_fwd", lambda mdl, p, f: member_losses(mdl, stack(p, n), f, xt, yt), None,
                note="(the N x M forwards alone: N stacked models on every test sample)")
        k = min(if_tests, m_test)

        def lissa(mdl, p, f):
            return lissa_scores(mdl, p, f, x, y, xt, yt, CFG.lissa_damp, CFG.lissa_scale)[0]

        if "if" in methods:
            run("IF", "if", lissa, lambda mdl: loop_lissa(mdl, x, y, xt[:k], yt[:k], CFG), m_test / k,
                "(LiSSA" + ("" if k == m_test else f"; loop on {k} test samples, x{m_test / k:g}") + ")")
        r = args.loo_loop_members
        w = removal_weights(n, False)
        if "loo" in methods:
            run("LOO", "loo", lambda mdl, p, f: loo_continue(mdl, p, f, x, y, xt, yt, batches, CFG.lr,
                                                             CFG.weight_decay),
                lambda mdl: loop_loo(mdl, x, y, xt, yt, batches, range(r), CFG.lr, CFG.weight_decay), n / r,
                f"(paper protocol; loop on {r} members, x{n / r:g})")
            run("LOO step", "loo_step", lambda mdl, p, f: train_ensemble(mdl, p, f, x, y, batches, w, CFG.lr,
                                                                          CFG.weight_decay)[0]["fc2.bias"], None,
                note="(the ensemble's training steps alone, no evaluation)")
        if not quick and not args.torch_ops and native.library() is not None:  # the same without the C kernels
            def torch_ops(fn):
                def run_without(*a):
                    os.environ["TDA_C_KERNELS"] = "0"
                    try:
                        return fn(*a)
                    finally:
                        os.environ.pop("TDA_C_KERNELS")
                return run_without
            if "ats" in methods:
                run("ATS fwd, torch ops", "ats_fwd", torch_ops(lambda mdl, p, f: member_losses(mdl, stack(p, n), f, xt,
                                                                                              yt)),
                    None, note="(as ATS fwd, the GELU + pool blocks through torch's ops instead of the C kernels)")
            if "if" in methods:
                run("IF, torch ops", "if", torch_ops(lissa), None,
                    note="(as IF, the blocks and the Hessian-vector products' tangents through torch's ops)")
            if "loo" in methods:
                run("LOO step, torch ops", "loo_step", torch_ops(lambda mdl, p, f: train_ensemble(
                    mdl, p, f, x, y, batches, w, CFG.lr, CFG.weight_decay)[0]["fc2.bias"]), None,
                    note="(as LOO step, the GELU + pool blocks through torch's ops)")
        if (n_train, m_test) == sizes[0] and not quick and "loo" in methods:  # members vmapped, as on CUDA
            run("LOO vmap", "loo", lambda mdl, p, f: loo_continue(mdl, p, f, x, y, xt, yt, batches, CFG.lr,
                                                                  CFG.weight_decay, vectorize=True),
                lambda mdl: loop_loo(mdl, x, y, xt, yt, batches, range(r), CFG.lr, CFG.weight_decay), n / r,
                f"(members vmapped as on CUDA; first checkpoint only; loop on {r} members, x{n / r:g})", models[:1])
    gemm = float(np.median(peak))
    print(f"\nfloat32 GEMM 1024 x 1024 on {torch.get_num_threads()} thread(s): {gemm:.1f} GFLOP/s (median of "
          f"{len(peak)} measurements between the methods; best {max(peak):.1f})")
    print("\n| method | N x M | fast CPU (s) | loop CPU (s) | CPU ratio | fast wall (s) | loop wall (s) | GFLOP/s "
          "| of GEMM peak | max rel diff | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, tag, tf, tl, cf, cl, err, gf, note in rows:
        loop = f"{cl:.1f} | {cl / cf:.2f}" if cl else "- | -"
        print(f"| {name} | {tag} | {cf:.1f} | {loop} | {tf:.1f} | {tl:.1f} | {gf:.1f} | {gf / gemm:.0%} "
              f"| {err:.0e} | {note.strip('()')} |")
    if quick:
        s = summary[sizes[0]]
        out = {k: {**s[k], "peak_fraction": round(s[k]["gflops"] / gemm, 3)} for k in ("loo", "ats", "if", "gd_gc")}
        print(json.dumps({**out, "gemm_gflops": round(gemm, 2)}))


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


if __name__ == "__main__":
    main()
