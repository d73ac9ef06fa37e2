"""Which train-test pairs and seeds several methods' scores share, matched by dataset index and seed name.

Methods computed elsewhere need not list their samples in our order, nor all of them: the shared training
samples, test samples and seeds are intersected by name (dataset index, seed), in the first method's order,
and each method reads exactly those, reordered, from its own scores. Nothing is assumed from positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import TDAError
from .pairs import Selection
from .sources import ScoreSource


@dataclass
class Member:
    """One method to correlate: its scores, the names of its seeds and samples, and K (last checkpoints averaged)."""

    label: str
    source: ScoreSource
    seeds: list[int]
    train: list[int]
    test: list[int]
    k: int


@dataclass
class Shared:
    """The seeds and samples all members share, in the first member's order, and how each member reads them."""

    seeds: list[int]
    train: list[int]
    test: list[int]
    selections: list[Selection]

    @property
    def n_pairs(self) -> int:
        """Number of shared train-test pairs."""
        return len(self.train) * len(self.test)


def _common(lists: list[list[int]]) -> list[int]:
    others = [set(x) for x in lists[1:]]
    return [v for v in lists[0] if all(v in o for o in others)]


def _positions(have: Sequence[int], want: list[int]) -> np.ndarray | None:
    """Positions of `want` in `have` (None when they are all of `have`, in order: read as stored)."""
    if list(have) == want:
        return None
    where = {v: i for i, v in enumerate(have)}
    return np.array([where[v] for v in want], dtype=np.int64)


def _span(values: list[int]) -> str:
    return f"{min(values)}..{max(values)}" if values else "none"


def share(members: list[Member]) -> Shared:
    """The shared seeds, training and test samples of `members`; a one-line error naming what is not shared."""
    names = " and ".join(m.label for m in members) if len(members) <= 3 else f"{len(members)} methods"
    seeds = _common([m.seeds for m in members])
    for what, attr in (("training samples", "train"), ("test samples", "test")):
        if not _common([getattr(m, attr) for m in members]):
            spans = "; ".join(f"{m.label}: {len(getattr(m, attr))} between {_span(getattr(m, attr))}" for m in members)
            raise TDAError(f"{names} share no {what} (dataset indices {spans}): correlate scores of the same samples, "
                           "with --train_indices/--test_indices naming the external scores' dataset indices")
    if len(seeds) < 2:
        spans = "; ".join(f"{m.label}: {', '.join(map(str, m.seeds[:4]))}{'...' if len(m.seeds) > 4 else ''}"
                          for m in members)
        raise TDAError(f"{names} share {len(seeds)} seed(s) ({spans}), correlations need >= 2: name the external "
                       "scores' seeds (a directory of <seed>.pt/.npy files, or a dict with 'seeds')")
    train, test = _common([m.train for m in members]), _common([m.test for m in members])
    sels = [Selection([m.seeds.index(s) for s in seeds], _positions(m.train, train), _positions(m.test, test),
                      len(train), len(test)) for m in members]
    return Shared(seeds, train, test, sels)
