"""Run whole experiments on Slurm: one job per step, job arrays over seed ids, dependencies between steps.

usage: python -m tda.launch EXPERIMENT [EXPERIMENT ...] [--launcher slurm] [options] [-- TRAINING_ARGS]
(what `bash run_experiment.sh EXPERIMENT ... --launcher slurm` runs; --methods, --device and the method options
--METHOD.OPTION VALUE are the local pipeline's, tda/launch/grid.py)
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from .. import checkout, cli
from ..config import TASKS, TDAError
from ..ranges import POSITIVE, POSITIVE_INT, ranged
from ..seeds import load_seeds
from . import grid
from .plan import GRID_SUMMARY, Job, plan, steps
from .sbatch import RESOURCES, SlurmOptions, resource_values, submit
from .wait import report, wait_for

EPILOG = """\
Each step is a job; training and every TDA method are job arrays with one task per seed id, each
task running the entry script with --seed_id $SLURM_ARRAY_TASK_ID. Logs: $TDA_ROOT/logs/<experiment>/
<step>_<seed id>.{out,err} (subsets: logs/<task>/subsets.*). Resubmitting the same command runs only
what is missing. Arguments after `--` go to every experiment's training script.
{grid}
Resource options take VALUE (every step; GPUs: training and methods) or STEP=VALUE (one step, repeatable),
e.g. --time 1:00:00 --time loo=6:00:00. Steps: """


def build_parser() -> argparse.ArgumentParser:
    """The launcher's command line."""
    p = cli.parser(__doc__.splitlines()[0])
    p.prog = "run_experiment.sh --launcher slurm"
    p.usage = "bash run_experiment.sh EXPERIMENT [EXPERIMENT ...] --launcher slurm [options] [-- TRAINING_ARGS]"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG.replace("{grid}", grid.epilog()) + ", ".join(steps()) + "."
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="e.g. cnn_digits3_10pc cnn_digits3_20pc")
    p.add_argument("--launcher", choices=["slurm"], default="slurm", help="where the jobs run (here: slurm)")
    grid.add_arguments(p)
    p.add_argument("--partition", help="sbatch --partition")
    p.add_argument("--account", help="sbatch --account")
    p.add_argument("--time", action="append", default=[], metavar="[STEP=]TIME", help="time limit, e.g. 2:00:00")
    p.add_argument("--mem", action="append", default=[], metavar="[STEP=]MEM", help="memory per job, e.g. 16G")
    p.add_argument("--cpus-per-task", action="append", default=[], metavar="[STEP=]N", help="CPUs per task")
    p.add_argument("--gpus-per-task", action="append", default=[], metavar="[STEP=]N",
                   help="GPUs per task (as --gres=gpu:N); without STEP= for training and the TDA methods only")
    p.add_argument("--data-root", action="append", default=[], metavar="[TASK=]DIR",
                   help="--data_root of the subsets jobs: where the compute nodes find the source dataset")
    p.add_argument("--throttle", type=ranged(int, POSITIVE_INT), metavar="K", help="run at most K tasks of each array at once (%%K)")
    p.add_argument("--slurm-args", default="", metavar='"ARGS"', help="more sbatch arguments, passed verbatim")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch commands (and write the job scripts), "
                   "submit nothing")
    p.add_argument("--wait", action="store_true", help="block until every job ended; exit 1 if any task failed")
    p.add_argument("--poll", type=ranged(float, POSITIVE), default=30.0, metavar="SECONDS",
                   help="squeue interval of --wait (default: %(default)g)")
    return p


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, SlurmOptions, tuple[str, ...]]:
    """Arguments -> (namespace, sbatch options, training arguments); bad input raises a one-line error.

    The namespace's data_root becomes {task, or "" for every task: directory}; its `choice` holds the methods
    that run, their options and the device (checked here, before anything is submitted).
    """
    argv, train_args = grid.split_training(argv)
    argv, dotted = grid.take_method_options(argv)
    train_args = tuple(train_args)
    for i in reversed(range(len(argv) - 1)):  # "--slurm-args --qos=x": its value starts with "--", so join them
        if argv[i] == "--slurm-args":
            argv[i:i + 2] = [f"--slurm-args={argv[i + 1]}"]
    args = build_parser().parse_intermixed_args(argv)
    if args.dry_run and args.wait:
        raise TDAError("--dry-run submits nothing, so there is nothing to --wait for: choose one")
    try:
        extra = tuple(shlex.split(args.slurm_args))
    except ValueError as e:
        raise TDAError(f"--slurm-args {args.slurm_args!r}: {e}")
    names = steps()
    resources = {name: resource_values("--" + name.replace("_", "-"), getattr(args, name), names)
                 for name in RESOURCES}
    args.data_root = resource_values("--data-root", args.data_root, tuple(TASKS), what="task")
    args.choice = grid.choice_from(args, dotted)
    opts = SlurmOptions(args.partition, args.account, resources, args.throttle, extra)
    return args, opts, train_args


def require(*commands: str) -> None:
    """A one-line error unless Slurm's client commands are on PATH."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise TDAError(f"--launcher slurm needs Slurm's {' and '.join(missing)} on PATH and found none: run this on "
                       "a Slurm login node (--dry-run prints the sbatch commands without Slurm)")


def _table(jobs: list[Job], ids: dict[str, str]) -> list[str]:
    """One line per submitted job: its id (with the array range), step and experiment or task."""
    rows = []
    for job in jobs:
        jid = ids[job.key] + (f"_[0-{job.n_tasks - 1}]" if job.n_tasks is not None else "")
        rows.append(f"  {jid:<14} {job.step:<13} {job.label}")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Plan, submit (or print) and optionally wait; the exit status: 0, 1 if a task failed, 2 on bad input."""
    args, opts, train_args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if hasattr(sys.stdout, "reconfigure"):  # progress lines appear at once, also when redirected to a file
        sys.stdout.reconfigure(line_buffering=True)
    root = Path(os.environ.get("TDA_ROOT", ".")).resolve()
    if args.estimate:  # nothing submitted: the time and memory to ask for
        from ..estimate import report as estimate  # not `report`: that name is the failed tasks' report below
        estimate(args.experiments, args.choice, root, train_args)
        return 0
    jobs = plan(args.experiments, len(load_seeds(root)), root, train_args, args.data_root, args.choice)
    if not args.dry_run:
        require("sbatch", *(["squeue"] if args.wait else []))
    python = os.path.abspath(sys.executable)
    if args.dry_run:
        print(f"# dry run: the {len(jobs)} sbatch commands of {', '.join(dict.fromkeys(args.experiments))}; nothing "
              f"submitted. Job scripts written to {root}/logs/<experiment>/<step>.sbatch")
    ids = submit(jobs, opts, python, checkout.scripts_dir(), root, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    print(f"submitted {len(jobs)} jobs (TDA_ROOT {root}, logs in {root}/logs/):")
    print("\n".join(_table(jobs, ids)))
    if not args.wait:
        print(f"follow them with: squeue -j {','.join(ids.values())}")
        return 0
    try:
        tasks = wait_for(jobs, ids, root, args.poll)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the jobs keep running (squeue -j {','.join(ids.values())}, "
              f"scancel to stop them)", file=sys.stderr)
        return 130
    lines = report(tasks, root)
    if lines:
        print("error: " + "\n".join(lines), file=sys.stderr)
        return 1
    print(f"all {len(tasks)} Slurm tasks succeeded")
    for job in jobs:
        log = job.log(root, "out")
        if job.step in ("summary", GRID_SUMMARY) and log.exists():
            what = job.label if job.step == "summary" else f"the {len(job.argv) - 2} experiments"
            print(f"\n== summary of {what} (from {log})")
            print(log.read_text(errors="replace").rstrip())
    return 0


if __name__ == "__main__":
    cli.run(lambda argv: sys.exit(main(argv)))
