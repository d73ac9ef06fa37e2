"""`--estimate`: the time and memory every step of a grid will take on this machine, before running any of it.

`bash run_experiment.sh E ... --estimate` (either launcher) calibrates the rates of the building blocks on this
machine (`rates`, a short run on random data, cached), counts each step's work (`costs`) and prints, per step, one
seed's time and peak memory (one Slurm task of an array step, or the job of a single step) and the step's wall
time in the local pipeline, whose seed workers run the seeds in parallel. It runs no step of the pipeline and
writes nothing but its cache; its last line is `estimated total: <seconds> s`, the local pipeline's wall time.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from ..config import ExperimentConfig, parse_experiment
from ..data import test_classes
from ..launch import grid
from ..launch.plan import GRID_SUMMARY, plan
from ..methods import REGISTRY
from ..seeds import load_seeds
from ..workers import default_workers
from . import costs
from .rates import Rates, cache_dir, calibrated

#: steps not calibrated: reading the source dataset and writing the subsets, the comparison of several experiments
SUBSETS_S, GRID_SUMMARY_S = 5.0, 3.0
#: margin on the Slurm suggestions
MARGIN = 1.5


def sizes(cfg: ExperimentConfig) -> tuple[int, int]:
    """(N, M): the training subset's size, and the test subset's (its index list where it exists)."""
    txt = cfg.data_dir / "test_subset.txt"
    if txt.is_file():
        m = sum(1 for line in txt.read_text().splitlines() if line.strip())
    else:
        classes = test_classes(cfg.spec)
        m = cfg.spec.test_size if classes is None else cfg.spec.test_per_class * len(classes)
    return cfg.n_train, m


def options(name: str, choice: grid.MethodChoice):
    """The method with the options the grid gives it."""
    p = grid._OptionParser(prog=name, add_help=False, allow_abbrev=False)
    REGISTRY[name].add_arguments(p)
    return REGISTRY[name].from_args(p.parse_args(list(choice.options.get(name, ()))))


def seed_costs(cfg: ExperimentConfig, choice: grid.MethodChoice, rates: Rates, device: torch.device
               ) -> dict[str, costs.SeedCost]:
    """One seed of training and of every chosen method."""
    n, m = sizes(cfg)
    out = {"train": costs.training(cfg, rates, n, m)}
    for name in choice.names:
        method = options(name, choice)
        if name == "loo":
            out[name] = costs.loo(cfg, rates, n, m, method.protocol or "paper", method.chunk, device)
        elif name == "ats":
            out[name] = costs.ats(cfg, rates, n, m, method.chunk, device)
        elif name == "if":
            out[name] = costs.influence(cfg, rates, n, m, method.solver, method.depth, method.max_iter)
        elif name == "gd_gc":
            out[name] = costs.grad_sim(cfg, rates, n, m, method.chunk)
        else:
            out[name] = costs.SeedCost(math.nan, 0, "not estimated: a method the estimate does not know")
    if choice.lds is not None:
        out["lds"] = costs.lds(cfg, rates, n, m, choice.lds, device)
    return out


def _time(s: float) -> str:
    if math.isnan(s):
        return "?"
    return f"{s:,.0f} s" if s >= 10 else f"{s:.1f} s"


def _mem(b: int) -> str:
    return f"{b / 2 ** 30:.1f} GB" if b else "-"


def _slurm_time(s: float) -> str:
    minutes = max(5, math.ceil(s * MARGIN / 60))
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def report(experiments: list[str], choice: grid.MethodChoice, root: Path, training_args: tuple[str, ...] = (),
           log: Callable[[str], None] = print) -> float:
    """Print the estimate of the grid's steps; returns the local pipeline's estimated wall time in seconds."""
    device = torch.device(choice.device if choice.device not in (None, "auto") else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    seeds, workers = len(load_seeds(root)), default_workers(device)
    cfgs = [parse_experiment(e, root) for e in dict.fromkeys(experiments)]
    jobs = plan([c.name for c in cfgs], seeds, root, tuple(training_args), choice=choice)
    total, suggest, started = 0.0, {"time": {}, "mem": {}}, False
    for cfg in cfgs:
        n, m = sizes(cfg)
        vectors = min(options("if", choice).chunk if "if" in choice.names else 64, n, m)
        rates, cached = calibrated(cfg, n, m, vectors, device, log)
        where = (f"the GPU ({rates.device_name})" if rates.device == "cuda" else
                 f"the CPU ({rates.device_name}), one thread")
        log(f"\n{cfg.name}: N = {n}, M = {m}, {seeds} seeds x {cfg.n_ckpts} checkpoints; calibrated on {where} in "
            f"{rates.calibration_s:.0f} s" + (f" (cached in {cache_dir()})" if cached else ""))
        log(f"{'step':<14}{'one seed or job':>16}{'peak memory':>14}{f'local, {min(workers, seeds)} worker(s)':>24}")
        per_seed = seed_costs(cfg, choice, rates, device)
        post = costs.results(rates, n, m, seeds, cfg.n_ckpts, len(choice.outputs))
        if choice.lds is not None:
            post["lds_table"] = costs.lds_table(rates, n, m, seeds, cfg.n_ckpts, len(choice.outputs), choice.lds)
        for job in (j for j in jobs if j.label in (cfg.name, cfg.task)):
            if job.step == "subsets":
                if job.label != cfg.task or job.key in suggest["time"]:
                    continue
                cost, local = costs.SeedCost(SUBSETS_S, rates.base_bytes, "not calibrated"), SUBSETS_S
            elif job.n_tasks is not None:
                cost = per_seed[job.step]
                local = costs.rounds(seeds, workers) * cost.seconds + (0 if started else rates.startup)
                started = True
            else:
                cost = post[job.step]
                local = cost.seconds
            total += 0.0 if math.isnan(local) else local
            suggest["time"][job.key], suggest["mem"][job.key] = cost.seconds + rates.startup, cost.memory
            note = f"  ({cost.note})" if cost.note else ""
            log(f"{job.step:<14}{_time(cost.seconds):>16}{_mem(cost.memory):>14}{_time(local):>24}{note}")
    if len(cfgs) > 1:
        total += GRID_SUMMARY_S
        log(f"{GRID_SUMMARY:<14}{_time(GRID_SUMMARY_S):>16}{'-':>14}{_time(GRID_SUMMARY_S):>24}  (not calibrated)")
    by_step: dict[str, tuple[float, int]] = {}
    for job in jobs:
        if job.key in suggest["time"]:
            t, mem = by_step.get(job.step, (0.0, 0))
            by_step[job.step] = (max(t, suggest["time"][job.key]), max(mem, suggest["mem"][job.key]))
    log(f"\nper Slurm task with a margin of {MARGIN:g}x (one seed per task of an array; each step's largest):")
    log(" ".join(f"--time {s}={_slurm_time(t)}" for s, (t, _) in by_step.items() if not math.isnan(t)))
    log(" ".join(f"--mem {s}={max(1, math.ceil(mem * MARGIN / 2 ** 30))}G" for s, (_, mem) in by_step.items()))
    log(f"estimated total: {total:.0f} s")
    return total
