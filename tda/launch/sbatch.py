"""Job scripts and sbatch command lines for the planned jobs, and their submission in dependency order."""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import TDAError
from .plan import SEED, Job

#: resource options: name -> how sbatch gets a value (GPUs as a generic resource, which every Slurm knows)
RESOURCES = {"time": "--time={}", "mem": "--mem={}", "cpus_per_task": "--cpus-per-task={}",
             "gpus_per_task": "--gres=gpu:{}"}


@dataclass
class SlurmOptions:
    """What the sbatch calls get: partition, account, per-step resources, array throttle, pass-through arguments."""

    partition: str | None = None
    account: str | None = None
    resources: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {step, or "" for all: value}
    throttle: int | None = None  # at most this many tasks of one array run at once (sbatch's --array=...%k)
    extra: tuple[str, ...] = ()  # --slurm-args, verbatim, after everything else so they take precedence

    def resource(self, name: str, job: Job) -> str | None:
        """A job's value of a resource: its step's own, else the one for all (GPUs: training and methods only)."""
        values = self.resources.get(name, {})
        if job.step in values:
            return values[job.step]
        if name == "gpus_per_task" and not job.gpu:
            return None
        return values.get("")


def resource_values(flag: str, values: list[str], steps: tuple[str, ...], what: str = "step") -> dict[str, str]:
    """Parse repeated `--flag VALUE` / `--flag STEP=VALUE` into {step, or "" for all: value}."""
    out: dict[str, str] = {}
    for v in values:
        step, sep, value = v.partition("=")
        if not sep:
            step, value = "", v
        elif step not in steps:
            raise TDAError(f"{flag} {v}: unknown {what} {step!r}, choose one of {', '.join(steps)} "
                           f"(or no {what.upper()}= for all)")
        if not value:
            raise TDAError(f"{flag} {v!r}: expected VALUE or {what.upper()}=VALUE with a non-empty VALUE")
        out[step] = value
    return out


def command(job: Job) -> str:
    """A job's command as its script runs it, the seed id written as $SLURM_ARRAY_TASK_ID (what a dry run shows)."""
    return " ".join(["python"] + ["$SLURM_ARRAY_TASK_ID" if a == SEED else shlex.quote(a) for a in job.argv])


def job_script(job: Job, python: str, repo: Path, root: Path) -> str:
    """The batch script of a job: into the repo, the submitter's TDA_ROOT and interpreter, then the entry script."""
    q = shlex.quote
    cmd = " ".join([q(python)] + ['"$SLURM_ARRAY_TASK_ID"' if a == SEED else q(a) for a in job.argv])
    what = f"{job.step} of {job.label}" + (", seed id $SLURM_ARRAY_TASK_ID" if job.n_tasks is not None else "")
    return "\n".join([
        "#!/bin/bash",
        f"# {job.step} of {job.label}" + (", one array task per seed id" if job.n_tasks is not None else ""),
        "# Written by run_experiment.sh --launcher slurm (python -m tda.launch), which submits it with sbatch.",
        f"cd {q(str(repo))} || exit 2",
        f"export TDA_ROOT={q(str(root))}",
        "# a training script of your own (models.json) lives outside the repository: it still imports tda",
        f'export PYTHONPATH={q(str(repo))}${{PYTHONPATH:+:$PYTHONPATH}}',
        "# torch uses as many threads as the CPUs asked for (--cpus-per-task), unless OMP_NUM_THREADS says otherwise",
        'if [[ -n ${SLURM_CPUS_PER_TASK:-} && -z ${OMP_NUM_THREADS:-} ]]; then',
        "    export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK",
        "fi",
        f"cmd=({cmd})",
        f'echo "== {what}: Slurm job $SLURM_JOB_ID on $(hostname) at $(date \'+%F %T\')"',
        'echo "   ${cmd[*]}"',
        'exec "${cmd[@]}"',
        ""])


def sbatch_argv(job: Job, opts: SlurmOptions, root: Path, deps: list[str]) -> list[str]:
    """The sbatch command line of a job, given the ids (or, in a dry run, shell variables) of its dependencies."""
    argv = ["sbatch", "--parsable", f"--job-name={job.name}",
            f"--output={job.log(root, 'out', '%a')}", f"--error={job.log(root, 'err', '%a')}"]
    if job.n_tasks is not None:
        argv.append(f"--array=0-{job.n_tasks - 1}" + (f"%{opts.throttle}" if opts.throttle else ""))
    if deps:  # a failed dependency cancels the job instead of leaving it pending forever
        argv += ["--dependency=afterok:" + ":".join(deps), "--kill-on-invalid-dep=yes"]
    if opts.partition:
        argv.append(f"--partition={opts.partition}")
    if opts.account:
        argv.append(f"--account={opts.account}")
    for name, template in RESOURCES.items():
        value = opts.resource(name, job)
        if value:
            argv.append(template.format(value))
    return [*argv, *opts.extra, str(job.script_path(root))]


def render(argv: list[str]) -> str:
    """A command line as the shell reads it; the dependency list stays unquoted so its ${job} variables expand."""
    return " ".join(a if a.startswith("--dependency=") else shlex.quote(a) for a in argv)


def cancel(ids: list[str]) -> None:
    """scancel the given jobs, quietly (used to take back a submission that failed half way)."""
    if ids:
        try:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _sbatch(argv: list[str], job: Job) -> str:
    """Run one sbatch --parsable and return the job id; a refusal is a one-line TDAError with sbatch's message."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TDAError(f"sbatch of {job.name} did not run ({type(e).__name__}: {e})")
    lines = [s for s in (r.stderr + r.stdout).splitlines() if s.strip()]
    job_id = r.stdout.strip().split(";")[0]
    if r.returncode != 0 or not job_id.isdigit():
        raise TDAError(f"sbatch refused {job.name}: {lines[-1] if lines else f'exit code {r.returncode}'}")
    return job_id


def submit(jobs: list[Job], opts: SlurmOptions, python: str, repo: Path, root: Path, dry_run: bool = False,
           echo: Callable[[str], None] = print) -> dict[str, str]:
    """Write every job's script, then sbatch the jobs in order, each after its dependencies; job key -> job id.

    A dry run prints the sbatch lines as a shell script instead (each id kept in a variable named after
    the job) and submits nothing. If sbatch refuses a job, the jobs this call already submitted are
    cancelled, so that a corrected rerun starts from a clean queue.
    """
    ids: dict[str, str] = {}
    for job in jobs:
        path = job.script_path(root)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(job_script(job, python, repo, root))
        except OSError as e:
            cancel([i for i in ids.values() if i.isdigit()])
            raise TDAError(f"cannot write the job script {path}: {e.strerror or e}") from None
        argv = sbatch_argv(job, opts, root, [ids[k] for k in job.after])
        if dry_run:
            echo(f"# {job.step} of {job.label}: {command(job)}")
            echo(f"{job.key}=$({render(argv)})")
            ids[job.key] = "${" + job.key + "}"
            continue
        try:
            ids[job.key] = _sbatch(argv, job)
        except TDAError as e:
            cancel(list(ids.values()))
            taken_back = f"; cancelled the {len(ids)} jobs submitted before it" if ids else ""
            raise TDAError(f"{e}{taken_back}") from None
    return ids
