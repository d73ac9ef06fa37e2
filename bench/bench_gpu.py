"""A short prepared check for a CUDA machine: LOO at cnn_cifar10_50pc size, vmapped ensemble vs a plain loop.

    python bench/bench_gpu.py                      # on CUDA: N = 500 RGB 32x32 images, 500 test, the 2-layer CNN
    python bench/bench_gpu.py --device cpu --small # the same code path on the CPU, tiny, to check the script runs

One checkpoint's LOO (paper protocol) shortened to `--epochs` epochs with the experiment's batch size 32:
the fast path is `tda.methods.loo.loo_continue` with members vmapped (the CUDA default) and the chunk
derived from free memory; the plain loop retrains `--loop_members` members with torch.optim.Adam, one
after the other, and is scaled to all N. Random images stand in for CIFAR-10 (speed and memory do not
depend on the pixels). Prints wall times, the ratio, the chunk used and the peak memory, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loops import loop_loo  # noqa: E402
from tda.backends import epoch_batches  # noqa: E402
from tda.engine.ensemble import use_vmap  # noqa: E402
from tda.engine.functional import split_params  # noqa: E402
from tda.engine.memory import budget_bytes  # noqa: E402
from tda.methods.loo import loo_continue  # noqa: E402
from tda.models import CNN  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="N = 20, M = 20: checks the script, measures nothing")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the shortened retraining")
    p.add_argument("--loop_members", type=int, default=4, help="members the plain loop retrains (then scaled)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here: pass --device cpu --small to check the script on the CPU")
    n, m = (20, 20) if args.small else (500, 500)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device)
    xt, yt = torch.randn(m, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (m,), generator=g).to(device)
    torch.manual_seed(446)
    model = CNN(3).to(device).eval()
    params, frozen = split_params(model)
    torch.manual_seed(446)
    batches = epoch_batches(n, 32, args.epochs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    tau = loo_continue(model, params, frozen, x, y, xt, yt, batches, 1e-3, 5e-3)
    _sync(device)
    fast = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    k = min(args.loop_members, n)
    _sync(device)
    t0 = time.perf_counter()
    ref = loop_loo(model, x, y, xt, yt, batches, list(range(k)), 1e-3, 5e-3)
    _sync(device)
    loop = (time.perf_counter() - t0) * n / k
    err = float((tau[:k] - ref).abs().max() / ref.abs().max())
    out = {"device": str(device), "n_train": n, "n_test": m, "epochs": args.epochs,
           "members_vmapped": use_vmap(device, None), "budget_bytes": budget_bytes(device),
           "fast_s": round(fast, 2), "loop_s_scaled": round(loop, 2), "ratio": round(loop / fast, 2),
           "peak_memory_gib": None if peak is None else round(peak / 2**30, 2), "max_rel_diff": err}
    print(f"LOO {n} x {m}, {args.epochs} epochs on {device}: ensemble {fast:.1f} s, plain loop {loop:.1f} s "
          f"(scaled from {k} members): {loop / fast:.1f}x; peak memory "
          f"{'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'}; max relative difference {err:.1e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
