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
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from .. import io
from ..config import SEEDS_FILE, TDAError, get_task, parse_experiment
from ..data import draw_subsets, load_source
from ..seeds import load_seeds
from .plan import ARMS, Step, StudyPlan

REPO = Path(__file__).resolve().parents[2]
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
    seeds = load_seeds(REPO)[: plan.n_seeds]  # the paper's seeds, from the repository's random_seeds.pt
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
        spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


def run_step(step: Step, log_file: Path) -> float:
    """Run one entry script's `main` under the step's root (as `TDA_ROOT`), printing into `log_file`; its wall time."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("TDA_ROOT")
    os.environ["TDA_ROOT"] = str(step.root.resolve())  # worker processes inherit it
    t0 = time.perf_counter()
    try:
        with open(log_file, "a") as f, contextlib.redirect_stdout(f):
            print(f"\n== {step.what}: TDA_ROOT={step.root} python {step.script} {' '.join(step.args)}", flush=True)
            entry_script(step.script).main(list(step.args))
    except TDAError as e:
        raise TDAError(f"study step '{step.what}' failed: {e} (log: {log_file})")
    finally:
        if before is None:
            os.environ.pop("TDA_ROOT", None)
        else:
            os.environ["TDA_ROOT"] = before
    return time.perf_counter() - t0


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
