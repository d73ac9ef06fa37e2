"""LOO (paper protocol), ATS and IF (LiSSA) of the working tree against an earlier revision, on the same checkpoints
and inputs.

The earlier revision is exported with `git archive` into a temporary directory; each (revision,
method, checkpoint) runs in its own interpreter on one thread, the two revisions alternating
checkpoint by checkpoint so that both see the same background load. Reports user+system CPU
seconds (and system seconds alone: allocation churn shows there) per method and size, and each
revision's GFLOP/s as a share of the float32 GEMM rate measured between the runs (bench_methods.py's
FLOP count). Each timed call is the interpreter's first (cold: it pays the library's loading and the
first allocations' page faults), or with `--warm` its second, after one untimed call on the same
checkpoint (as a seed's checkpoints after the first run in the pipeline). Run from the repo root: `python bench/bench_before_after.py --old <rev>`, e.g.
`--methods if --sizes 30x90 150x900` for IF at the sizes of the paper's MNIST3 experiments.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.bench_methods import CFG, SEED  # noqa: E402
from bench.common import digits, flop_counts, gemm_gflops  # noqa: E402
from tda.backends import get_backend  # noqa: E402
from tda.training import train_member  # noqa: E402

WORKER = r"""
import json, resource, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from tda.models import CNN
try:
    from tda.engine.functional import split_params
except ImportError:  # a checkout from before the engine had a package of its own
    from tda.methods.functional import split_params
from tda.methods.loo import loo_continue
from tda.methods.ats import ats_scores
from tda.methods.influence import lissa_scores
d = torch.load(sys.argv[2], weights_only=True)
model = CNN(); model.load_state_dict(d["ckpts"][int(sys.argv[4])]); model.eval()
p, f = split_params(model)
args = (model, p, f, d["x"], d["y"], d["xt"], d["yt"])
run = {"loo": lambda: loo_continue(*args, d["batches"], d["lr"], d["wd"]),
       "ats": lambda: ats_scores(*args, d["lr"], d["wd"]),
       "if": lambda: lissa_scores(*args, d["damp"], d["scale"])[0]}[sys.argv[3]]
if sys.argv[6] == "warm":
    run()
r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
out = run()
r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
torch.save(out, sys.argv[5])
print(json.dumps({"user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime, "wall": w1 - w0}))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="the earlier revision (any git revision name)")
    p.add_argument("--test_sizes", type=int, nargs="+", default=[90, 300], help="test sizes at N = 30")
    p.add_argument("--sizes", nargs="+", default=None, metavar="NxM", help="training x test sizes instead, e.g. 30x90 150x900")
    p.add_argument("--ckpts", type=int, default=5, help="checkpoints timed (the last ones)")
    p.add_argument("--methods", nargs="+", default=["loo", "ats"], choices=["loo", "ats", "if"])
    p.add_argument("--warm", action="store_true", help="time each method's second call in its interpreter, after one "
                   "untimed call (default: the first)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_before_after_"))
    try:
        rows = compare(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gemm = float(np.median(GEMM))
    print(f"\n{'warm' if args.warm else 'cold'} calls; float32 GEMM 1024 x 1024 on one thread: {gemm:.1f} GFLOP/s (median of {len(GEMM)} between the runs; "
          f"best {max(GEMM):.1f})")
    print("\n| method | N x M | before CPU (s) | before sys (s) | after CPU (s) | after sys (s) | speed-up (CPU) "
          "| before of GEMM | after of GEMM | before wall (s) | after wall (s) | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0].upper()} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.2f} "
              f"| {r[10] / r[2] / 1e9 / gemm:.0%} | {r[10] / r[4] / 1e9 / gemm:.0%} | {r[7]:.1f} | {r[8]:.1f} "
              f"| {r[9]:.0e} |")


#: the GEMM reference rate, measured between the runs (GFLOP/s)
GEMM: list[float] = []


def compare(args: argparse.Namespace, tmp: Path) -> list[tuple]:
    """Time both revisions on every size, method and checkpoint, working in `tmp`; one row per (method, size)."""
    old = tmp / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    backend = get_backend(CFG)
    rows = []
    GEMM.append(gemm_gflops())
    sizes = ([tuple(map(int, s.lower().split("x"))) for s in args.sizes] if args.sizes else
             [(30, m) for m in args.test_sizes])
    for n_train, m_test in sizes:
        x, y, xt, yt = digits(m_test, n_train)
        ckpts = train_member(backend, SEED, x, y, xt, yt, progress=False)[-args.ckpts:]
        data = tmp / f"data_{m_test}.pt"
        torch.save({"x": x, "y": y, "xt": xt, "yt": yt, "ckpts": [c["state_dict"] for c in ckpts],
                    "batches": backend.continuation_batches(SEED, len(y)), "lr": CFG.lr, "wd": CFG.weight_decay,
                    "damp": CFG.lissa_damp, "scale": CFG.lissa_scale}, data)
        flops = flop_counts(backend.load(ckpts[0]), len(y), m_test, backend.continuation_batches(SEED, len(y)))
        for method in args.methods:
            total = {"old": [0.0, 0.0, 0.0], "new": [0.0, 0.0, 0.0]}
            diff = 0.0
            for i in range(len(ckpts)):
                outs = {}
                for name, root in (("old", old), ("new", REPO)):
                    res = subprocess.run([sys.executable, "-c", WORKER, str(root), str(data), method, str(i),
                                          str(tmp / f"{name}.pt"), "warm" if args.warm else "cold"], check=True,
                                         capture_output=True, text=True,
                                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
                    t = json.loads(res.stdout.strip().splitlines()[-1])
                    total[name] = [a + b for a, b in zip(total[name], (t["user"], t["sys"], t["wall"]))]
                    outs[name] = torch.load(tmp / f"{name}.pt", weights_only=True)
                diff = max(diff, float((outs["new"] - outs["old"]).abs().max() / outs["old"].abs().max()))
                GEMM.append(gemm_gflops())
            (ou, os_, ow), (nu, ns, nw) = total["old"], total["new"]
            rows.append((method, f"{len(y)} x {m_test}", ou + os_, os_, nu + ns, ns, (ou + os_) / (nu + ns), ow, nw,
                         diff, flops[method] * len(ckpts)))
            print(f"{method} {len(y)} x {m_test}: CPU old {ou + os_:.1f} s (sys {os_:.1f}) new {nu + ns:.1f} s "
                  f"(sys {ns:.1f}) x{(ou + os_) / (nu + ns):.2f} | wall old {ow:.1f} new {nw:.1f} "
                  f"| rel diff {diff:.0e}", flush=True)
    return rows


if __name__ == "__main__":
    main()
