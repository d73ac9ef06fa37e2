"""The local pipeline of one experiment in one process: each step's entry script called in turn, then the summary.

`bash run_experiment.sh EXPERIMENT` runs this. The steps are exactly the entry scripts a user would
type, in order, each skipping finished outputs; running them in one interpreter saves a start-up
(`import torch` and friends, about 2.5 s) per step, and the seed workers are started once and kept
for every step (another start-up and warm-up per step).
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

from . import checkout, cli
from .config import ExperimentConfig, parse_experiment
from .results import report
from .workers import shared_workers

def steps(cfg: ExperimentConfig, training_args: list[str]) -> list[tuple[str, str, list[str]]]:
    """(name, entry script, its arguments) of every step of an experiment's pipeline, in order."""
    exp, every = ["--experiment", cfg.name], ["--experiment", cfg.name, "--seed_id", "all"]
    train = "run_vit_finetuning.py" if cfg.model == "vit" else "run_cnn_training.py"
    return [("subsets", "run_subset_generation.py", ["--task", cfg.task, "--num_per_class", str(cfg.num_per_class)]),
            ("training", train, [*every, *training_args]),
            ("LOO", "run_loo.py", every),
            ("ATS", "run_ats.py", every),
            ("IF", "run_if.py", every),
            ("GD and GC", "run_gd_and_gc.py", every),
            ("p-values", "run_pvalues.py", exp),
            ("correlations", "run_correlations.py", exp)]


def entry_script(script: str) -> ModuleType:
    """An entry script of the repository (e.g. 'run_loo.py') loaded as a module, to call its `main(argv)`."""
    spec = importlib.util.spec_from_file_location(f"tda_step_{Path(script).stem}", checkout.script(script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    """Run every step of EXPERIMENT (training arguments after it go to the training script), then the summary."""
    p = cli.parser(__doc__.splitlines()[0])
    p.prog, p.usage = "python -m tda.pipeline", "python -m tda.pipeline EXPERIMENT [TRAINING_ARGS ...]"
    p.epilog = ("TRAINING_ARGS go to the training script, e.g. --model_name_or_path DIR for the ViT. "
                "`bash run_experiment.sh EXPERIMENT` runs this.")
    p.add_argument("experiment", metavar="EXPERIMENT", help="<model>_<task>_<n>pc, e.g. cnn_digits3_10pc")
    args, training_args = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg, t_start = parse_experiment(args.experiment), time.perf_counter()
    with shared_workers():  # worker processes started once, not once per step
        for name, script, args in steps(cfg, training_args):
            print(f"== {name}: python {script} {' '.join(args)}", flush=True)
            t0 = time.perf_counter()
            sys.argv = [script, *args]  # argparse names the script in its messages
            entry_script(script).main(args)
            print(f"   {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n== summary of {cfg.name} (pipeline wall time {time.perf_counter() - t_start:.0f} s)", flush=True)
    report.main(["--experiment", cfg.name])


if __name__ == "__main__":
    cli.run(main)
