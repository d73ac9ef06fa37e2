"""The local pipeline of one or more experiments in one process: each step's entry script called in turn, then the summary.

`bash run_experiment.sh EXPERIMENT [EXPERIMENT ...]` runs this. The steps are exactly those the Slurm
launcher submits (tda/launch/plan.py), in the same order and with the same arguments: the entry
scripts a user would type, each skipping finished outputs, with `--seed_id all` where a Slurm array
runs one task per seed. Running them in one interpreter saves a start-up (`import torch` and friends,
about 2.5 s) per step, and the seed workers are started once and kept for every step of every
experiment (another start-up and warm-up per step).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pandas as pd

from . import checkout, cli, io
from .config import ExperimentConfig, TDAError, parse_experiment, repo_root
from .launch import grid
from .launch.plan import GRID_SUMMARY, SEED, Job, plan
from .methods import REGISTRY
from .seeds import load_seeds
from .workers import shared_workers

TITLES = {"subsets": "subsets", "train": "training", "pvalues": "p-values", "correlations": "correlations",
          "lds": "LDS ground truth", "lds_table": "LDS table"}


def local_argv(job: Job) -> list[str]:
    """A job's command as the local pipeline runs it: every seed at once (`--seed_id all`) instead of one per task."""
    return ["all" if a == SEED else a for a in job.argv]


def title(job: Job) -> str:
    """A step's name in the pipeline's output, e.g. 'training', 'GD and GC', 'summary of cnn_digits3_10pc'."""
    if job.step in REGISTRY:
        return " and ".join(REGISTRY[job.step].outputs.values())
    if job.step == "summary":
        return f"summary of {job.label}"
    if job.step == GRID_SUMMARY:
        return f"summary of the {len(job.argv) - 2} experiments"
    return TITLES.get(job.step, job.step)


def steps(cfg: ExperimentConfig, training_args: list[str] | tuple[str, ...] = (),
          choice: grid.MethodChoice | None = None) -> list[tuple[str, str, list[str]]]:
    """(name, entry script, its arguments) of every step of one experiment before its summary, in order."""
    jobs = [j for j in plan([cfg.name], 1, cfg.root, tuple(training_args), choice=choice) if j.step != "summary"]
    return [(title(j), local_argv(j)[0], local_argv(j)[1:]) for j in jobs]


def entry_script(script: str) -> ModuleType:
    """An entry script (e.g. 'run_loo.py', or a path of a training script of your own) loaded as a module, to
    call its `main(argv)`."""
    path = Path(script) if Path(script).is_absolute() else checkout.script(script)
    spec = importlib.util.spec_from_file_location(f"tda_step_{path.stem}", path)
    if spec is None or not path.is_file():
        raise TDAError(f"no entry script {path}: check the model's train_script in models.json")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise TDAError(f"{path} has no main(argv): an entry script of the pipeline defines one (see run_cnn_training.py)")
    return module


def run_step(argv: list[str]) -> object:
    """Run one step in this interpreter: an entry script's main, or `-m module`'s main; what main returns."""
    if argv[0] == "-m":
        return importlib.import_module(argv[1]).main(argv[2:])
    sys.argv = argv  # argparse names the script in its messages
    return entry_script(argv[0]).main(argv[1:])


def recorded_options(cfg: ExperimentConfig, choice: grid.MethodChoice) -> list[str]:
    """The options each method's scores were computed with, as their score files record them (their provenance)."""
    lines = []
    for name in choice.names:
        out = next(iter(REGISTRY[name].outputs))
        files = [cfg.scores_path(out, s) for s in load_seeds(cfg.root) if cfg.scores_path(out, s).exists()]
        if files:
            settings = (io.load_scores(cfg, out, int(files[0].stem)).get("provenance") or {}).get("settings") or {}
            shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "no option that changes its scores"
            lines.append(f"   {' and '.join(REGISTRY[name].outputs.values())}: {shown}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The local pipeline's command line (the Slurm launcher adds its own options to the same grid options)."""
    p = cli.parser(__doc__.splitlines()[0])
    p.prog = "python -m tda.pipeline"
    p.usage = ("python -m tda.pipeline EXPERIMENT [EXPERIMENT ...] [--methods M,...] [--device D] "
               "[--METHOD.OPTION VALUE ...] [-- TRAINING_ARGS]")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (grid.epilog() + "\nTRAINING_ARGS go to the training script, e.g. -- --model_name_or_path DIR for the "
                "ViT;\nan option this command does not know is passed to it too. `bash run_experiment.sh ...` runs "
                "this.")
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="<model>_<task>_<n>pc, e.g. cnn_digits3_10pc")
    grid.add_arguments(p)
    return p


def parse_args(argv: list[str]) -> tuple[list[str], grid.MethodChoice, list[str]]:
    """(experiments, the checked method choice, training arguments); every check runs here, before any step."""
    return _parse(argv)[:3]


def _parse(argv: list[str]) -> tuple[list[str], grid.MethodChoice, list[str], bool]:
    """`parse_args`, and whether --estimate was given."""
    argv, training = grid.split_training(argv)
    argv, dotted = grid.take_method_options(argv)
    args, passed_on = build_parser().parse_known_intermixed_args(argv)
    return args.experiments, grid.choice_from(args, dotted), [*passed_on, *training], args.estimate


def main(argv: list[str] | None = None) -> None:
    """Run every step of the experiments (training arguments go to the training script), then the summary; with
    --estimate only print what each step will take."""
    experiments, choice, training_args, estimate = _parse(sys.argv[1:] if argv is None else list(argv))
    root, t_start = repo_root(), time.perf_counter()
    if estimate:  # no step runs: the calibration only
        from .estimate import report
        report(experiments, choice, root, tuple(training_args))
        return
    cfgs = [parse_experiment(e) for e in dict.fromkeys(experiments)]
    for script in dict.fromkeys(c.train_script for c in cfgs):
        entry_script(script)  # a training script of your own: found and callable before anything runs
    jobs = plan([c.name for c in cfgs], len(load_seeds(root)), root, tuple(training_args), choice=choice)
    print(f"Experiments: {', '.join(c.name for c in cfgs)}; methods: {choice.describe()}", flush=True)
    by_name = {c.name: c for c in cfgs}
    with shared_workers():  # worker processes started once, not once per step
        for job in jobs:
            args = local_argv(job)
            gap = "\n" if job.step in ("summary", GRID_SUMMARY) else ""  # a blank line before each summary
            print(f"{gap}== {title(job)}: python {' '.join(args)}", flush=True)
            t0 = time.perf_counter()
            done = run_step(args)
            if job.step == "summary":
                print("Options the methods ran with (as their score files record them):", flush=True)
                print("\n".join(recorded_options(by_name[job.label], choice)), flush=True)
            elif job.step == GRID_SUMMARY:
                table = Path(done).parent / "mean_p_k.csv"  # run_summary.py returns its report's path
                if table.exists():
                    print("Mean z-test p-value at the largest K, methods x experiments:\n"
                          + pd.read_csv(table, index_col=0).round(4).to_string(), flush=True)
            else:
                print(f"   {title(job)} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\npipeline wall time {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    cli.run(main)
