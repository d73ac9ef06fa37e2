"""Attribution scores computed anywhere (another library, another model) as `MethodScores`, checked axis by axis.

Scores are tau [seeds, checkpoints, N train, M test]: an array or tensor in memory, one `.pt` (a tensor, or a
dict with `scores` and optionally `train_indices`, `test_indices`, `ckpt_epochs`, `seeds`; loaded with
`weights_only=True`) or `.npy` file, or a directory with one file per seed, each [checkpoints, N, M] (or
[N, M]: one checkpoint), sorted by name. Files are never loaded whole: they are read block by block
(`sources`), in their own dtype.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from .. import io, provenance
from ..config import TDAError
from ..methods import outputs
from .inventory import MethodScores
from .outputs import Fingerprint
from .pairs import rows_per_block
from .sources import AXES, ArraySource, ScoreSource, check_finite, open_scores

ScoresLike = Union[np.ndarray, torch.Tensor, str, Path]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(method_name: str, allow_registered: bool = False) -> None:
    """A method name usable in file names (and, for scores beside an experiment's, not one of its methods)."""
    registered = not allow_registered and method_name in outputs()
    if not isinstance(method_name, str) or not _NAME.match(method_name) or registered:
        why = "is one of this pipeline's methods" if registered else "has characters a file name should not"
        raise TDAError(f"method name {method_name!r} {why}: use letters, digits, '_', '-', '.' (e.g. trak or "
                       f"{str(method_name).lower()}_ext)")


@dataclass
class External:
    """Scores from elsewhere as MethodScores, the files they were read from, and whether their seeds are named
    (by the files, the dict or the caller) or only numbered 0..S-1."""

    ms: MethodScores
    files: list[Path] | None
    seeds_named: bool

    def fingerprint(self) -> Fingerprint:
        """What outputs computed from these scores depend on: the files' (or the array's) bytes and the indices."""
        ms = self.ms
        if self.files is not None:
            fp: list = [[f.name, provenance.file_digest(f)] for f in self.files]
        else:
            fp = [["array", provenance.digest(ms.scores.array if hasattr(ms.scores, "array") else ms.scores)]]
        return fp + [["indices", provenance.digest([ms.train_indices, ms.test_indices, ms.seeds, ms.ckpt_epochs])]]


def load_external(scores: ScoresLike, method_name: str, train_indices: Sequence[int] | None = None,
                  test_indices: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                  ckpt_epochs: Sequence[int] | None = None, allow_registered: bool = False) -> External:
    """Scores [S, C, N, M] from an array, a tensor, a file or a per-seed directory, checked, as `External`.

    Every check reads at most a block at a time; a bad input is a one-line TDAError naming the axis or value.
    """
    check_name(method_name, allow_registered)
    meta, named, files = {}, None, None
    if isinstance(scores, (str, Path)):
        src, meta, named, files = open_scores(Path(scores))
        where = f"scores {scores}"
    else:
        if not isinstance(scores, (np.ndarray, torch.Tensor)):
            raise TDAError(f"scores must be an array, a tensor or a path, not {type(scores).__name__}")
        src: ScoreSource = ArraySource(scores)
        where = "the scores array"
    shape = tuple(src.shape)
    if len(shape) != 4:
        raise TDAError(f"{where}: shape {shape}, expected 4 axes [seeds, checkpoints, N train, M test] "
                       "(one checkpoint per seed: add an axis, scores[:, None]; a directory holds one seed per file)")
    if shape[0] < 2:
        raise TDAError(f"{where}: shape {shape}, axis 0 (seeds) has {shape[0]} entry, the test needs "
                       "scores from >= 2 independently trained models")
    if 0 in shape:
        raise TDAError(f"{where}: shape {shape}, axis {shape.index(0)} ({AXES[shape.index(0)]}) is empty")
    check_finite(src, where, rows_per_block(shape[0], shape[1], shape[2], shape[3]))
    train = list(train_indices) if train_indices is not None else meta.get("train_indices", list(range(shape[2])))
    test = list(test_indices) if test_indices is not None else meta.get("test_indices", list(range(shape[3])))
    for idx, what in ((train, "training"), (test, "test")):
        if len(set(idx)) != len(idx):
            raise TDAError(f"the {what} indices of {method_name} repeat an index: each sample must be listed once")
    seeds_named = seeds is not None or named is not None
    seeds = list(seeds) if seeds is not None else named or list(range(shape[0]))
    epochs = list(ckpt_epochs) if ckpt_epochs is not None else meta.get("ckpt_epochs", list(range(shape[1])))
    ms = MethodScores(method_name, [int(s) for s in seeds], src if files is not None else src.array,
                      [int(i) for i in train], [int(i) for i in test], [int(e) for e in epochs],
                      {"scores": str(scores) if files is not None else "array"}, label=method_name.upper())
    return External(ms, files, seeds_named)


def index_files(train_file: str | None, test_file: str | None) -> tuple[list[int] | None, list[int] | None]:
    """The --train_indices / --test_indices files (one integer per line), or None where not given."""
    return (io.read_index_list(Path(train_file)) if train_file else None,
            io.read_index_list(Path(test_file)) if test_file else None)


def add_scores_args(p: argparse.ArgumentParser) -> None:
    """--scores, --method_name, --train_indices, --test_indices of run_pvalues.py / run_correlations.py."""
    p.add_argument("--scores", nargs="+", action="extend", default=None,
                   help="external scores: a .pt (tensor or dict with 'scores') or .npy file "
                        "[seeds, checkpoints, N, M], "
                        "or a directory with one [checkpoints, N, M] file per seed; one per --method_name "
                        "(repeatable: --scores A --scores B, or --scores A B)")
    p.add_argument("--method_name", nargs="+", action="extend", default=None,
                   help="the name of each --scores in tables and files (repeatable, in the same order)")
    p.add_argument("--train_indices", default=None, help="file of the N training indices, one integer per line")
    p.add_argument("--test_indices", default=None, help="file of the M test indices, one integer per line")
