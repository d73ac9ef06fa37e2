"""The study's own root: its seeds, its shorter test subsets, the arms' roots, and running the entry scripts there.

The study never touches the repository's own data/, models/ or results/: everything lives under its
root (a `TDA_ROOT`), where the ordinary pipeline reads the index lists it finds. Steps are the entry
scripts' `main`, run in this process with `TDA_ROOT` set (seeds still go to worker processes); each
skips what is already done, so an interrupted study is simply started again.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, TextIO

import torch

from .. import checkout, io
from ..config import SEEDS_FILE, TDAError, get_task, parse_experiment
from ..data import draw_subsets, load_source
from ..seeds import load_seeds
from .plan import ARMS, Step, StudyPlan

_SCRIPTS: dict[str, ModuleType] = {}


def write_seeds(path: Path, seeds: list[int]) -> None:
    """A random_seeds.pt holding `seeds`, rewritten only when it holds others."""
    if path.exists() and not path.is_symlink():
        try:
            if [int(s) for s in torch.load(path, weights_only=True).tolist()] == seeds:
                return
        except Exception:  # noqa: BLE001 - unreadable: rewritten below
            pass
    elif path.is_symlink():
        path.unlink()
    io.atomic_save(torch.tensor(seeds, dtype=torch.int64), path)


def study_test_indices(task: str, size: int, root: Path) -> list[int]:
    """The study's test subset: the first `size` of the task's default test draw, class-balanced where it is."""
    spec = get_task(task, root)
    train, test = load_source(spec, Path(spec.default_data_root))
    _, drawn = draw_subsets(spec, train.labels, test.labels, [])
    if spec.test_per_class is None:
        return drawn[:size]
    classes = spec.train_classes
    per = max(1, size // len(classes))
    labels = test.labels[torch.tensor(drawn)].tolist()
    return sorted(i for c in classes for i in [j for j, lab in zip(drawn, labels) if lab == c][:per])


def prepare(plan: StudyPlan, log: Callable[[str], None] = print) -> None:
    """The study root's seeds and test lists, and each arm's root with links to the study's data and models."""
    root = plan.root
    root.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(checkout.PACKAGE_PARENT)[: plan.n_seeds]  # the paper's (the clone's random_seeds.pt)
    write_seeds(root / SEEDS_FILE, seeds)
    for task in plan.tasks:
        want = study_test_indices(task, plan.test_size, root)
        path = root / "data" / task / "test_subset.txt"
        if not path.exists() or io.read_index_list(path) != want:
            io.write_index_list(want, path)
            log(f"study test subset of {task}: {len(want)} samples ({path})")
    for arm in plan.arms:
        if arm not in ARMS:
            raise TDAError(f"unknown arm {arm!r}: choose from {', '.join(ARMS)}")
        a = plan.arm_root(arm)
        a.mkdir(parents=True, exist_ok=True)
        for name in ("data", "models"):
            link = a / name
            (root / name).mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                if link.exists():
                    raise TDAError(f"{link} should link to the study's {name}/: delete it and rerun")
                link.symlink_to(Path("..") / ".." / name)
        write_seeds(a / SEEDS_FILE, seeds[: plan.arm_seeds(arm)])


def entry_script(name: str) -> ModuleType:
    """An entry script (e.g. run_loo.py) loaded as a module, once, so its `main(argv)` runs in this process."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), checkout.script(name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


@dataclass(frozen=True)
class Failure:
    """A part of the study that failed: what, its one-line error, and the command that reruns it alone."""

    what: str
    error: str
    command: str


def one_line(e: BaseException) -> str:
    """An exception as one line: a TDAError's own message, else its type and the first line of its message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, TDAError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def caught(e: Exception, log_file: Path) -> str:
    """The one-line error of a failed part of the study; an unexpected exception's traceback is appended to the log."""
    if isinstance(e, TDAError):
        return one_line(e)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        traceback.print_exception(e, file=f)
    return f"{one_line(e)} (traceback in {log_file})"


class _Tail:
    """A text stream that passes everything on and keeps the last line written (where an argparse error lands)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.last = stream, ""

    def write(self, text: str) -> int:
        lines = [x.strip() for x in text.replace("\r", "\n").split("\n") if x.strip()]
        if lines:
            self.last = lines[-1]
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def run_step(step: Step, log_file: Path) -> tuple[float, str | None]:
    """Run one entry script's `main` under the step's root (as `TDA_ROOT`), printing into `log_file`: its wall time,
    and its one-line error if it failed (None if not). A failure of any kind is caught (an unexpected one's
    traceback goes to the log), so that the study goes on with the steps that do not need this one."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("TDA_ROOT")
    os.environ["TDA_ROOT"] = str(step.root.resolve())  # worker processes inherit it
    t0, error = time.perf_counter(), None
    tail, argv = _Tail(sys.stderr), sys.argv
    sys.argv = [step.script, *step.args]  # as if run alone: its own name in its argparse errors
    try:
        with open(log_file, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(tail):
            print(f"\n== {step.what}: {step.command}", flush=True)
            try:
                entry_script(step.script).main(list(step.args))
            except SystemExit as e:  # the script's argparse rejected its arguments (it printed why)
                if e.code not in (0, None):
                    error = tail.last or f"{step.script} exited with status {e.code}"
            except Exception as e:  # noqa: BLE001 - one failed step must not stop the others
                f.flush()
                error = caught(e, log_file)
            if error:
                print(f"failed: {error}", flush=True)
    finally:
        sys.argv = argv
        if before is None:
            os.environ.pop("TDA_ROOT", None)
        else:
            os.environ["TDA_ROOT"] = before
    return time.perf_counter() - t0, error


def checkpoints_identical(root: Path, experiment: str) -> dict:
    """Whether every seed's checkpoints of an experiment equal the first seed's bitwise (tensor by tensor)."""
    cfg = parse_experiment(experiment, root)
    seeds = load_seeds(root)
    ref = {e: io.load_checkpoint(cfg, seeds[0], e)["state_dict"] for e in cfg.ckpt_epochs}
    same, largest = [], 0.0
    for s in seeds[1:]:
        equal = True
        for e in cfg.ckpt_epochs:
            sd = io.load_checkpoint(cfg, s, e)["state_dict"]
            for k, v in ref[e].items():
                if not torch.equal(v, sd[k]):
                    equal = False
                    largest = max(largest, float((v.double() - sd[k].double()).abs().max()))
        same.append(equal)
    return {"experiment": experiment, "seeds": len(seeds), "identical_to_first": int(sum(same)),
            "all_identical": all(same), "max_abs_diff": largest}
