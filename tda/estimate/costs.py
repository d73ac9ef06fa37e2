"""The cost of every step of an experiment from the calibrated rates: seconds of one seed (one Slurm task) and its
peak memory, from each method's work counted in the units the rates are measured in.

Per checkpoint, with N training and M test samples, P parameters, E epochs, C checkpoints:
  training   E N train-samples (and a forward over the M test samples at each of the C checkpoints)
  LOO        N members x E N sample steps + (N + 1) M member forwards (protocol paper/continue; paired: N + 1
             members; scratch: once per seed, N + 1 members from the initialisation, evaluated at C snapshots)
  ATS        N gradients, N Adam steps (vector passes over P) + (N + 1) M forwards
  IF LiSSA   R = min(N, M) vectors (the smaller side) through T = ceil(N / 8) steps: R x N sample-HVPs (one pass
             over the training set), 4 T R P vector entries, N + M gradients, N M P multiply-adds
  IF CG      per iteration R x N sample-HVPs and 12 R P vector entries, up to max_iter iterations
  GD and GC  N + M gradients, N M P multiply-adds
Memory: the process (torch, the model), the inputs, and the working set of the method's largest tensors (members
with their Adam moments in chunks sized from free memory as the methods size them, R x P solver vectors, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ExperimentConfig
from ..engine.memory import TRAIN_COPIES, member_bytes, parameter_chunk
from .rates import Rates

FLOAT = 4
#: the LiSSA recursion's passes over its R x P iterates per step (scale and add, the norm, the sum), CG's per iteration
LISSA_PASSES, CG_PASSES = 4, 12
#: Adam's passes over a parameter vector (moments, update)
ADAM_PASSES = 8
#: the solvers' parameter-sized buffers: LiSSA's gradients, sum, iterate, product and spare; CG's b, x, its best,
#: r, p, A p and two temporaries
LISSA_BUFFERS, CG_BUFFERS = 5, 8


@dataclass(frozen=True)
class SeedCost:
    """One seed of one step: seconds, peak resident bytes of its process, and a note on what was assumed."""

    seconds: float
    memory: int
    note: str = ""


def _base(cfg: ExperimentConfig, rates: Rates, n: int, m: int) -> int:
    """A worker with its inputs loaded: the process, the images, one checkpoint's parameters."""
    image = cfg.spec.channels * cfg.spec.image_size * cfg.spec.image_size * FLOAT
    return rates.base_bytes + (n + m) * image + 4 * rates.n_params * FLOAT


def training(cfg: ExperimentConfig, rates: Rates, n: int, m: int) -> SeedCost:
    """One seed's training run."""
    t = cfg.epochs * n * rates.train + cfg.n_ckpts * m * rates.eval + rates.io
    return SeedCost(t, _base(cfg, rates, n, m) + 8 * rates.n_params * FLOAT)


def loo(cfg: ExperimentConfig, rates: Rates, n: int, m: int, protocol: str, chunk: int | None,
        device: torch.device) -> SeedCost:
    """One seed of LOO under `protocol` (None: the experiment's default, paper)."""
    members = n + (protocol in ("paired", "scratch"))
    steps = members * cfg.epochs * n * rates.step
    evals = members * m * rates.eval + m * rates.eval  # the members, then the baseline
    c = cfg.n_ckpts
    t = steps + c * evals if protocol == "scratch" else c * (steps + evals)
    chunk = chunk or parameter_chunk(rates.n_params, FLOAT, members, device)
    work = min(chunk, members) * member_bytes(rates.n_params, FLOAT, 0, True) + 2 * members * m * FLOAT
    return SeedCost(t + rates.io, _base(cfg, rates, n, m) + work)


def lds(cfg: ExperimentConfig, rates: Rates, n: int, m: int, subsets: int, device: torch.device) -> SeedCost:
    """One seed of the LDS ground truth: the subsets and a control member trained as one ensemble, as LOO scratch."""
    members = subsets + 1
    t = members * cfg.epochs * n * rates.step + cfg.n_ckpts * members * m * rates.eval
    chunk = parameter_chunk(rates.n_params, FLOAT, members, device)
    work = min(chunk, members) * member_bytes(rates.n_params, FLOAT, 0, True) + 4 * cfg.n_ckpts * members * m * FLOAT
    return SeedCost(t + rates.io, _base(cfg, rates, n, m) + work)


def lds_table(rates: Rates, n: int, m: int, seeds: int, ckpts: int, outputs: int, subsets: int) -> SeedCost:
    """The LDS table: every method's summed attributions over the subsets against the outcomes, and its figure."""
    scores = seeds * ckpts * n * m * 8
    return SeedCost(outputs * (seeds * ckpts * subsets * n * m * rates.vdot + n * m * rates.pair) + rates.figure,
                    rates.base_bytes + 2 * scores, "its figures not calibrated")


def ats(cfg: ExperimentConfig, rates: Rates, n: int, m: int, chunk: int | None, device: torch.device) -> SeedCost:
    """One seed of ATS."""
    p = rates.n_params
    per = n * rates.grad + n * p * ADAM_PASSES * rates.vector + (n + 1) * m * rates.eval
    chunk = chunk or parameter_chunk(p, FLOAT, n, device)
    work = n * p * FLOAT + min(chunk, n) * p * FLOAT * 2 + (n + 1) * m * FLOAT
    return SeedCost(cfg.n_ckpts * per + rates.io, _base(cfg, rates, n, m) + work)


def influence(cfg: ExperimentConfig, rates: Rates, n: int, m: int, solver: str, depth: int | None,
              max_iter: int) -> SeedCost:
    """One seed of IF with the LiSSA or CG solver (CG: at most max_iter iterations)."""
    p, r = rates.n_params, min(n, m)
    grads = (n + m) * rates.grad + n * m * p * rates.vdot
    if solver == "cg":
        per_iter = r * n * rates.hvp + CG_PASSES * r * p * rates.vector
        per = grads + max_iter * per_iter
        work = CG_BUFFERS * r * p * FLOAT + n * p * FLOAT
        note = f"CG: at most {max_iter} iterations, {per_iter * cfg.n_ckpts:.0f} s each over the seed; it stops earlier"
    else:
        bs = cfg.lissa_batch_size
        t = depth or math.ceil(n / bs)
        sizes = [min(bs, n - bs * (s % math.ceil(n / bs))) for s in range(t)]
        per = grads + r * sum(sizes) * rates.hvp + LISSA_PASSES * t * r * p * rates.vector
        work = LISSA_BUFFERS * r * p * FLOAT + (n * p * FLOAT if n > r else 0)
        note = ""
    return SeedCost(cfg.n_ckpts * per + rates.io, _base(cfg, rates, n, m) + work, note)


def grad_sim(cfg: ExperimentConfig, rates: Rates, n: int, m: int, chunk: int) -> SeedCost:
    """One seed of Grad-Dot and Grad-Cos."""
    per = (n + m) * rates.grad + n * m * rates.n_params * rates.dot
    work = (n + min(chunk, m)) * rates.n_params * FLOAT + 2 * n * m * FLOAT
    return SeedCost(cfg.n_ckpts * per + rates.io, _base(cfg, rates, n, m) + work)


def results(rates: Rates, n: int, m: int, seeds: int, ckpts: int, outputs: int) -> dict[str, SeedCost]:
    """The steps after the methods (single jobs): p-values, correlations (when two outputs or more), summary."""
    scores = seeds * ckpts * n * m * 8  # one method's scores as float64
    memory = rates.base_bytes + 4 * scores
    out = {"pvalues": SeedCost(outputs * (n * m * rates.pair + rates.figure), memory)}
    if outputs >= 2:
        out["correlations"] = SeedCost(outputs * n * m * rates.pair / ckpts + 3 * rates.figure, memory)
    out["summary"] = SeedCost(rates.figure, rates.base_bytes)
    return out


def rounds(seeds: int, workers: int) -> int:
    """How many seeds one worker runs one after the other in the local pipeline."""
    return math.ceil(seeds / max(1, min(workers, seeds))) if seeds else 0


__all__ = ["SeedCost", "TRAIN_COPIES", "ats", "grad_sim", "influence", "lds", "lds_table", "loo", "results", "rounds", "training"]
