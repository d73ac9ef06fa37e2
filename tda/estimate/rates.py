"""How fast this machine computes each building block of the pipeline, for one model on inputs of one shape: a short
calibration on random data, cached under the user's cache directory.

Every rate is seconds per unit of work, measured on the device the steps would use (CPU time of one thread on the
CPU, as each seed worker has; wall time with the device synchronised on CUDA), after one warm-up call, through the
same functions the methods call (`tda.dispatch`, so the CNN kernels where they apply).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import dispatch, stats
from ..backends import get_backend
from ..config import ExperimentConfig, TDAError
from ..engine.ensemble import stack
from ..engine.functional import split_params
from ..kernels import build, native

#: bump when what is measured changes: cached calibrations of another version are not used
VERSION = 1


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work of each building block on one device, and what a process holds before any step."""

    device: str  # "cpu" or "cuda"
    device_name: str  # the CPU's or GPU's name
    train: float  # one sample through the training loop (forward, backward, torch.optim.Adam), per sample
    step: float  # one LOO member's training step, per member and sample
    eval: float  # one member's forward on one test sample
    grad: float  # one per-sample gradient
    hvp: float  # one Hessian-vector product on one sample of a LiSSA batch, per vector
    dot: float  # one of the N x M x P multiply-adds of GD's and GC's gradient dot products (factored on the kernels)
    vdot: float  # one of IF's N x M x P multiply-adds of its solution vectors with the test gradients
    vector: float  # one entry of a parameter-sized vector operation (solver iterates, Adam), per pass
    io: float  # per seed and step: loading its checkpoints and saving its scores
    pair: float  # the statistics of one (train, test) pair of one method, over all K (p-values, their CSV rows)
    figure: float  # one figure written
    startup: float  # wall seconds for a fresh process to import the package (a Slurm task's, a seed worker's start)
    base_bytes: int  # resident memory of a process with torch and the model loaded
    n_params: int  # P, the attributed parameters
    calibration_s: float  # how long the calibration took

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":
        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return wall
    return time.process_time


def _per(clock: Callable[[], float], fn: Callable[[], object], units: float, reps: int = 1) -> float:
    """Seconds per unit of fn's work: one warm-up call, then the best of `reps` timed calls."""
    fn()
    best = math.inf
    for _ in range(reps):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return max(best, 1e-12) / units


def rss_bytes() -> int:
    """This process's resident memory now (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    tag = build._cpu_tag().splitlines()
    return next((ln.split(":", 1)[1].strip() for ln in tag if ln.startswith("model name")), "CPU")


def _statistics(n: int, m: int, seeds: int, ckpts: int, folder: Path) -> tuple[float, float]:
    """(seconds per pair of one method, seconds per figure): the p-values' sums over random scores, one CSV per K."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    scores = np.random.default_rng(0).standard_normal((seeds, ckpts, n, m)).astype(np.float32)

    def pvalues() -> None:
        for k in range(1, ckpts + 1):
            st = stats.stats_across_k(scores, k)
            pz, pt = stats.z_pvalues(st.snr), stats.t_pvalues(st)
            stats.benjamini_hochberg(pt)
            pd.DataFrame(pz).to_csv(folder / "p.csv", float_format="%.7g")

    def figure() -> None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(scores[0, 0].ravel(), bins=50)
        fig.savefig(folder / "f.png", dpi=100)
        plt.close(fig)

    return _per(time.perf_counter, pvalues, n * m), _per(time.perf_counter, figure, 1)


def measure(cfg: ExperimentConfig, n: int, m: int, vectors: int, device: torch.device) -> Rates:
    """Calibrate every rate for cfg's model at N = n, M = m (the sizes bound the work: at most 64 samples per
    block), with `vectors` Hessian-vector products at once, on `device`."""
    start, clock = time.perf_counter(), _clock(device)
    spec = cfg.spec
    torch.manual_seed(0)
    try:
        model = get_backend(cfg).build().to(device).eval()
    except Exception as e:  # noqa: BLE001 - a model family that cannot be built here
        raise TDAError(f"--estimate cannot build {cfg.model}'s model to calibrate on ({type(e).__name__}: {e})")
    params, frozen = split_params(model)
    p = sum(t.numel() for t in params.values())
    base = rss_bytes()
    nb, mb, k = min(n, 64), min(m, 64), min(n, 8)
    x = torch.rand(max(nb, mb), spec.channels, spec.image_size, spec.image_size, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    bs = min(cfg.batch_size, nb)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train() -> None:
        for i in range(0, nb, bs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + bs]), y[i:i + bs]).backward()
            opt.step()

    rates = {"train": _per(clock, train, nb)}
    model.eval()
    weights = torch.ones(k, nb, device=device)
    weights[torch.arange(k), torch.arange(k)] = 0  # member k leaves sample k out, as in LOO

    def ensemble(epochs: int) -> float:
        batches = [[torch.arange(i, min(i + bs, nb)) for i in range(0, nb, bs)]] * epochs
        return _per(clock, lambda: dispatch.train_ensemble(model, params, frozen, x[:nb], y[:nb], batches, weights,
                                                           1e-4, 0.0), 1)

    # the difference of 4 and 2 epochs: a step per member and sample, without the first step (one batched backward
    # for all members while they still agree) and the set-up
    rates["step"] = max(ensemble(4) - ensemble(2), 1e-12) / (k * 2 * nb)
    members = stack(params, k)
    rates["eval"] = _per(clock, lambda: dispatch.member_losses(model, members, frozen, x[:mb], y[:mb]), k * mb)
    rates["grad"] = _per(clock, lambda: dispatch.sample_grads(model, params, frozen, x[:nb], y[:nb]), nb)
    coords = dispatch.coordinates(model, params, frozen, x)
    v = coords.grads(x[:vectors], y[:vectors]) if vectors <= len(x) else torch.randn(vectors, p, device=device)
    lb = cfg.lissa_batch_size
    rates["hvp"] = _per(clock, lambda: coords.curvature(x[:lb], y[:lb], v), vectors * lb, reps=2)
    ga = dispatch.sample_grads(model, params, frozen, x[:nb], y[:nb])
    gb = dispatch.sample_grads(model, params, frozen, x[:mb], y[:mb])
    rates["dot"] = _per(clock, lambda: (ga.dot(gb), gb.norms()), nb * mb * p, reps=2)
    rates["vdot"] = max(_per(clock, lambda: coords.dot_grads(v, x[:mb], y[:mb]), 1) - mb * rates["grad"],
                        1e-12) / (vectors * mb * p)
    w = torch.empty_like(v)
    rates["vector"] = _per(clock, lambda: (w.copy_(v).mul_(0.5).add_(v), float(w.norm())), 3 * v.numel(), reps=2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        state = {n_: t.detach().cpu() for n_, t in model.state_dict().items()}

        def io() -> None:
            for c in range(cfg.n_ckpts):
                torch.save(state, folder / f"{c}.pt")
                torch.load(folder / f"{c}.pt", weights_only=True)
            torch.save(torch.zeros(cfg.n_ckpts, n, m), folder / "scores.pt")

        rates["io"] = _per(time.perf_counter, io, 1)
        rates["pair"], rates["figure"] = _statistics(min(n, 60), min(m, 300), 10, cfg.n_ckpts, folder)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tda.attribution, tda.methods"], cwd=Path(__file__).parents[2],
                   capture_output=True, timeout=600)
    rates["startup"] = time.perf_counter() - t
    return Rates(device.type, device_name(device), **rates, base_bytes=base, n_params=p,
                 calibration_s=time.perf_counter() - start)


def cache_key(cfg: ExperimentConfig, n: int, m: int, vectors: int, device: torch.device) -> str:
    """What a calibration depends on: the machine, torch, the code of the kernels, the model, the shapes, the device."""
    parts = [str(VERSION), build._cpu_tag(), torch.__version__, native.source_text(), cfg.model, str(cfg.spec.channels),
             str(cfg.spec.image_size), str(cfg.batch_size), str(cfg.lissa_batch_size), str(min(n, 64)), str(min(m, 64)),
             str(vectors), device.type, device_name(device), os.environ.get("TDA_C_KERNELS", "1")]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def cache_dir() -> Path:
    """Where calibrations are kept: estimate/ in the kernels' cache directory (TDA_KERNEL_CACHE, else the user's)."""
    return build.cache_dir() / "estimate"


def calibrated(cfg: ExperimentConfig, n: int, m: int, vectors: int, device: torch.device,
               log: Callable[[str], None] = print) -> tuple[Rates, bool]:
    """The cached calibration for these arguments, else a new one (then cached); also whether it was cached."""
    path = cache_dir() / f"{cache_key(cfg, n, m, vectors, device)}.json"
    try:
        if path.is_file() and build.foreign(path) is None:
            return Rates(**json.loads(path.read_text())), True
    except (OSError, TypeError, ValueError):
        pass
    where = "the GPU" if device.type == "cuda" else "the CPU, one thread"
    log(f"calibrating on {where} ({device_name(device)}) for {cfg.model} on {cfg.spec.channels}x{cfg.spec.image_size}x"
        f"{cfg.spec.image_size} inputs ...")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # as every seed worker runs
    try:
        rates = measure(cfg, n, m, vectors, device)
    finally:
        torch.set_num_threads(threads)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if build.foreign(path.parent) is None:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(rates.to_json())
            os.replace(tmp, path)
    except OSError:
        pass  # not cached: the next estimate calibrates again
    return rates, False
