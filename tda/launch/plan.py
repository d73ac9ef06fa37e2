"""The pipeline as a DAG of Slurm jobs: what each step runs, over which seed ids, after which jobs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ExperimentConfig, parse_experiment
from ..methods import REGISTRY
from .grid import MethodChoice

#: stands for the array task's seed id in a job's command; the job script turns it into $SLURM_ARRAY_TASK_ID
SEED = "{seed_id}"
#: the steps after all TDA methods, one job each per experiment; like subsets they get no GPUs
RESULT_STEPS = ("pvalues", "correlations", "summary")
#: the one job after every experiment of a grid of several: their comparison (run_summary.py)
GRID_SUMMARY = "grid_summary"


#: with --lds: the LDS ground truth, an array like a method, and the LDS table after it and the methods
LDS_STEPS = ("lds", "lds_table")


def steps() -> tuple[str, ...]:
    """Every step name, in pipeline order: subsets, train, one per registered TDA method, LDS, the results steps."""
    return ("subsets", "train", *REGISTRY, *LDS_STEPS, *RESULT_STEPS, GRID_SUMMARY)


@dataclass(frozen=True)
class Job:
    """One sbatch submission: a single job, or an array with one task per seed id."""

    key: str  # unique and a valid shell variable name, e.g. loo_cnn_digits3_10pc
    step: str  # subsets, train, a method's name (loo, ats, if, gd_gc), pvalues, correlations, summary
    label: str  # the experiment, or for subsets the task: names the log folder
    argv: tuple[str, ...]  # what the job runs after the interpreter; SEED marks the seed id
    n_tasks: int | None = None  # array tasks 0..n_tasks-1, one per seed id; None: a single job
    after: tuple[str, ...] = ()  # keys of the jobs that must all succeed first
    gpu: bool = False  # gets the GPUs asked for with --gpus-per-task

    @property
    def name(self) -> str:
        """The Slurm job name: step first, so squeue's narrow name column still shows it."""
        return f"{self.step}-{self.label}"

    def log_dir(self, root: Path) -> Path:
        """logs/<label>/ under root: this job's logs and script."""
        return Path(root) / "logs" / self.label

    def log(self, root: Path, ext: str, task: int | str | None = None) -> Path:
        """logs/<label>/<step>_<seed id>.<ext> for array tasks (task '%a' gives sbatch's pattern), else <step>.<ext>."""
        stem = self.step if task is None or self.n_tasks is None else f"{self.step}_{task}"
        return self.log_dir(root) / f"{stem}.{ext}"

    def script_path(self, root: Path) -> Path:
        """The batch script sbatch submits: logs/<label>/<step>.sbatch."""
        return self.log_dir(root) / f"{self.step}.sbatch"


def _key(*parts: str) -> str:
    """A job key: the parts joined by '_', anything but letters, digits and '_' made '_' (a shell variable name)."""
    return re.sub(r"\W", "_", "_".join(parts))


def _method_argv(method, experiment: str) -> tuple[str, ...]:
    """A method's command for one seed id: its own script, or run_tda.py --method NAME."""
    flag = ("--method", method.name) if method.script == "run_tda.py" else ()
    return (method.script, *flag, "--experiment", experiment, "--seed_id", SEED)


def lds_jobs(cfg: ExperimentConfig, n_seeds: int, train: Job, methods: list[Job], choice: MethodChoice) -> list[Job]:
    """With --lds: the LDS ground truth (one task per seed, after training) and the LDS table (after it and the
    methods); else none."""
    if choice.lds is None:
        return []
    e = cfg.name
    truth = Job(_key("lds", e), "lds", e, ("run_lds.py", "--experiment", e, "--seed_id", SEED, "--subsets",
                                           str(choice.lds), *choice.device_args()), n_seeds, (train.key,), gpu=True)
    return [truth, Job(_key("lds_table", e), "lds_table", e, ("run_lds.py", "--experiment", e, "--evaluate"),
                       after=(truth.key, *(m.key for m in methods)))]


def experiment_jobs(cfg: ExperimentConfig, n_seeds: int, train_args: tuple[str, ...] = (),
                    choice: MethodChoice | None = None) -> list[Job]:
    """One experiment's jobs after its subsets: training, one array per chosen TDA method (with its options),
    p-values, correlations (when the methods write two outputs or more), summary."""
    e, choice = cfg.name, choice or MethodChoice()
    train = Job(_key("train", e), "train", e, (cfg.train_script, "--experiment", e, "--seed_id", SEED,
                                               *choice.device_args(), *train_args),
                n_seeds, (_key("subsets", cfg.task),), gpu=True)
    methods = [Job(_key(n, e), n, e, (*_method_argv(REGISTRY[n], e), *choice.method_args(n)), n_seeds, (train.key,),
                   gpu=True) for n in choice.names]
    results = choice.results_args()
    pvalues = Job(_key("pvalues", e), "pvalues", e, ("run_pvalues.py", "--experiment", e, *results),
                  after=tuple(m.key for m in methods))
    lds = lds_jobs(cfg, n_seeds, train, methods, choice)
    jobs = [train, *methods, *lds, pvalues]
    if len(choice.outputs) >= 2:  # a correlation needs two methods
        jobs.append(Job(_key("correlations", e), "correlations", e, ("run_correlations.py", "--experiment", e,
                                                                     *results), after=(pvalues.key,)))
    summary = Job(_key("summary", e), "summary", e, ("-m", "tda.results.report", "--experiment", e),
                  after=(jobs[-1].key, *(j.key for j in lds[1:])))
    return [*jobs, summary]


def plan(experiments: list[str], n_seeds: int, root: Path, train_args: tuple[str, ...] = (),
         data_roots: dict[str, str] | None = None, choice: MethodChoice | None = None) -> list[Job]:
    """All jobs of the experiments, in submission order: one subsets job per task (shared), then each experiment's,
    then, for several experiments, their comparison (run_summary.py).

    data_roots: {task, or "" for every task: the subsets job's --data_root}. choice: the methods that run, their
    options and the device (default: every registered method with its defaults).
    """
    data_roots = data_roots or {}
    cfgs: dict[str, ExperimentConfig] = {}
    for name in experiments:
        cfgs.setdefault(name, parse_experiment(name, root))
    per_task: dict[str, set[int]] = {}
    for cfg in cfgs.values():
        per_task.setdefault(cfg.task, set()).add(cfg.num_per_class)
    jobs = []
    for task, ns in per_task.items():
        data_root = data_roots.get(task, data_roots.get(""))
        jobs.append(Job(_key("subsets", task), "subsets", task,
                        ("run_subset_generation.py", "--task", task, "--num_per_class", *map(str, sorted(ns)),
                         *(("--data_root", data_root) if data_root else ()))))
    for cfg in cfgs.values():
        jobs += experiment_jobs(cfg, n_seeds, train_args, choice)
    if len(cfgs) > 1:
        jobs.append(Job(_key(GRID_SUMMARY), GRID_SUMMARY, "grid", ("run_summary.py", "--experiments", *cfgs),
                        after=tuple(j.key for j in jobs if j.step == "summary")))
    return jobs
