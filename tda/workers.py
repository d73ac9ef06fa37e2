"""Seeds in parallel: one worker process per CPU core (one intra-op thread each) or per visible GPU.

Seeds are independent, so the natural way to use a machine is one process per core or GPU. On the
CPU each worker runs torch with a single intra-op thread: several threads of one process wait for
each other on every small operation, and badly so when anything else shares the cores. On CUDA
each worker is pinned to its own device, and the workers that share a device share its free memory
(`engine.memory` sizes each one's chunks from its share). A seed that fails reports its one-line error and
the others finish, however it fails: an error, an unexpected exception, running out of memory, or its worker
process killed by a signal or the OOM killer (the pool is restarted, the seeds that were running then are
retried one by one in a fresh worker, and only the one that dies again is named). The caller then raises one
error naming the failed seeds.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import os
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from .config import TDAError
from .engine.memory import SHARE_ENV

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


_STARTED = None  # in a worker: where it announces the job it starts


def _init_worker(device_type: str, n_gpus: int, workers: int, slots, started) -> None:
    global _STARTED
    _STARTED = started
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    devices = n_gpus if device_type == "cuda" and n_gpus else 1
    os.environ[SHARE_ENV] = str(math.ceil(workers / devices))
    if device_type == "cuda" and n_gpus:
        torch.cuda.set_device(slot % n_gpus)
    else:
        torch.set_num_threads(1)


def failure_message(e: BaseException) -> tuple[str, bool]:
    """(the one-line error of a failed job, whether it was unexpected): out of memory names --chunk."""
    if isinstance(e, TDAError):
        return str(e), False
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return (f"out of memory ({type(e).__name__}): rerun this seed with a smaller --chunk (members or vectors held "
                "at once) or fewer --workers on the device"), False
    return f"{type(e).__name__}: {e}\n{traceback.format_exc()}", True


def _call(fn: Callable, args: tuple, token: int | None = None) -> Outcome:
    if _STARTED is not None and token is not None:
        _STARTED.put(token)  # synchronous: the parent knows which job a worker was running when it died
    try:
        return Outcome("", value=fn(*args))
    except Exception as e:  # noqa: BLE001 - a bug in one seed must not lose the others' results
        msg, unexpected = failure_message(e)
        return Outcome("", error=msg, unexpected=unexpected)


def run_jobs(fn: Callable, jobs: list[tuple[str, tuple]], workers: int, device: torch.device,
             desc: str, progress: bool = True) -> list[Outcome]:
    """Run fn(*args) for each (label, args) job, `workers` processes at a time, in job order.

    `fn` must be a module-level function (it is sent to spawned processes). With one worker (or one
    job) everything runs in this process; a job's failure of any kind becomes its outcome's error.
    """
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for label, args in tqdm(jobs, desc=desc, unit="seed", disable=not progress or len(jobs) <= 1):
            o = _call(fn, args)
            o.label = label
            out.append(o)
            if o.error is not None and len(jobs) > 1:  # a single job's error is raised by the caller instead
                _report(o)
        return out
    desc = f"{desc} ({min(workers, len(jobs))} workers)"
    if _SHARED is not None:  # keep the workers for the next step
        key = (workers, device.type)
        if key not in _SHARED:
            _SHARED[key] = _new_pool(workers, device)
        results = _collect(_SHARED, key, fn, jobs, desc, progress, workers, device)
    else:
        pools = {"own": _new_pool(min(workers, len(jobs)), device)}
        try:
            results = _collect(pools, "own", fn, jobs, desc, progress, min(workers, len(jobs)), device)
        finally:
            pools["own"][0].shutdown()
    return results


def _new_pool(workers: int, device: torch.device) -> tuple[ProcessPoolExecutor, object]:
    """A pool of spawned workers and the queue on which they announce the jobs they start."""
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    started = ctx.SimpleQueue()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(device.type, n_gpus, workers, ctx.Value("i", 0), started))
    return pool, started


_TOKENS = itertools.count()


def _collect(pools: dict, key, fn: Callable, jobs: list[tuple[str, tuple]], desc: str, progress: bool,
             workers: int, device: torch.device) -> list[Outcome]:
    """Run the jobs on pools[key]; a worker that dies takes down the pool, which is replaced: the jobs that were
    running then are retried one at a time in a fresh one-worker pool, so only the job that kills its worker again
    fails (named), and every other job finishes."""
    results: list[Outcome | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="seed", disable=not progress)
    todo = list(range(len(jobs)))
    while todo:
        pool, started = pools[key]
        tokens = {next(_TOKENS): k for k in todo}
        futures = {pool.submit(_call, fn, jobs[k][1], t): k for t, k in tokens.items()}
        broken = False
        for fut in as_completed(futures):
            k = futures[fut]
            try:
                o = fut.result()
            except BrokenProcessPool:
                broken = True
                continue
            _done(results, k, o, jobs, bar)
        todo = [k for k in todo if results[k] is None]
        if not broken:
            break
        ran = set()
        while not started.empty():
            ran.add(started.get())
        suspects = [k for t, k in tokens.items() if t in ran and results[k] is None]
        pool.shutdown(wait=False, cancel_futures=True)
        pools[key] = _new_pool(workers, device)
        for k in suspects:  # alone in a fresh worker: a crash now is this job's own
            solo = {"solo": _new_pool(1, device)}
            try:
                o = solo["solo"][0].submit(_call, fn, jobs[k][1]).result()
            except BrokenProcessPool:
                o = Outcome("", error="its worker process died (killed by a signal, e.g. the out-of-memory killer): "
                                      "rerun this seed alone, with a smaller --chunk if memory ran out")
            finally:
                solo["solo"][0].shutdown(wait=False, cancel_futures=True)
            _done(results, k, o, jobs, bar)
        todo = [k for k in todo if results[k] is None]
    bar.close()
    return results  # type: ignore[return-value]


def _done(results: list, k: int, o: Outcome, jobs: list, bar) -> None:
    o.label = jobs[k][0]
    results[k] = o
    if o.error is not None:
        _report(o, bar)
    bar.update(1)


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
        for pool, _ in pools.values():
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
