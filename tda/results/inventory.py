"""Which score files exist, and loading them: every seed's scores of one output as one [S, C, N, M] array.

The score files are tda_scores/<experiment>/<output>/<seed>.pt, each a dict with `scores` float32
[n_ckpts, n_train, n_test], `ckpt_epochs`, `train_indices`, `test_indices` and `settings`. The steps
(p-values, correlations) work on `MethodScores` objects; this module is the layer that makes them
from the files.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..config import ExperimentConfig, TDAError
from ..methods import label, outputs
from ..seeds import load_seeds
from .outputs import Fingerprint, fingerprint
from .sources import AXES, ArraySource, ScoreSource, SeedFilesSource


def score_files(cfg: ExperimentConfig, output: str, seeds: list[int]) -> dict[int, Path]:
    """The existing score files of one output, seed -> path, in random_seeds.pt order."""
    return {s: cfg.scores_path(output, s) for s in seeds if cfg.scores_path(output, s).exists()}


def commands(experiment: str, methods: list[str]) -> str:
    """The shell commands that compute the scores of `methods` (outputs), each command once."""
    registered = outputs()
    return "; ".join(dict.fromkeys(registered[m].command(experiment) for m in methods))


SOURCES = ("seeds", "checkpoint epochs", "training indices", "test indices")


@dataclass
class MethodScores:
    """All seeds' attributions tau of one output, [S seeds, C checkpoints, N train, M test], with their dataset
    indices and table label (default: the registry's label of `method`).

    `scores` is an array in memory (float32 kept as float32, other types as float64) or a `ScoreSource` read
    block by block (a file too large to load); `source` reads either way.
    """

    method: str
    seeds: list[int]
    scores: np.ndarray | ScoreSource
    train_indices: list[int]
    test_indices: list[int]
    ckpt_epochs: list[int]
    settings: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not hasattr(self.scores, "read"):
            self.scores = np.asarray(self.scores)
            if self.scores.dtype not in (np.float32, np.float64):
                self.scores = self.scores.astype(np.float64)
        self.label = self.label or label(self.method)
        shape = tuple(self.scores.shape)
        want = (len(self.seeds), len(self.ckpt_epochs), len(self.train_indices), len(self.test_indices))
        if len(shape) != 4:
            raise TDAError(f"{self.label} scores have {len(shape)} axes (shape {shape}), "
                           "expected 4: [seeds, checkpoints, n_train, n_test]")
        for axis, (got, expected) in enumerate(zip(shape, want)):
            if got != expected:
                raise TDAError(f"{self.label} scores have shape {shape}: axis {axis} "
                               f"({AXES[axis]}) has {got} entries, but its {SOURCES[axis]} list {expected}")
        if len(self.seeds) < 2:
            raise TDAError(f"{self.label} scores have {len(self.seeds)} seed(s): sigma needs >= 2")

    @property
    def source(self) -> ScoreSource:
        """The scores as a block-readable source."""
        return self.scores if hasattr(self.scores, "read") else ArraySource(self.scores)


@dataclass
class Inventory:
    """Which outputs have enough seeds (>= 2, for sigma), and what is missing, found without loading."""

    cfg: ExperimentConfig
    seeds: list[int]
    files: dict[str, dict[int, Path]]  # usable outputs only
    missing_seeds: dict[str, list[int]] = field(default_factory=dict)  # usable outputs with gaps
    absent: list[str] = field(default_factory=list)  # no score file at all
    too_few: dict[str, list[int]] = field(default_factory=dict)  # exactly one seed: no sigma

    @property
    def methods(self) -> list[str]:
        """The usable outputs, in the order asked for."""
        return list(self.files)

    def fp(self, method: str) -> Fingerprint:
        """The fingerprint of one output's score files."""
        return fingerprint(self.files[method])

    def fp_all(self) -> dict[str, Fingerprint]:
        """The fingerprints of every usable output's score files (inputs of the aggregate tables)."""
        return {m: self.fp(m) for m in self.methods}

    def shared(self) -> "Inventory":
        """The same inventory restricted to the seeds every usable output has (what correlations compare)."""
        common = [s for s in self.seeds if all(s in f for f in self.files.values())]
        files = {m: {s: f[s] for s in common} for m, f in self.files.items()}
        return Inventory(self.cfg, self.seeds, files, dict(self.missing_seeds), list(self.absent), dict(self.too_few))

    def fix(self, methods: list[str]) -> str:
        """The commands that produce the scores of `methods`."""
        return commands(self.cfg.name, methods)

    def describe(self) -> list[str]:
        """One line per output that is missing or incomplete."""
        lines = []
        for m in self.absent:
            lines.append(f"{label(m)}: no scores in {self.cfg.scores_dir / m}/ (run `{self.fix([m])}`)")
        for m, have in self.too_few.items():
            lines.append(f"{label(m)}: only seed {have[0]} has scores, sigma needs >= 2 seeds: "
                         f"left out (run `{self.fix([m])}`)")
        for m, miss in self.missing_seeds.items():
            lines.append(f"{label(m)}: using {len(self.files[m])} of {len(self.seeds)} seeds, "
                         f"missing seeds {', '.join(map(str, miss))} (run `{self.fix([m])}`)")
        return lines

    def load(self, method: str) -> MethodScores:
        """Load and check one output's score files: same shape, checkpoints and indices for every seed (float64)."""
        return self._read(method, lazy=False)

    def open(self, method: str) -> MethodScores:
        """The same scores, checked the same way, read block by block from the files when used (float32)."""
        return self._read(method, lazy=True)

    def _read(self, method: str, lazy: bool) -> MethodScores:
        cfg = self.cfg
        fix = f"delete it and run `{self.fix([method])}`"
        arrays, ref, common = [], None, None
        for s, path in self.files[method].items():
            if lazy:
                try:
                    d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception as e:  # noqa: BLE001 - any unreadable file is one line
                    raise TDAError(f"corrupt {method} scores {path} ({type(e).__name__}): {fix}")
            else:
                d = io.load_scores(cfg, method, s, fix=f"run `{self.fix([method])}`")
            if not isinstance(d, dict) or "scores" not in d:
                raise TDAError(f"corrupt {method} scores {cfg.scores_path(method, s)}: {fix}")
            sc = d["scores"]
            meta = (tuple(sc.shape), list(map(int, d["train_indices"])), list(map(int, d["test_indices"])),
                    list(map(int, d["ckpt_epochs"])))
            if sc.ndim != 3 or sc.shape[0] != cfg.n_ckpts or sc.shape[1:] != (len(meta[1]), len(meta[2])):
                raise TDAError(f"{method} scores {cfg.scores_path(method, s)} have shape {tuple(sc.shape)}, expected "
                               f"[{cfg.n_ckpts}, n_train, n_test] matching its index lists: {fix}")
            if ref is None:
                ref = (s, meta)
            elif meta != ref[1]:
                raise TDAError(f"{method} scores of seed {s} do not match seed {ref[0]} (shape, indices or "
                               f"checkpoints differ): {fix}")
            settings = dict(d.get("settings", {}))
            common = settings if common is None else {k: v for k, v in common.items()
                                                      if k in settings and str(settings[k]) == str(v)}
            if not lazy:
                arrays.append(sc.double().numpy())
            del d, sc
        (shape, train_idx, test_idx, epochs) = ref[1]
        files = list(self.files[method].values())
        scores = SeedFilesSource(files, (len(files), *shape), np.float32) if lazy else np.stack(arrays)
        # per-seed values (seed, timing) differ between files: keep the settings all seeds share
        return MethodScores(method, list(self.files[method]), scores, train_idx, test_idx, epochs, common)


def take_inventory(cfg: ExperimentConfig, methods: list[str] | tuple[str, ...] | None = None,
                   need: int = 1) -> Inventory:
    """Find the score files of `methods` (default: every registered output); a one-line TDAError naming
    the scripts when fewer than `need` have >= 2 seeds."""
    methods = list(outputs()) if methods is None else list(methods)
    unknown = [m for m in methods if m not in outputs()]
    if unknown:
        raise TDAError(f"unknown TDA output {unknown[0]!r}: choose from {', '.join(outputs())}")
    seeds = load_seeds(cfg.root)
    inv = Inventory(cfg=cfg, seeds=seeds, files={})
    for m in methods:
        files = score_files(cfg, m, seeds)
        if not files:
            inv.absent.append(m)
        elif len(files) < 2:
            inv.too_few[m] = list(files)
        else:
            inv.files[m] = files
            miss = [s for s in seeds if s not in files]
            if miss:
                inv.missing_seeds[m] = miss
    if len(inv.methods) < need:
        lacking = [m for m in methods if m not in inv.files]
        if not inv.methods:
            what = f"no TDA scores with >= 2 seeds for {cfg.name} in {cfg.scores_dir}/"
        else:
            what = (f"correlations need >= {need} methods with >= 2 seeds, {cfg.name} has only "
                    f"{', '.join(label(m) for m in inv.methods)}")
        raise TDAError(f"{what}: run `{inv.fix(lacking)}` first")
    return inv


def add_methods_arg(p: argparse.ArgumentParser) -> None:
    """--methods and --overwrite of run_pvalues.py / run_correlations.py (choices: the registered outputs)."""
    names = list(outputs())
    p.add_argument("--methods", nargs="+", default=names, choices=names,
                   help=f"TDA outputs to include (default: all registered, {' '.join(names)})")
    p.add_argument("--overwrite", action="store_true", help="recompute outputs that are up to date")
