"""The per-seed TDA driver: for each seed, load its data and checkpoints, run one method, save its scores.

Every method writes tda_scores/<experiment>/<output>/<seed>.pt per output it declares, holding
`scores` float32 [n_ckpts, n_train, n_test], the checkpoint epochs, both index lists and the
settings used. A seed whose outputs all exist is skipped unless `overwrite`.
"""
from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from . import cli, io
from .backends import Backend, get_backend
from .config import ExperimentConfig, TDAError
from .methods import Method, SeedData
from .workers import raise_failed_rows, run_jobs


def load_seed_data(cfg: ExperimentConfig, seed: int, device: torch.device | str = "cpu",
                   backend: Backend | None = None, subsets: tuple[dict, dict] | None = None,
                   progress: bool = True) -> SeedData:
    """A seed's prepared inputs on `device` (subsets loaded unless given) and its checkpoints."""
    device = torch.device(device)
    backend = backend or get_backend(cfg)
    train, test = subsets if subsets is not None else io.load_subsets(cfg)
    ckpts = io.load_checkpoints(cfg, seed)
    return SeedData(cfg, seed, device, backend,
                    backend.inputs(train, "train").to(device), train["labels"].to(device),
                    backend.inputs(test, "test").to(device), test["labels"].to(device),
                    train["indices"], test["indices"], ckpts, progress)


def _mismatch(cfg: ExperimentConfig, output: str, seed: int, expect: dict) -> str:
    try:
        old = io.load_scores(cfg, output, seed).get("settings", {})
    except TDAError:
        return ""
    diff = [f"{k}={old.get(k)!r}" for k, v in expect.items() if old.get(k) != v]
    return f" (computed with {', '.join(diff)}; --overwrite to recompute)" if diff else ""


def compute_seed(method: Method, cfg: ExperimentConfig, seed: int, device: torch.device | str = "cpu",
                 backend: Backend | None = None, subsets: tuple[dict, dict] | None = None,
                 progress: bool = True) -> dict:
    """Score one seed with `method` and save every output; returns its row {'seed', 'paths', 'seconds', 'note'}."""
    data = load_seed_data(cfg, seed, device, backend, subsets, progress)
    t0 = time.perf_counter()
    scores, facts = method.score_seed(data)
    seconds = time.perf_counter() - t0
    settings = {**method.settings(data), **facts, "seconds": seconds}
    paths = [io.save_scores(cfg, o, seed, scores[o], data.train_indices, data.test_indices, {**settings, "method": o})
             for o in method.outputs]
    return {"seed": seed, "skipped": False, "paths": paths, "seconds": seconds, "note": method.note(settings)}


def _seed_job(method: Method, cfg: ExperimentConfig, seed: int, device: str) -> dict:
    """One seed in a worker process (its own backend, inputs and checkpoints)."""
    return compute_seed(method, cfg, seed, device, progress=False)


def run_method(method: Method, cfg: ExperimentConfig, seeds: list[int], device: torch.device | str = "cpu",
               overwrite: bool = False, backend: Backend | None = None, progress: bool = True,
               workers: int = 1, strict: bool = True) -> list[dict]:
    """Run `method` on every seed whose outputs are not all there (or all, with `overwrite`) and save its scores.

    Seeds run `workers` processes at a time (1: in this process). Returns one row per seed:
    {'seed', 'skipped', 'paths', 'seconds', 'note', 'error'}. A seed that fails does not stop the
    others; afterwards, with `strict`, one TDAError names the failed seeds.
    """
    device = torch.device(device)
    backend = backend or get_backend(cfg)
    rows: dict[int, dict] = {}
    todo = []
    for seed in seeds:
        paths = [cfg.scores_path(o, seed) for o in method.outputs]
        if not overwrite and all(p.exists() for p in paths):
            note = _mismatch(cfg, next(iter(method.outputs)), seed, method.expected(backend)) if method.key_options else ""
            rows[seed] = {"seed": seed, "skipped": True, "paths": paths, "seconds": 0.0, "note": note}
        else:
            todo.append(seed)
    if todo:
        subsets = io.load_subsets(cfg)  # missing subsets: one error now, not one per seed
        if workers > 1 and len(todo) > 1:
            jobs = [(f"seed {s}", (method, cfg, s, str(device))) for s in todo]
            fn = _seed_job
        else:
            jobs = [(f"seed {s}", (s,)) for s in todo]
            fn = lambda s: compute_seed(method, cfg, s, device, backend, subsets, progress)  # noqa: E731
        for seed, outcome in zip(todo, run_jobs(fn, jobs, workers, device, f"{method.name} {cfg.name}", progress)):
            rows[seed] = outcome.value if outcome.error is None else {
                "seed": seed, "skipped": False, "paths": [], "seconds": 0.0, "note": "", "error": outcome.error}
    out = [{"error": None, **rows[s]} for s in seeds]
    if strict:
        raise_failed_rows(out)
    return out


def summary_lines(cfg: ExperimentConfig, method: Method, rows: list[dict]) -> list[str]:
    """What an entry script prints: one line per seed, then where the outputs are."""
    lines = [f"seed {r['seed']}: " + ("already done, kept" if r["skipped"] else
                                      f"failed: {r['error'].splitlines()[0]}" if r.get("error") else
                                      f"done in {r['seconds']:.1f} s") + r["note"] for r in rows]
    lines += [f"scores in {cfg.scores_dir / o}/<seed>.pt" for o in method.outputs]
    return lines


def parser_for(method_cls: type[Method], description: str, method_flag: bool = False) -> argparse.ArgumentParser:
    """The command line of a method's entry script: experiment, seeds, device, overwrite, then its options.

    method_flag: also accept `--method <name>` (the generic script run_tda.py).
    """
    p = cli.parser(description)
    if method_flag:
        p.add_argument("--method", required=True, choices=[method_cls.name], help="the TDA method")
    cli.add_experiment_args(p)
    method_cls.add_arguments(p)
    return p


def main(method_cls: type[Method], description: str, argv: list[str] | None = None,
         method_flag: bool = False) -> list[dict]:
    """An attribution entry script: parse its arguments, run the method on the seeds, print what was done."""
    args = parser_for(method_cls, description, method_flag).parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    method = method_cls.from_args(args)
    device = cli.resolve_device(args.device)
    rows = run_method(method, cfg, seeds, device, args.overwrite, workers=cli.workers(args, device), strict=False)
    print("\n".join(summary_lines(cfg, method, rows)))
    raise_failed_rows(rows)
    return rows
