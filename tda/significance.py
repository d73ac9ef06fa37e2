"""The paper's test in memory, for attribution scores from any model and any TDA method.

`significance(scores)` takes tau [seeds, checkpoints, N train, M test] (a numpy array or torch tensor, float32
is fine, or a .npy/.pt file or per-seed directory) and returns a `Significance`: every pair's mu, sigma, SNR,
z-test (the paper's) and t-test p-values and Benjamini-Hochberg q-values for K = 1..C, the paper's mean p-value
table and the significance fractions. Nothing is written unless `save` is called, which writes exactly the
files and report of `run_pvalues.py --scores`. `correlate(a, b)` gives the correlations between two score
sets that `run_correlations.py` reports. Both run on the implementation the scripts use (tda.results).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from . import plots
from .results.correlations import member
from .results.corrmaths import correlation_matrices
from .results.external import Item, external_report, write_external
from .results.external_scores import External, ScoresLike, load_external
from .results.matching import share
from .results.pairfile import tidy, to_frame
from .results.pairs import ALPHA, analyse
from .results import perpair
from .results.pvalues import tables
from .results.trust import trusted_frame


@dataclass(repr=False)
class Significance:
    """Per-pair significance of one score set over its posterior samples (seeds x last K checkpoints).

    `mu`, `sigma`, `snr`, `p_z` (the paper's z-test on the SNR), `p_t` (t-test on the mean) and `q_t` (BH
    q-values of `p_t` over all pairs of one K) are arrays [C, N, M]: index K - 1 holds tau averaged over each
    seed's last K checkpoints; rows are training samples (`train_ids`), columns test samples (`test_ids`).
    `mean_p` is the paper's table (mean z-test p-value, rows K), `fractions` the rows of significance.csv
    (fractions of pairs with p < 0.05, raw and after BH, for both tests), `trusted` the strongest pairs with
    q_t < 0.05 at K = C.
    """

    name: str
    train_ids: np.ndarray
    test_ids: np.ndarray
    seeds: list[int]
    ckpt_epochs: list[int]
    mu: np.ndarray
    sigma: np.ndarray
    snr: np.ndarray
    p_z: np.ndarray
    p_t: np.ndarray
    q_t: np.ndarray
    mean_p: pd.DataFrame
    fractions: pd.DataFrame
    trusted: pd.DataFrame
    hist_counts: dict = field(default_factory=dict)
    external: External | None = None

    def __repr__(self) -> str:
        c, n, m = self.mu.shape
        last = self.fractions.iloc[-1]
        return (f"Significance({self.name!r}: {len(self.seeds)} seeds x {c} checkpoints, {n} x {m} pairs; at K = {c}: "
                f"mean z-test p {last['z_mean_p']:.4f}, t-test p < {ALPHA} for {last['t_frac_p_lt_0.05']:.1%}, "
                f"q < {ALPHA} for {last['t_frac_bh_lt_0.05']:.1%})")

    def to_frame(self, k: int | None = None) -> pd.DataFrame:
        """Tidy long format: one row per training sample, test sample and K (or only K = k), with columns
        train_index, test_index, K, mu, sigma, snr, p_z, p_t, q_t; the same table as `pairs_<name>.parquet`."""
        ks = range(1, self.mu.shape[0] + 1) if k is None else [k]
        return to_frame([tidy(kk, self.train_ids, self.test_ids, **{a: getattr(self, a)[kk - 1] for a in
                                                                     ("mu", "sigma", "snr", "p_z", "p_t", "q_t")})
                         for kk in ks])

    def save(self, directory: Union[str, Path], overwrite: bool = False) -> Path:
        """Write the files and report.md that `run_pvalues.py --scores` writes into `directory`; returns report.md."""
        ext = self.external
        directory = Path(directory)
        write_external(directory, [Item(ext.ms.method, lambda: ext.ms, ext.fingerprint())], overwrite)
        return external_report(directory, directory.name)

    def plot_histograms(self) -> Figure:
        """The p-value histograms of both tests, one line per K (the figure `save` writes); close it when done."""
        return plots.pvalue_histogram(self.hist_counts, self.name.upper(), len(self.seeds))


def significance(scores: ScoresLike, train_ids: Sequence[int] | None = None, test_ids: Sequence[int] | None = None,
                 seeds: Sequence[int] | None = None, ckpt_epochs: Sequence[int] | None = None,
                 name: str | None = None) -> Significance:
    """Per-pair significance of attribution scores [seeds, checkpoints, N, M] over the posterior samples.

    `train_ids`/`test_ids` are the samples' dataset indices (default 0..N-1, 0..M-1), `seeds` the seeds' names
    (default 0..S-1), `ckpt_epochs` the checkpoints' epochs; `name` (default "scores") names files and tables.
    """
    ext = load_external(scores, name or "scores", train_ids, test_ids, seeds, ckpt_epochs, allow_registered=True)
    ms = ext.ms
    a = analyse(ms.source)
    mean_p, fractions = tables({ms.label: a.tallies})
    trusted = trusted_frame([perpair.MethodResult(ms, a.tallies, a.strongest, a.shared_share)], None)
    return Significance(ms.method, np.asarray(ms.train_indices), np.asarray(ms.test_indices), list(ms.seeds),
                        list(ms.ckpt_epochs), **a.arrays, mean_p=mean_p, fractions=fractions,
                        trusted=trusted.drop(columns=["train_label", "test_label"]),
                        hist_counts=perpair.hist_counts(a.tallies), external=ext)


def _as_member(x: Union[Significance, np.ndarray, torch.Tensor], name: str, k: int):
    ext = x.external if isinstance(x, Significance) else load_external(x, name, allow_registered=True)
    return member(ext.ms, k)


def correlate(a: Union[Significance, np.ndarray, torch.Tensor], b: Union[Significance, np.ndarray, torch.Tensor],
              k: int = 5) -> pd.DataFrame:
    """Pearson and Spearman correlations of mu, sigma and SNR between two score sets, as run_correlations.py.

    `a` and `b` are score arrays [seeds, checkpoints, N, M] or `Significance` objects; with objects, the pairs and
    seeds are matched by their ids (dataset indices, seed names), as the script does. tau is averaged over each
    seed's last k checkpoints (all of them where a set has fewer). Returns a table with rows pearson/spearman and
    columns mean, std, snr; `attrs` records the number of shared pairs, the seeds and K.
    """
    members = [_as_member(a, a.name if isinstance(a, Significance) else "a", k),
               _as_member(b, b.name if isinstance(b, Significance) else "b", k)]
    if members[0].label == members[1].label:
        members[1].label += "_2"
    shared = share(members)
    mats = correlation_matrices(members, shared)
    la, lb = members[0].label, members[1].label
    out = pd.DataFrame({stat: {kind: float(mats[(kind, stat)].loc[la, lb]) for kind in ("pearson", "spearman")}
                        for stat in ("mean", "std", "snr")})
    out.attrs.update(n_pairs=shared.n_pairs, seeds=shared.seeds, k={la: members[0].k, lb: members[1].k})
    return out
