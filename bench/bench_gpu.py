"""The prepared check for a CUDA machine, at the cnn_cifar10_50pc shape (N = M = 500, 3 x 32 x 32), synthetic data.

    python bench/bench_gpu.py                        # on CUDA, about 5 min on one H100
    python bench/bench_gpu.py --device cpu --small   # the same code paths on the CPU, tiny: checks the script runs

Three parts, each printed as it finishes, then one JSON line with all of them:
1. **methods**: one checkpoint of one seed through `tda.attribute` with the default chunking, each method in
   its own interpreter (bench/bench_cifar.py): LOO (paper protocol, retraining `--loo_epochs` epochs, its time
   scaled to the task's 30), ATS, IF with LiSSA and with CG, GD+GC: wall time and peak memory
   (`torch.cuda.max_memory_allocated`, and the process's resident memory).
2. **LOO, vmapped vs plain loop**: `tda.methods.loo.loo_continue` with members vmapped (the CUDA default) and
   the chunk derived from free memory, against `--loop_members` members retrained one after the other with
   torch.optim.Adam (scaled to all N), `--epochs` epochs each; their scores agree.
3. **seed-per-GPU workers**: `--seeds` seeds (default two per visible GPU), each trained and scored by GD+GC
   and ATS, spread by the pipeline's worker pool (`tda.workers.run_jobs`, one worker per visible GPU): which
   device each seed ran on, the pool's wall time against the sum of the seeds' own times.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cifar import factory, run_methods, synthetic, table  # noqa: E402
from loops import loop_loo  # noqa: E402
from tda.backends import epoch_batches  # noqa: E402
from tda.config import get_task  # noqa: E402
from tda.engine.ensemble import use_vmap  # noqa: E402
from tda.engine.functional import split_params  # noqa: E402
from tda.engine.memory import budget_bytes  # noqa: E402
from tda.methods.loo import loo_continue  # noqa: E402
from tda.workers import default_workers, run_jobs  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loo_vs_loop(n: int, m: int, epochs: int, loop_members: int, device: torch.device) -> dict:
    """One checkpoint's LOO shortened to `epochs`: the vmapped ensemble against the plain loop on `loop_members`."""
    x, y, xt, yt = (t.to(device) for t in synthetic(n, m))
    torch.manual_seed(446)
    model = factory().to(device).eval()
    params, frozen = split_params(model)
    torch.manual_seed(446)
    batches = epoch_batches(n, 32, epochs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    tau = loo_continue(model, params, frozen, x, y, xt, yt, batches, 1e-3, 5e-3)
    _sync(device)
    fast = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    k = min(loop_members, n)
    t0 = time.perf_counter()
    ref = loop_loo(model, x, y, xt, yt, batches, list(range(k)), 1e-3, 5e-3)
    _sync(device)
    loop = (time.perf_counter() - t0) * n / k
    err = float((tau[:k] - ref).abs().max() / ref.abs().max())
    return {"n_train": n, "n_test": m, "epochs": epochs, "members_vmapped": use_vmap(device, None),
            "budget_bytes": budget_bytes(device), "fast_s": round(fast, 2), "loop_s_scaled": round(loop, 2),
            "ratio": round(loop / fast, 2), "peak_memory_gib": None if peak is None else round(peak / 2 ** 30, 2),
            "max_rel_diff": err}


def one_seed(seed: int, n: int, m: int, epochs: int, device_type: str) -> dict:
    """A worker's job: train `seed` on the synthetic data, then GD+GC and ATS on its last checkpoint; where and how
    long it ran."""
    import tda
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    x, y, xt, yt = synthetic(n, m)
    t0 = time.perf_counter()
    post = tda.train_posterior(factory, (x, y), [seed], tda.Training(epochs=epochs, checkpoints=1), device=str(device),
                               progress=False)
    for method in ("gd_gc", "ats"):
        tda.attribute(method, post, (x, y), (xt, yt), device=device, progress=False)
    _sync(device)
    return {"seed": seed, "device": str(device), "pid": os.getpid(), "seconds": time.perf_counter() - t0}


def workers_check(seeds: int | None, n: int, m: int, epochs: int, device: torch.device) -> dict:
    """The seeds spread over the pipeline's worker pool (one worker per visible GPU, or per core on the CPU)."""
    workers = default_workers(device)
    seeds = seeds or 2 * workers
    jobs = [(f"seed {s}", (s, n, m, epochs, device.type)) for s in range(446, 446 + seeds)]
    t0 = time.perf_counter()
    outcomes = run_jobs(one_seed, jobs, workers, device, "seeds on the workers", progress=False)
    wall = time.perf_counter() - t0
    failed = [f"{o.label}: {o.error}" for o in outcomes if o.error is not None]
    if failed:
        raise SystemExit("error: " + "; ".join(failed))
    done = [o.value for o in outcomes]
    return {"workers": workers, "seeds": seeds, "wall_s": round(wall, 2),
            "sum_of_seed_s": round(sum(d["seconds"] for d in done), 2),
            "devices": sorted({d["device"] for d in done}), "processes": len({d["pid"] for d in done}),
            "per_seed": done}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="N = M = 20, 3 epochs: checks the script, measures nothing")
    p.add_argument("--loo_epochs", type=int, default=3, help="epochs LOO retrains for in part 1 (scaled to 30)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the shortened retraining of part 2")
    p.add_argument("--loop_members", type=int, default=4, help="members the plain loop retrains in part 2 (scaled)")
    p.add_argument("--seeds", type=int, default=None, help="seeds of part 3 (default: two per worker)")
    p.add_argument("--parts", nargs="+", default=["methods", "loo", "workers"], choices=["methods", "loo", "workers"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here: pass --device cpu --small to check the script on the CPU")
    n, m = (20, 20) if args.small else (500, 500)
    epochs = 3 if args.small else get_task("cifar10").epochs
    out = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if "methods" in args.parts:
        rows = run_methods(n, m, epochs, min(args.loo_epochs, epochs), args.device, ["loo", "ats", "if_lissa", "if_cg",
                                                                                      "gd_gc"])
        print(table(rows), flush=True)
        out["methods"] = rows
    if "loo" in args.parts:
        r = out["loo"] = loo_vs_loop(n, m, args.epochs, args.loop_members, device)
        peak = "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']} GiB"
        print(f"LOO {n} x {m}, {args.epochs} epochs on {device}: ensemble {r['fast_s']:.1f} s, plain loop "
              f"{r['loop_s_scaled']:.1f} s (scaled from {min(args.loop_members, n)} members): {r['ratio']:.1f}x; peak "
              f"CUDA memory {peak}; max relative difference {r['max_rel_diff']:.1e}", flush=True)
    if "workers" in args.parts:
        w = out["workers"] = workers_check(args.seeds, n, m, epochs, device)
        print(f"{w['seeds']} seeds on {w['workers']} worker(s), devices {', '.join(w['devices'])}: {w['wall_s']:.1f} s "
              f"wall, {w['sum_of_seed_s']:.1f} s of seed time ({w['sum_of_seed_s'] / w['wall_s']:.2f}x)", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
