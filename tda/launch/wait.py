"""Following submitted jobs to their end with squeue, and naming each task that failed with the error from its log.

squeue --states=all lists finished jobs too, for as long as the controller keeps them (MinJobAge,
300 s by default), so polling it every few seconds sees every task's final state without any
accounting database. sacct is asked only about tasks that left the controller unseen.
"""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import TDAError
from .plan import Job

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE", "REVOKED"})
_ERROR = re.compile(r"error|exception|killed|traceback", re.IGNORECASE)
SQUEUE_RETRIES = 10


@dataclass
class Task:
    """One array task, or a single job, as Slurm last reported it."""

    job: Job
    slurm_id: str  # 123_4 for task 4 of array job 123, or 123
    seed_id: int | None
    state: str = "UNKNOWN"
    reason: str = ""

    @property
    def not_run(self) -> bool:
        """Cancelled before it started because a job it depends on did not succeed."""
        return self.state == "CANCELLED" and "Dependency" in self.reason

    def describe(self) -> str:
        """'job 123_4: loo of cnn_mnist3_10pc, seed_id 4'."""
        seed = "" if self.seed_id is None else f", seed_id {self.seed_id}"
        return f"job {self.slurm_id}: {self.job.step} of {self.job.label}{seed}"


def expected_tasks(jobs: list[Job], ids: dict[str, str]) -> dict[str, Task]:
    """Slurm id -> task, for every array task and single job submitted."""
    tasks = {}
    for job in jobs:
        jid = ids[job.key]
        for t in range(job.n_tasks) if job.n_tasks is not None else [None]:
            sid = jid if t is None else f"{jid}_{t}"
            tasks[sid] = Task(job, sid, t)
    return tasks


def _run(argv: list[str]) -> subprocess.CompletedProcess | None:
    """A Slurm client command's result, or None if it could not run or hung."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """Slurm id -> (state, reason) of every task the controller still holds, finished ones too; None if squeue failed."""
    r = _run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(job_ids)}", "--format=%i|%T|%r"])
    if r is None:
        return None
    if r.returncode != 0:  # every id listed is gone: squeue calls that an invalid id
        return {} if "Invalid job id" in r.stderr else None
    rows = (line.split("|") for line in r.stdout.splitlines() if line.count("|") == 2)
    return {sid.strip(): (state.strip(), reason.strip()) for sid, state, reason in rows}


def sacct_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Slurm id -> (state, "") from accounting, for clusters that keep it; empty where sacct does not work."""
    r = _run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}",
              "--format=JobID,State"])
    if r is None or r.returncode != 0:
        return {}
    rows = (line.split("|") for line in r.stdout.splitlines() if line.count("|") == 1)
    return {sid: (state.split()[0] if state.split() else "UNKNOWN", "") for sid, state in rows}


def _counts(tasks: dict[str, Task]) -> str:
    """The progress line: how many tasks are done, running, waiting, failed."""
    done = sum(t.state == "COMPLETED" for t in tasks.values())
    running = sum(t.state in ("RUNNING", "COMPLETING") for t in tasks.values())
    failed = sum(t.state in FINAL and t.state != "COMPLETED" for t in tasks.values())
    waiting = len(tasks) - done - running - failed
    return f"{len(tasks)} tasks: {done} done, {running} running, {waiting} waiting, {failed} failed or cancelled"


def wait_for(jobs: list[Job], ids: dict[str, str], root: Path, poll: float = 30.0,
             echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> list[Task]:
    """Poll until no submitted task is pending or running; print progress and each failure as it is seen."""
    tasks = expected_tasks(jobs, ids)
    job_ids, misses, last = list(ids.values()), 0, ""
    while True:
        states = squeue_states(job_ids)
        if states is None:
            misses += 1
            if misses >= SQUEUE_RETRIES:
                raise TDAError(f"squeue failed {misses} times in a row; the jobs keep running: "
                               f"squeue -j {','.join(job_ids)}")
            sleep(poll)
            continue
        misses = 0
        for sid, (state, reason) in states.items():
            task = tasks.get(sid)
            if task is None:
                continue
            if state in FINAL and task.state not in FINAL and state != "COMPLETED" and "Dependency" not in reason:
                echo(f"[{time.strftime('%H:%M:%S')}] {state}: {task.describe()}: {error_line(task, root)}")
            task.state, task.reason = state, reason
        line = _counts(tasks)
        if line != last:
            echo(f"[{time.strftime('%H:%M:%S')}] {line}")
            last = line
        if all(state in FINAL for state, _ in states.values()):
            break
        sleep(poll)
    unseen = [t for t in tasks.values() if t.state not in FINAL]
    if unseen:
        for sid, (state, reason) in sacct_states(job_ids).items():
            if sid in tasks and tasks[sid].state not in FINAL:
                tasks[sid].state, tasks[sid].reason = state, reason
    return list(tasks.values())


def _tail_lines(path: Path, size: int = 65536) -> list[str]:
    """The non-empty lines of a log's last `size` bytes, progress bars' carriage returns read as line ends."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [s.strip() for s in re.split(r"[\r\n]", text) if s.strip()]


def error_line(task: Task, root: Path, width: int = 300) -> str:
    """What went wrong, from the task's logs: the last line of its .err mentioning an error, else the last line."""
    err = _tail_lines(task.job.log(root, "err", task.seed_id))
    hits = [s for s in err if _ERROR.search(s)]
    lines = hits or err or _tail_lines(task.job.log(root, "out", task.seed_id))
    line = lines[-1] if lines else "(its log is empty or missing)"
    return line if len(line) <= width else line[: width - 3] + "..."


def report(tasks: list[Task], root: Path) -> list[str]:
    """The lines that name every task that did not succeed (empty if all did), for the end of --wait."""
    failed = [t for t in tasks if t.state != "COMPLETED" and not t.not_run]
    not_run = [t for t in tasks if t.not_run]
    if not failed and not not_run:
        return []
    lines = [f"{len(failed)} of {len(tasks)} Slurm tasks failed" + (f", {len(not_run)} did not run" if not_run else "")]
    for t in failed:
        state = t.state if t.state != "UNKNOWN" else "state unknown (no longer in squeue, no sacct)"
        lines.append(f"  {state}  {t.describe()}: {error_line(t, root)}  [{t.job.log(root, 'err', t.seed_id)}]")
    if not_run:
        names = sorted({f"{t.job.step} of {t.job.label}" for t in not_run})
        lines.append(f"  not run (a job they depend on failed): {', '.join(names)}")
    lines.append("rerun the same command: finished outputs are kept, only what is missing runs")
    return lines
