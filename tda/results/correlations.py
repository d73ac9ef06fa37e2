"""Pearson and Spearman correlations between TDA methods of mu, sigma and SNR at K = C checkpoints.

The maths (`seed_moments`, `correlation_matrices`) and the writing (`write_correlations`) take loaded
`MethodScores`; `correlations_step` is the thin layer that finds an experiment's score files, skips
finished outputs and loads the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import plots, stats
from ..config import ExperimentConfig, TDAError
from .inventory import Inventory, MethodScores, take_inventory
from ..locking import claim, lock_path
from .outputs import Fingerprint, Outputs, write_figure

CORR_KINDS = ("pearson", "spearman")
CORR_STATS = {"mean": "mean (mu)", "std": "std (sigma)", "snr": "SNR (mu/sigma)"}
CORR_MANIFEST = ".correlations_manifest.json"
FIG_FORMATS = ("png", "pdf")

Log = Callable[[str], None]


def _recompute(method: str) -> str:
    return f"recompute the {method} scores"


def corr_csv_name(kind: str, stat: str) -> str:
    """File of one correlation matrix (kind pearson/spearman, statistic mean/std/snr)."""
    return f"correlation_{kind}_{stat}.csv"


def corr_fig_stem(kind: str) -> str:
    """File stem of the heatmaps of one kind of correlation."""
    return f"correlations_{kind}"


def seed_moments(scores: Iterable[MethodScores], k: int | None = None, name: str = "",
                 fix: Callable[[str], str] = _recompute) -> tuple[dict, int, int]:
    """Per statistic (mean, std, snr), label -> [N, M] over seeds of tau averaged over the last K checkpoints.

    K defaults to every checkpoint of the first method. All methods must cover the same train/test samples.
    Returns (per-statistic values, K, largest number of seeds).
    """
    per_stat: dict[str, dict[str, np.ndarray]] = {s: {} for s in CORR_STATS}
    ref, n_seeds = None, 0
    for ms in scores:
        k = ms.scores.shape[1] if k is None else k
        if ref is None:
            ref = (ms.method, ms.train_indices, ms.test_indices, ms.seeds)
        elif (ms.train_indices, ms.test_indices) != ref[1:3]:
            raise TDAError(f"{ms.method} and {ref[0]} scores{' of ' + name if name else ''} cover different "
                           f"train/test samples: {fix(ms.method)}")
        elif ms.seeds != ref[3]:  # comparing statistics over different posterior samples would mix noise
            raise TDAError(f"{ms.method} and {ref[0]} scores{' of ' + name if name else ''} come from different "
                           f"seeds ({ms.seeds} vs {ref[3]}): correlate them on the seeds they share")
        st = stats.stats_across_k(ms.scores, k)  # keep only the statistics: scores can be large
        per_stat["mean"][ms.label], per_stat["std"][ms.label], per_stat["snr"][ms.label] = st.mu, st.sigma, st.snr
        n_seeds = max(n_seeds, len(ms.seeds))
    if ref is None:
        raise TDAError("correlations need the scores of at least 2 methods, got none")
    return per_stat, k, n_seeds


def correlation_matrices(per_stat: dict[str, dict[str, np.ndarray]]) -> dict[tuple[str, str], pd.DataFrame]:
    """{(kind, stat): methods x methods matrix}, each flattened over all train-test pairs."""
    return {(kind, s): stats.correlation_matrix(per_stat[s], kind) for kind in CORR_KINDS for s in CORR_STATS}


def write_correlations(out: Outputs, scores: Iterable[MethodScores], fp_all: Fingerprint, name: str,
                       k: int | None = None, fix: Callable[[str], str] = _recompute,
                       ) -> dict[tuple[str, str], pd.DataFrame]:
    """Compute and write the correlation CSVs and heatmaps (titled with `name`) of `scores` (may be a generator)."""
    per_stat, k, n_seeds = seed_moments(scores, k, name, fix)
    mats = correlation_matrices(per_stat)
    for kind in CORR_KINDS:
        for s in CORR_STATS:
            out.write(corr_csv_name(kind, s), mats[(kind, s)].to_csv(), fp_all)
        fig = plots.correlation_heatmaps({CORR_STATS[s]: mats[(kind, s)] for s in CORR_STATS},
                                         f"{name}: {kind.capitalize()} correlation between methods, "
                                         f"K = {k} checkpoints, up to {n_seeds} seeds")
        write_figure(out, corr_fig_stem(kind), fig, fp_all, formats=FIG_FORMATS)
    return mats


@dataclass
class CorrelationSummary:
    """The matrices {(kind, stat): DataFrame} at K = C, and the figure paths."""

    matrices: dict[tuple[str, str], pd.DataFrame]
    figures: list[Path]
    skipped: bool
    notes: list[str]


def expected_outputs(inv: Inventory) -> dict[str, Fingerprint]:
    """Every file the correlation step writes, with the fingerprint of its inputs (all methods' files)."""
    fp = inv.fp_all()
    names = [corr_csv_name(k, s) for k in CORR_KINDS for s in CORR_STATS]
    names += [f"{corr_fig_stem(k)}.{ext}" for k in CORR_KINDS for ext in FIG_FORMATS]
    return {n: fp for n in names}


def correlations_step(cfg: ExperimentConfig, methods: list[str] | tuple[str, ...] | None = None,
                      overwrite: bool = False, log: Log = print) -> CorrelationSummary:
    """run_correlations.py: correlation matrices between methods of mu, sigma and SNR, CSVs and heatmaps."""
    with claim(lock_path(cfg.results_dir, "correlations")):  # one process at a time per step
        return _correlations_step(cfg, methods, overwrite, log)


def _correlations_step(cfg: ExperimentConfig, methods, overwrite: bool, log: Log):
    inv = take_inventory(cfg, methods, need=2)
    notes = inv.describe()
    shared = inv.shared()
    n_shared = len(next(iter(shared.files.values())))
    if any(len(f) != n_shared for f in inv.files.values()):
        notes.append(f"correlations use the {n_shared} seeds all of {', '.join(inv.methods)} have")
    if n_shared < 2:
        raise TDAError(f"the outputs {', '.join(inv.methods)} of {cfg.name} share {n_shared} seed(s), correlations "
                       f"need >= 2: run `{inv.fix(inv.methods)}`")
    inv = shared
    for line in notes:
        log(line)
    out = Outputs(cfg.results_dir, CORR_MANIFEST, overwrite)
    figures = [cfg.results_dir / f"{corr_fig_stem(k)}.{e}" for k in CORR_KINDS for e in FIG_FORMATS]
    if out.all_finished(expected_outputs(inv)):
        log(f"correlations of {cfg.name} are up to date: nothing recomputed (--overwrite to redo)")
        return CorrelationSummary(read_correlations(cfg), figures, skipped=True, notes=notes)
    loaded = (inv.load(m) for m in tqdm(inv.methods, desc="correlations", leave=False))
    mats = write_correlations(out, loaded, inv.fp_all(), cfg.name, cfg.n_ckpts,
                              fix=lambda m: f"rerun `{inv.fix([m])} --overwrite`")
    out.save_manifest(methods={m: list(inv.files[m]) for m in inv.methods})
    log(f"wrote {len(out.written)} files to {cfg.results_dir}/ ({len(out.kept)} unchanged)")
    return CorrelationSummary(mats, figures, skipped=False, notes=notes)


def read_correlations(cfg: ExperimentConfig) -> dict[tuple[str, str], pd.DataFrame]:
    """The correlation CSVs written by run_correlations.py (those that exist)."""
    out = {}
    for kind in CORR_KINDS:
        for s in CORR_STATS:
            p = cfg.results_dir / corr_csv_name(kind, s)
            if p.exists():
                out[(kind, s)] = pd.read_csv(p, index_col=0)
    return out


def format_correlations(mats: dict[tuple[str, str], pd.DataFrame], k: int = 5) -> str:
    """The matrices as printed by run_correlations.py."""
    parts = []
    for (kind, s), m in mats.items():
        parts.append(f"{kind.capitalize()} correlation of {CORR_STATS[s]} between methods (K = {k}):\n"
                     + m.to_string(float_format=lambda v: f"{v:+.3f}"))
    return "\n\n".join(parts) + "\n"
