"""Seeds in parallel: one worker process per CPU core (one intra-op thread each) or per visible GPU.

Seeds are independent, so the natural way to use a machine is one process per core or GPU. On the
CPU each worker runs torch with a single intra-op thread: several threads of one process wait for
each other on every small operation, and badly so when anything else shares the cores. On CUDA
each worker is pinned to its own device. A seed that fails reports its one-line error and the
others finish; the caller then raises one error naming the failed seeds.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from .config import TDAError

WORKERS_ENV = "TDA_WORKERS"


def default_workers(device: torch.device) -> int:
    """$TDA_WORKERS if set, else one per visible GPU on CUDA, else one per usable CPU core."""
    env = os.environ.get(WORKERS_ENV)
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise TDAError(f"${WORKERS_ENV} must be a positive integer, got {env!r}")
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass
class Outcome:
    """What one job gave: its value, or the one-line error (or traceback of an unexpected failure) it raised."""

    label: str
    value: Any = None
    error: str | None = None
    unexpected: bool = False


def _init_worker(device_type: str, n_gpus: int, slots) -> None:
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    if device_type == "cuda" and n_gpus:
        torch.cuda.set_device(slot % n_gpus)
    else:
        torch.set_num_threads(1)


def _call(fn: Callable, args: tuple) -> Outcome:
    try:
        return Outcome("", value=fn(*args))
    except TDAError as e:
        return Outcome("", error=str(e))
    except Exception as e:  # noqa: BLE001 - a bug in one seed must not lose the others' results
        return Outcome("", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}", unexpected=True)


def run_jobs(fn: Callable, jobs: list[tuple[str, tuple]], workers: int, device: torch.device,
             desc: str, progress: bool = True) -> list[Outcome]:
    """Run fn(*args) for each (label, args) job, `workers` processes at a time, in job order.

    `fn` must be a module-level function (it is sent to spawned processes). With one worker (or one
    job) everything runs in this process, and an unexpected exception propagates as usual.
    """
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for label, args in tqdm(jobs, desc=desc, unit="seed", disable=not progress or len(jobs) <= 1):
            try:
                out.append(Outcome(label, value=fn(*args)))
            except TDAError as e:
                out.append(Outcome(label, error=str(e)))
                if len(jobs) > 1:  # a single job's error is raised by the caller instead
                    _report(out[-1])
        return out
    desc = f"{desc} ({min(workers, len(jobs))} workers)"
    if _SHARED is not None:  # keep the workers for the next step
        key = (workers, device.type)
        if key not in _SHARED or getattr(_SHARED[key], "_broken", False):
            _SHARED[key] = _new_pool(workers, device)
        return _collect(_SHARED[key], fn, jobs, desc, progress)
    with _new_pool(min(workers, len(jobs)), device) as pool:
        return _collect(pool, fn, jobs, desc, progress)


def _new_pool(workers: int, device: torch.device) -> ProcessPoolExecutor:
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(device.type, n_gpus, ctx.Value("i", 0)))


def _collect(pool: ProcessPoolExecutor, fn: Callable, jobs: list[tuple[str, tuple]], desc: str,
             progress: bool) -> list[Outcome]:
    results: list[Outcome | None] = [None] * len(jobs)
    futures = {pool.submit(_call, fn, args): k for k, (_, args) in enumerate(jobs)}
    bar = tqdm(total=len(jobs), desc=desc, unit="seed", disable=not progress)
    for fut in as_completed(futures):
        k = futures[fut]
        o = fut.result()
        o.label = jobs[k][0]
        results[k] = o
        if o.error is not None:
            _report(o, bar)
        bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]


_SHARED: dict | None = None


@contextlib.contextmanager
def shared_workers() -> Iterator[None]:
    """Within this block, steps that run seeds in worker processes keep their workers for the next step.

    For a pipeline run in one interpreter (`tda.pipeline`): starting a worker costs an `import torch`
    and the method's warm-up, seconds per step. Outside such a block every call starts its own workers,
    so they always see the caller's current environment.
    """
    global _SHARED
    _SHARED = {}
    try:
        yield
    finally:
        pools, _SHARED = _SHARED, None
        for pool in pools.values():
            pool.shutdown()


def _report(o: Outcome, bar=None) -> None:
    text = f"{o.label}: error: {o.error}"
    (bar.write if bar is not None else print)(text, file=sys.stderr)


def raise_failures(outcomes: list[Outcome]) -> None:
    """One TDAError for the failed jobs (a single failure keeps its own message); nothing if all succeeded."""
    failed = [o for o in outcomes if o.error is not None]
    if not failed:
        return
    if len(failed) == 1 and len(outcomes) == 1:
        raise TDAError(failed[0].error)
    first = failed[0].error.splitlines()[0]
    raise TDAError(f"{len(failed)} of {len(outcomes)} failed ({', '.join(o.label for o in failed)}); "
                   f"first: {first}")


def raise_failed_rows(rows: list[dict]) -> None:
    """`raise_failures` for per-seed rows {'seed', 'error', ...}."""
    raise_failures([Outcome(f"seed {r['seed']}", error=r.get("error")) for r in rows])


def run_per_seed(seeds: list[int], is_done: Callable[[int], dict | None], attempt: Callable[[int, bool], dict | None],
                 job: tuple[Callable, Callable[[int], tuple]], workers: int, device: torch.device, desc: str,
                 progress: bool = True) -> list[dict]:
    """The loop every per-seed step shares; returns one row per seed with an 'error' entry (None if it went well).

    is_done(seed): the seed's row if its outputs are current (checked without a claim), else None.
    attempt(seed, wait): compute the seed under its claim in this process and return its row; None when
        another process holds the claim and `wait` is False (such seeds are retried at the end, waiting).
    job: (module-level function, seed -> its arguments) that does `attempt(seed, wait=True)` in a worker.
    """
    rows: dict[int, dict] = {}
    todo = []
    for s in seeds:
        row = is_done(s)
        if row is None:
            todo.append(s)
        else:
            rows[s] = row
    if workers > 1 and len(todo) > 1:
        fn, args = job
        outcomes = run_jobs(fn, [(f"seed {s}", args(s)) for s in todo], workers, device, desc, progress)
    else:
        outcomes = run_jobs(lambda s: attempt(s, False), [(f"seed {s}", (s,)) for s in todo], 1, device, desc,
                            progress)
        busy = [k for k, o in enumerate(outcomes) if o.error is None and o.value is None]
        waited = run_jobs(lambda s: attempt(s, True), [(f"seed {todo[k]}", (todo[k],)) for k in busy], 1, device,
                          f"{desc} (waiting for another process)", progress)
        for k, o in zip(busy, waited):
            outcomes[k] = o
    for s, o in zip(todo, outcomes):
        rows[s] = o.value if o.error is None else {"seed": s, "skipped": False, "error": o.error}
    return [{"error": None, **rows[s]} for s in seeds]
