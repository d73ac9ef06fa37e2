"""How each method's cost grows with N and M: CPU seconds on one thread, peak resident memory, the fitted exponents.

    python bench/bench_scaling.py                 # N in {30, 60, 150} x M in {90, 300, 900}, fmnist3 (about 10 min)
    python bench/bench_scaling.py --ns 30 60 --ms 90 300 --methods if gd_gc   # a part of the grid
    python bench/bench_scaling.py --quick         # N in {15, 30} x M in {30, 90}: the script works (about 1 min)

For every N one seed (446) of the paper's CNN is trained on N images of Fashion-MNIST's classes 0-2 (the
fmnist3 task's protocol: 15 epochs, batch 32; sklearn's digits where Fashion-MNIST is not installed), and
each method runs on its last checkpoint against M test images of all ten classes. One checkpoint per
size: a seed costs five of them, the same each (LOO retrains every checkpoint for all 15 epochs). Every
(method, N, M) runs in a fresh interpreter on one thread, so its peak resident memory (ru_maxrss, the
process's own: torch, the data and the method with its default chunking; the high-water mark is reset
just before the call) is its own; CPU = user + system seconds of the method's call. LOO runs once; the
others run twice and the second call is reported (a seed's later checkpoints find the library loaded
and the allocator warm), the first beside it. Methods: LOO (paper protocol), ATS, IF (LiSSA, the reference's settings),
GD+GC. The share of the GEMM rate divides each run's GFLOP/s (bench/common.py's FLOP count) by the median
of a float32 1024 x 1024 product timed between the runs. The exponents are a least-squares fit of
log CPU = a + b log N + c log M over the grid. Writes bench/scaling.csv and bench/scaling.png (log-log).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import FMNIST, digits, flop_counts, fmnist3, gemm_gflops  # noqa: E402
from tda.backends import get_backend  # noqa: E402
from tda.config import parse_experiment  # noqa: E402
from tda.training import train_member  # noqa: E402

SEED = 446
METHODS = ("loo", "ats", "if", "gd_gc")
NAMES = {"loo": "LOO", "ats": "ATS", "if": "IF", "gd_gc": "GD+GC"}

WORKER = r"""
import json, resource, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from tda.models import CNN
from tda.engine.functional import split_params
from tda.methods.loo import loo_continue
from tda.methods.ats import ats_scores
from tda.methods.influence import lissa_scores
from tda.methods.grad_sim import grad_dot_and_cos
d = torch.load(sys.argv[2], weights_only=True)
m = int(sys.argv[4])
model = CNN(); model.load_state_dict(d["ckpt"]); model.eval()
p, f = split_params(model)
args = (model, p, f, d["x"], d["y"], d["xt"][:m], d["yt"][:m])
run = {"loo": lambda: loo_continue(*args, d["batches"], d["lr"], d["wd"]),
       "ats": lambda: ats_scores(*args, d["lr"], d["wd"]),
       "if": lambda: lissa_scores(*args, d["damp"], d["scale"])[0],
       "gd_gc": lambda: grad_dot_and_cos(*args)}[sys.argv[3]]
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
cold = None
if sys.argv[3] != "loo":  # a first call pays the first allocations (page faults) and loads: the seed's later checkpoints do not
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    run()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cold = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
base = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on
r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
run()
r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(json.dumps({"user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime, "wall": w1 - w0,
                  "peak_rss": rss("VmHWM"), "base_rss": base, "cold_cpu": cold}))
"""


def run_grid(ns: list[int], ms: list[int], methods: list[str], tmp: Path, log=print) -> pd.DataFrame:
    """Train one seed per N, then time every (method, N, M) in its own interpreter; one row per run."""
    gemm, rows = [gemm_gflops()], []
    source = "fmnist3" if FMNIST.is_dir() else "digits3"
    for n in ns:
        cfg = parse_experiment(f"cnn_{source}_{n // 3}pc")
        backend = get_backend(cfg)
        x, y, xt, yt = fmnist3(n, max(ms)) if source == "fmnist3" else digits(max(ms), n)
        ckpt = train_member(backend, SEED, x, y, xt, yt, progress=False)[-1]
        batches = backend.continuation_batches(SEED, n)
        data = tmp / f"data_{n}.pt"
        torch.save({"x": x, "y": y, "xt": xt, "yt": yt, "ckpt": ckpt["state_dict"], "batches": batches,
                    "lr": cfg.lr, "wd": cfg.weight_decay, "damp": cfg.lissa_damp, "scale": cfg.lissa_scale}, data)
        model = backend.load(ckpt)
        for m in ms:
            flops = flop_counts(model, n, m, batches, cfg.lissa_batch_size)
            for method in methods:
                res = subprocess.run([sys.executable, "-c", WORKER, str(REPO), str(data), method, str(m)], check=True,
                                     capture_output=True, text=True,
                                     env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
                t = json.loads(res.stdout.strip().splitlines()[-1])
                gemm.append(gemm_gflops())
                cpu = t["user"] + t["sys"]
                rows.append({"method": NAMES[method], "data": source, "N": n, "M": m, "cpu_s": cpu, "cold_cpu_s": t["cold_cpu"],
                             "sys_s": t["sys"], "wall_s": t["wall"], "peak_rss_mb": t["peak_rss"] / 2 ** 20,
                             "base_rss_mb": t["base_rss"] / 2 ** 20, "gflops": flops[method] / cpu / 1e9})
                log(f"{NAMES[method]:6s} N {n:4d} M {m:4d}: CPU {cpu:8.2f} s (sys {t['sys']:.2f}), wall "
                    f"{t['wall']:8.2f} s, peak RSS {t['peak_rss'] / 2 ** 20:7.0f} MB, {rows[-1]['gflops']:6.1f} GFLOP/s")
    out = pd.DataFrame(rows)
    out["gemm_gflops"] = float(np.median(gemm))
    out["of_gemm"] = out["gflops"] / out["gemm_gflops"]
    return out


def exponents(df: pd.DataFrame) -> pd.DataFrame:
    """Per method, the least-squares exponents b, c of CPU ~ N^b M^c and of the peak memory above the RSS before the
    call."""
    rows = []
    for method, g in df.groupby("method", sort=False):
        a = np.column_stack([np.ones(len(g)), np.log(g["N"]), np.log(g["M"])])
        fit = {}
        for col, y in (("cpu", g["cpu_s"]), ("memory", (g["peak_rss_mb"] - g["base_rss_mb"]).clip(lower=1))):
            coef, *_ = np.linalg.lstsq(a, np.log(np.asarray(y, dtype=float)), rcond=None)
            fit[f"{col}_N"], fit[f"{col}_M"] = coef[1], coef[2]
        rows.append({"method": method, **fit})
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, path: Path) -> None:
    """CPU seconds and peak memory against M, one line per N, one column per method, log-log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    methods = list(dict.fromkeys(df["method"]))
    fig, axes = plt.subplots(2, len(methods), figsize=(3.2 * len(methods), 6), squeeze=False)
    for j, method in enumerate(methods):
        g = df[df["method"] == method]
        for i, (col, label) in enumerate((("cpu_s", "CPU seconds (1 thread)"), ("peak_rss_mb", "peak RSS (MB)"))):
            ax = axes[i][j]
            sns.lineplot(data=g, x="M", y=col, hue="N", marker="o", palette="viridis", ax=ax, legend=(i == j == 0))
            ax.set(xscale="log", yscale="log", title=method if i == 0 else "", ylabel=label if j == 0 else "")
    fig.suptitle("cost of one checkpoint against the test set size M, one line per training set size N")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", type=int, nargs="+", default=[30, 60, 150], help="training set sizes (multiples of 3)")
    p.add_argument("--ms", type=int, nargs="+", default=[90, 300, 900], help="test set sizes")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--out", default=None, help="stem of the CSV and the figure (default: bench/scaling; with "
                   "--quick: bench/scaling_quick)")
    p.add_argument("--quick", action="store_true", help="N in {15, 30} x M in {30, 90} instead: a check that it runs")
    args = p.parse_args(argv)
    if args.quick:
        args.ns, args.ms = [15, 30], [30, 90]
    args.out = args.out or str(REPO / "bench" / ("scaling_quick" if args.quick else "scaling"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    try:
        df = run_grid(args.ns, args.ms, args.methods, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    df.to_csv(out.with_suffix(".csv"), index=False)
    if len(args.ns) > 1 and len(args.ms) > 1:
        figure(df, out.with_suffix(".png"))
    print(f"\nfloat32 GEMM 1024 x 1024 on one thread: {df['gemm_gflops'].iloc[0]:.1f} GFLOP/s (median between the runs)")
    print("\n| method | N x M | CPU (s) | first call CPU (s) | wall (s) | peak RSS (MB) | before the call (MB) | GFLOP/s "
          "| of GEMM rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in df.itertuples():
        cold = "-" if pd.isna(r.cold_cpu_s) else f"{r.cold_cpu_s:.2f}"
        print(f"| {r.method} | {r.N} x {r.M} | {r.cpu_s:.2f} | {cold} | {r.wall_s:.2f} | {r.peak_rss_mb:.0f} "
              f"| {r.base_rss_mb:.0f} | {r.gflops:.1f} | {r.of_gemm:.0%} |")
    if len(args.ns) > 1 and len(args.ms) > 1:
        print("\n| method | CPU ~ N^b | CPU ~ M^c | memory above the base ~ N^b | ~ M^c |")
        print("|---|---|---|---|---|")
        for r in exponents(df).itertuples():
            print(f"| {r.method} | {r.cpu_N:.2f} | {r.cpu_M:.2f} | {r.memory_N:.2f} | {r.memory_M:.2f} |")
    print(json.dumps({"rows": len(df), "csv": str(out.with_suffix(".csv"))}))


if __name__ == "__main__":
    main()
