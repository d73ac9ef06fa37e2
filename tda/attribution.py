"""The per-seed TDA driver: for each seed, load its data and checkpoints, run one method, save its scores.

Every method writes tda_scores/<experiment>/<output>/<seed>.pt per output it declares, holding
`scores` float32 [n_ckpts, n_train, n_test], the checkpoint epochs, both index lists, the settings
used and the provenance (digests of the checkpoints and subsets, the method's key settings). A seed
whose scores are current is skipped unless `overwrite`; one whose inputs changed is recomputed.
"""
from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from . import cli, io, provenance
from .backends import Backend, get_backend
from .config import ExperimentConfig
from .dispatch import planned_path
from .methods import Method, SeedData
from .locking import claim, lock_path
from .workers import raise_failed_rows, run_per_seed


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


def scores_stale(method: Method, cfg: ExperimentConfig, seed: int, inputs: dict) -> str | None:
    """None when all of a seed's score files exist and were computed from `inputs`; else why not ('missing', ...)."""
    for o in method.outputs:
        path = cfg.scores_path(o, seed)
        if not path.exists():
            return "missing"
        reason = provenance.changed(io.load_scores(cfg, o, seed).get("provenance"), inputs)
        if reason is not None:
            return reason
    return None


def method_code(method: Method, backend: Backend, device: torch.device | str) -> dict:
    """The code a method's scores come from: its module and the model family's (with all they import), the path."""
    return provenance.code_facts([type(method).__module__, type(backend).__module__],
                                 planned_path(backend.model_type(), device))


def _inputs(method: Method, cfg: ExperimentConfig, seed: int, backend: Backend, device: torch.device | str,
            subsets: dict | None = None) -> dict | None:
    """The provenance of a seed's scores, or None while its checkpoints are missing (computing then says which)."""
    if not all(cfg.ckpt_path(seed, e).exists() for e in cfg.ckpt_epochs):
        return None
    return provenance.score_inputs(cfg, seed, method.name, method.key_settings(backend), subsets,
                                   method_code(method, backend, device))


def compute_seed(method: Method, cfg: ExperimentConfig, seed: int, device: torch.device | str = "cpu",
                 backend: Backend | None = None, subsets: tuple[dict, dict] | None = None,
                 progress: bool = True, inputs: dict | None = None) -> dict:
    """Score one seed with `method` and save every output with its provenance; returns its row."""
    data = load_seed_data(cfg, seed, device, backend, subsets, progress)
    t0 = time.perf_counter()
    scores, facts = method.score_seed(data)
    seconds = time.perf_counter() - t0
    settings = {**method.settings(data), **facts, "seconds": seconds}
    paths = [io.save_scores(cfg, o, seed, scores[o], data.train_indices, data.test_indices, {**settings, "method": o},
                            inputs or {}) for o in method.outputs]
    return {"seed": seed, "skipped": False, "paths": paths, "seconds": seconds, "note": method.note(settings)}


def _skipped(method: Method, cfg: ExperimentConfig, seed: int) -> dict:
    return {"seed": seed, "skipped": True, "paths": [cfg.scores_path(o, seed) for o in method.outputs],
            "seconds": 0.0, "note": ""}


def attempt_seed(method: Method, cfg: ExperimentConfig, seed: int, device: torch.device | str, backend: Backend | None,
                 subsets: tuple[dict, dict] | None, progress: bool, overwrite: bool, wait: bool) -> dict | None:
    """Score a seed under its claim unless its scores are current (another process may just have computed them)."""
    with claim(lock_path(cfg.scores_dir, f"{method.name}_{seed}"), wait) as got:
        if not got:
            return None
        inputs = _inputs(method, cfg, seed, backend or get_backend(cfg), device)
        reason = "--overwrite" if overwrite else "missing" if inputs is None else scores_stale(method, cfg, seed, inputs)
        if reason is None:
            return _skipped(method, cfg, seed)
        if reason not in ("missing", "--overwrite"):
            tqdm.write(f"recomputing {next(iter(method.outputs))} seed {seed}: {reason}")
        return compute_seed(method, cfg, seed, device, backend, subsets, progress, inputs)


def _seed_job(method: Method, cfg: ExperimentConfig, seed: int, device: str, overwrite: bool) -> dict:
    """One seed in a worker process (its own backend, inputs and checkpoints; waits for its claim)."""
    return attempt_seed(method, cfg, seed, device, None, None, False, overwrite, wait=True)


def run_method(method: Method, cfg: ExperimentConfig, seeds: list[int], device: torch.device | str = "cpu",
               overwrite: bool = False, backend: Backend | None = None, progress: bool = True,
               workers: int = 1, strict: bool = True) -> list[dict]:
    """Run `method` on every seed whose scores are not current (or all, with `overwrite`) and save them.

    Scores are current when their files exist and record the inputs they would be computed from now
    (checkpoints, subsets, method settings). Seeds run `workers` processes at a time (1: in this
    process). Returns one row per seed: {'seed', 'skipped', 'paths', 'seconds', 'note', 'error'}. A
    seed that fails does not stop the others; afterwards, with `strict`, one TDAError names them.
    """
    device = torch.device(device)
    backend = backend or get_backend(cfg)
    for o in method.outputs:
        io.sweep(cfg.scores_dir / o)  # temp files of a killed run
    loaded: list = []

    def is_done(seed: int) -> dict | None:
        if not loaded:
            loaded.append(io.load_subsets(cfg))  # missing subsets: one error now, not one per seed
            loaded.append(provenance.subset_inputs(cfg))
        inputs = _inputs(method, cfg, seed, backend, device, loaded[1])
        if overwrite or inputs is None or scores_stale(method, cfg, seed, inputs) is not None:
            return None
        return _skipped(method, cfg, seed)

    rows = run_per_seed(
        seeds, is_done,
        lambda s, wait: attempt_seed(method, cfg, s, device, backend, loaded[0], progress, overwrite, wait),
        (_seed_job, lambda s: (method, cfg, s, str(device), overwrite)), workers, device,
        f"{method.name} {cfg.name}", progress)
    if strict:
        raise_failed_rows(rows)
    return rows


def summary_lines(cfg: ExperimentConfig, method: Method, rows: list[dict]) -> list[str]:
    """What an entry script prints: one line per seed, then where the outputs are."""
    lines = [f"seed {r['seed']}: " + ("already done, kept" if r["skipped"] else
                                      f"failed: {r['error'].splitlines()[0]}" if r.get("error") else
                                      f"done in {r['seconds']:.1f} s") + r.get("note", "") for r in rows]
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
