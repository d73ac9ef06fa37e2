"""What the benchmarks share: their data (digits, Fashion-MNIST 0-2, CIFAR-shaped noise), CPU timing, the GEMM
reference rate and the FLOP counts of each method, from the layer shapes."""
from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import numpy as np
import torch

from tda.config import get_task
from tda.data import read_idx, transform
from tda.engine.functional import split_params
from tda.kernels.layout import spec_for

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def digits(n_test: int, n_train: int = 30):
    """n_train training images (digits 0-2, a third each) and n_test test images (all digits) from sklearn's digits
    at 28x28, disjoint."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = transform(get_task("digits3"), torch.from_numpy(d.images.astype(np.float32)))
    labels = torch.from_numpy(d.target).long()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(labels), generator=g)
    train = torch.cat([perm[labels[perm] == c][:n_train // 3] for c in range(3)])
    rest = perm[~torch.isin(perm, train)][:n_test]
    return images[train], labels[train], images[rest], labels[rest]


def fmnist3(n_train: int, n_test: int, root: Path = FMNIST):
    """n_train training images of Fashion-MNIST's classes 0-2 (a third each, from its training split) and n_test test
    images of all ten classes (from its test split), as the fmnist3 task builds them."""
    spec = get_task("fmnist3")
    xs, ys = (read_idx(root / f"train-{k}-idx{d}-ubyte.gz") for k, d in (("images", 3), ("labels", 1)))
    xt, yt = (read_idx(root / f"t10k-{k}-idx{d}-ubyte.gz") for k, d in (("images", 3), ("labels", 1)))
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(ys), generator=g)
    train = torch.cat([perm[ys[perm] == c][:n_train // 3] for c in range(3)])
    test = torch.randperm(len(yt), generator=g)[:n_test]
    return transform(spec, xs[train]), ys[train].long(), transform(spec, xt[test]), yt[test].long()


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def gemm_gflops(n: int = 1024, reps: int = 8) -> float:
    """GFLOP/s of a float32 n x n matrix product on the current threads (per CPU second, best of `reps`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(timed(lambda: a @ b)[2] for _ in range(reps))
    return 2 * n ** 3 / max(best, 1e-9) / 1e9


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def flop_counts(model, n: int, m: int, batches, lissa_batch: int = 8, image=(1, 28, 28)) -> dict[str, float]:
    """FLOPs of each method at one checkpoint, from the layer shapes: 2 x multiply-adds of every convolution (its
    full output) and linear layer per sample forward; a backward adds the weight and input gradients (none for the
    first layer); a Hessian-vector product counts as two gradients; GD/GC and IF add their N x M x P products."""
    params, frozen = split_params(model)
    spec = spec_for(model, params, frozen, torch.zeros(1, *image))
    f, fb = spec.flops_per_sample(False), spec.flops_per_sample(True)
    n_params = sum(t.numel() for t in params.values())
    steps = sum(len(i) for e in batches for i in e)  # sample-passes per member
    t = math.ceil(n / lissa_batch)
    return {"loo": n * steps * fb + (n + 1) * m * f, "loo_step": n * steps * fb, "ats": n * fb + (n + 1) * m * f,
            "ats_fwd": n * m * f, "gd_gc": (n + m) * fb + 2 * n * m * n_params,
            "if": (n + m) * fb + n * t * lissa_batch * 2 * fb + 2 * n * m * n_params}
