"""The paper's published subsets: the index lists in data/paper_subsets/<task>/, copied into a task's data directory.

Once a task's index lists are in data/<task>/, the subsets step uses them as they are, in their order
(tda.data.generate_subsets), so copying the paper's lists there reproduces its exact subsets.
"""
from __future__ import annotations

import re
from pathlib import Path

from . import io
from .config import TDAError

#: the lists as published with the paper's code (data/paper_subsets/README.md)
PAPER_DIR = Path(__file__).resolve().parents[1] / "data" / "paper_subsets"
_TRAIN = re.compile(r"^train_subset_(\d+)pc\.txt$")


def paper_tasks(source: Path | None = None) -> list[str]:
    """The tasks the paper published index lists for (mnist3, cifar10)."""
    source = Path(source or PAPER_DIR)
    return sorted(d.name for d in source.iterdir() if (d / "test_subset.txt").exists()) if source.is_dir() else []


def paper_num_per_class(task: str, source: Path | None = None) -> list[int]:
    """The samples per class the paper published a training list for, e.g. [10, 20, 50] for mnist3."""
    source = Path(source or PAPER_DIR)
    if task not in paper_tasks(source):
        raise TDAError(f"--paper_subsets: the paper published index lists for {', '.join(paper_tasks(source))} "
                       f"only, not {task}: draw {task}'s subsets without --paper_subsets")
    return sorted(int(m[1]) for p in (source / task).iterdir() if (m := _TRAIN.match(p.name)))


def paper_lists(task: str, num_per_class: list[int] | None = None, source: Path | None = None) -> list[int]:
    """The samples per class to copy lists for: `num_per_class`, each checked to be one the paper published, or
    all it published."""
    have = paper_num_per_class(task, source)
    missing = [n for n in num_per_class or [] if n not in have]
    if missing:
        raise TDAError(f"--paper_subsets: the paper published no {task} list for --num_per_class {missing[0]} "
                       f"(it has {', '.join(map(str, have))})")
    return list(num_per_class or have)


def install_paper_subsets(task: str, data_dir: Path, num_per_class: list[int] | None = None, overwrite: bool = False,
                          source: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Copy the paper's test list and its training lists for `num_per_class` (default: all) into `data_dir`.

    A list already there that holds the same indices in the same order is kept; one that differs is a
    one-line error, unless `overwrite` replaces it (the subset tensors drawn from it are then rebuilt
    by the subsets step). Returns (lists written, lists kept); nothing is written when any list refuses.
    """
    source = Path(source or PAPER_DIR)
    nums = paper_lists(task, num_per_class, source)
    names = ["test_subset.txt", *(f"train_subset_{n}pc.txt" for n in nums)]
    plan = []
    for name in names:
        want, dest = io.read_index_list(source / task / name), Path(data_dir) / name
        now = io.read_index_list(dest) if dest.exists() else None
        if now is not None and now != want and not overwrite:
            raise TDAError(f"{dest} holds another index list than the paper's ({source / task / name}): pass "
                           "--overwrite to replace it with the paper's, or move it away first")
        plan.append((dest, want, now == want))
    for dest, want, same in plan:
        if not same:
            io.write_index_list(want, dest)
    return [d for d, _, same in plan if not same], [d for d, _, same in plan if same]
