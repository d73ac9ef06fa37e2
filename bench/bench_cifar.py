"""CIFAR-10-shaped runs in bounded memory: one checkpoint of each method at N = M = 500, 3 x 32 x 32, the paper's CNN.

    python bench/bench_cifar.py                   # on the CPU, one thread; LOO 1 epoch, CG 2 iterations, scaled (~15 min)
    python bench/bench_cifar.py --loo_epochs 30 --cg_iters 100   # unshortened (hours on a CPU)
    python bench/bench_cifar.py --device cuda     # on a GPU (bench_gpu.py runs this)
    python bench/bench_cifar.py --small           # N = M = 20, 3 epochs: checks the script (seconds)

Random images with a class-dependent mean stand in for CIFAR-10 (cost and memory do not depend on the
pixels): N training and M test images of 3 x 32 x 32, ten classes. One seed (446) of the `cnn` model is
trained by the reference protocol for the cifar10 task's 30 epochs (batch 32, Adam 1e-3, weight decay
5e-3) and its last checkpoint is scored by every method through `tda.attribute`, i.e. with the default
chunking the pipeline uses: LOO (paper protocol), ATS, IF with LiSSA and with CG, GD+GC. Each method runs
in its own interpreter (one thread on the CPU), so its peak memory is its own: the process's peak resident
memory (VmHWM, reset just before the call) and, on CUDA, `torch.cuda.max_memory_allocated`. LOO retrains
for `--loo_epochs` epochs; its cost is linear in them (the final evaluation of the N + 1 models on the test
set aside), so its 30-epoch time is scaled from them, and its memory does not depend on them. CG likewise
stops after `--cg_iters` iterations (each one Hessian-vector product of every right-hand side over the
whole training set, plus one for the final residual) and its time is scaled to `--cg_to` iterations (CG
on the fmnist3 task ran up to 100). A seed is five such checkpoints. Prints one table row per method,
then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tda.config import get_task  # noqa: E402

SEED = 446
#: (label, method, options) in the order they run
METHODS = (("LOO (paper)", "loo", {"protocol": "paper"}), ("ATS", "ats", {}), ("IF (LiSSA)", "if", {"solver": "lissa"}),
           ("IF (CG)", "if", {"solver": "cg", "tol": 1e-12}), ("GD+GC", "gd_gc", {}))
KEYS = {"loo": "LOO (paper)", "ats": "ATS", "if_lissa": "IF (LiSSA)", "if_cg": "IF (CG)", "gd_gc": "GD+GC"}
CKPTS_PER_SEED = 5


def synthetic(n: int, m: int, channels: int = 3, size: int = 32, classes: int = 10, seed: int = 0):
    """n training and m test images [., channels, size, size] with labels: noise around one random mean per class."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, channels, size, size, generator=g)
    y, yt = torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (m,), generator=g)
    x = 0.5 * means[y] + torch.randn(n, channels, size, size, generator=g)
    xt = 0.5 * means[yt] + torch.randn(m, channels, size, size, generator=g)
    return x, y, xt, yt


def factory():
    """The paper's 2-layer CNN for 3-channel images (the cifar10 experiments' `cnn`)."""
    from tda.models import CNN
    return CNN(3)


def prepare(n: int, m: int, epochs: int, device: str, path: Path) -> float:
    """Train the seed on synthetic data and save data and last checkpoint to `path`; returns the training's seconds."""
    import tda
    x, y, xt, yt = synthetic(n, m)
    t = time.perf_counter()
    post = tda.train_posterior(factory, (x, y), [SEED], tda.Training(epochs=epochs, checkpoints=1), device=device,
                               progress=False)
    seconds = time.perf_counter() - t
    state = {k: v.detach().cpu() for k, v in post.states[0][-1].items()}
    torch.save({"x": x, "y": y, "xt": xt, "yt": yt, "state": state, "epoch": post.epochs[-1]}, path)
    return seconds


def _rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def measure(path: Path, method: str, options: dict, device: str, epochs: int) -> dict:
    """One call of `tda.attribute` on the saved checkpoint: CPU and wall seconds, peak memory (this process's)."""
    import tda
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
    d = torch.load(path, weights_only=True)
    post = tda.Posterior(factory, [SEED], [d["epoch"]], tda.Training(epochs=epochs, checkpoints=1), own_protocol=True,
                         states=[[d["state"]]])
    run = lambda: tda.attribute(method, post, (d["x"], d["y"]), (d["xt"], d["yt"]), device=dev, progress=False,  # noqa: E731
                                **options)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    base = _rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    scores = run()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    scores = scores if isinstance(scores, dict) else {method: scores}
    return {"user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime, "wall": w1 - w0,
            "peak_rss": _rss("VmHWM"), "base_rss": base,
            "cuda_peak": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
            "finite": all(bool(torch.isfinite(s).all()) for s in scores.values()),
            "shape": list(next(iter(scores.values())).shape)}


def run_methods(n: int, m: int, epochs: int, loo_epochs: int, device: str, keys: list[str], cg_iters: int = 2,
                cg_to: int = 100, log=print) -> list[dict]:
    """Train once, then every chosen method in a fresh interpreter; one row per method, its time also scaled to one
    whole checkpoint (LOO's `epochs`, CG's `cg_to` iterations)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_cifar_"))
    try:
        path = tmp / "data.pt"
        train_s = prepare(n, m, epochs, device, path)
        log(f"trained seed {SEED} for {epochs} epochs on {n} synthetic 3 x 32 x 32 images in {train_s:.1f} s ({device})")
        rows = []
        for label, method, options in METHODS:
            if label not in [KEYS[k] for k in keys]:
                continue
            e = loo_epochs if method == "loo" else epochs
            cg = options.get("solver") == "cg"
            options = {**options, "max_iter": cg_iters} if cg else options
            scale, ran = ((epochs / e, f"{e} of {epochs} epochs") if method == "loo" else
                          ((cg_to + 1) / (cg_iters + 1), f"{cg_iters} of {cg_to} iterations") if cg else (1.0, "all"))
            spec = json.dumps({"path": str(tmp / "data.pt"), "method": method, "options": options, "device": device,
                               "epochs": e})
            env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())}
            res = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise SystemExit(f"error: {label} failed: {res.stderr.strip().splitlines()[-1:]}")
            t = json.loads(res.stdout.strip().splitlines()[-1])
            cpu = t["user"] + t["sys"]
            rows.append({"method": label, "N": n, "M": m, "device": device, "ran": ran, "scale": scale, "cpu_s": cpu,
                         "sys_s": t["sys"], "wall_s": t["wall"], "cpu_s_checkpoint": cpu * scale,
                         "wall_s_checkpoint": t["wall"] * scale, "peak_rss_mb": t["peak_rss"] / 2 ** 20,
                         "base_rss_mb": t["base_rss"] / 2 ** 20,
                         "cuda_peak_mb": None if t["cuda_peak"] is None else t["cuda_peak"] / 2 ** 20,
                         "finite": t["finite"], "shape": t["shape"]})
            r = rows[-1]
            log(f"{label:12s} CPU {cpu:8.1f} s, wall {t['wall']:8.1f} s (ran {ran}); one checkpoint: "
                f"{r['wall_s_checkpoint']:8.1f} s wall; peak RSS {r['peak_rss_mb']:6.0f} MB"
                + ("" if r["cuda_peak_mb"] is None else f", CUDA peak {r['cuda_peak_mb']:.0f} MB"))
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows: list[dict]) -> str:
    """The rows as the Markdown table of bench/README.md, with one seed's (five checkpoints') time."""
    cuda = any(r["cuda_peak_mb"] is not None for r in rows)
    head = ("| method | N x M | ran | CPU (s) | wall (s) | one checkpoint, wall (s) | one seed, wall (h) | peak RSS "
            "(MB) | before the call (MB) |" + (" CUDA peak (MB) |" if cuda else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['N']} x {r['M']} | {r['ran']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} "
                     f"| {r['wall_s_checkpoint']:.1f} | {r['wall_s_checkpoint'] * CKPTS_PER_SEED / 3600:.2f} "
                     f"| {r['peak_rss_mb']:.0f} | {r['base_rss_mb']:.0f} |"
                     + (f" {r['cuda_peak_mb']:.0f} |" if cuda else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=500, help="training images (the cifar10 task at 50 per class: 500)")
    p.add_argument("--m", type=int, default=500, help="test images (the cifar10 task's 500)")
    p.add_argument("--loo_epochs", type=int, default=1, help="epochs LOO retrains for (its time is scaled to 30)")
    p.add_argument("--cg_iters", type=int, default=2, help="iterations CG runs for (its time is scaled to --cg_to)")
    p.add_argument("--cg_to", type=int, default=100, help="CG iterations of a whole checkpoint, for the scaled time")
    p.add_argument("--methods", nargs="+", default=list(KEYS), choices=list(KEYS))
    p.add_argument("--small", action="store_true", help="N = M = 20, 3 training epochs: a check that the script runs")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(measure(Path(spec["path"]), spec["method"], spec["options"], spec["device"], spec["epochs"])))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here: use --device cpu")
    if not args.device.startswith("cuda"):
        torch.set_num_threads(1)
    epochs = 3 if args.small else get_task("cifar10").epochs
    n, m = (20, 20) if args.small else (args.n, args.m)
    rows = run_methods(n, m, epochs, min(args.loo_epochs, epochs), args.device, args.methods, args.cg_iters, args.cg_to)
    print()
    print(table(rows))
    print(json.dumps({"rows": rows, "epochs": epochs}))


if __name__ == "__main__":
    main()
