"""Methods against several ground truths: per-arm significance, and agreement with each LOO protocol.

Pure functions over `MethodScores` (tau [seeds, ckpts, N, M]). An "arm" is one way of computing a
method on the same ensemble (LOO under `paper`, `paired` or `scratch`; IF by LiSSA or by CG).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from ..results.inventory import MethodScores
from ..results.pvalues import method_pvalues

SIG_COLUMNS = ("z_mean_p", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_mean_p", "t_frac_p_lt_0.05",
               "t_frac_bh_lt_0.05")


def on_seeds(ms: MethodScores, seeds: list[int]) -> MethodScores:
    """The same scores restricted to `seeds` (in that order)."""
    rows = [ms.seeds.index(s) for s in seeds]
    return MethodScores(ms.method, list(seeds), ms.scores[rows], ms.train_indices, ms.test_indices,
                        ms.ckpt_epochs, ms.settings, ms.label)


def shared_seeds(scores: list[MethodScores]) -> list[int]:
    """The seeds every one of `scores` has, in the first one's order."""
    return [s for s in scores[0].seeds if all(s in m.seeds for m in scores[1:])]


def significance(ms: MethodScores, k: int) -> dict:
    """Mean p-values and fractions of significant pairs at K checkpoints (a row of significance.csv)."""
    row = method_pvalues(ms).rows[k - 1]
    return {"n_seeds": row["n_seeds"], "n_pairs": row["n_pairs"], **{c: row[c] for c in SIG_COLUMNS}}


def pair_statistics(ms: MethodScores, k: int) -> tuple[np.ndarray, np.ndarray]:
    """mu over seeds and the paper's z-test p-value of every pair, tau averaged over the last K checkpoints."""
    st = stats.stats_across_k(ms.scores, k)
    return st.mu, stats.z_pvalues(st.snr)


def _corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    return float(stats.correlation_matrix({"a": a, "b": b}, kind).loc["a", "b"])


def agreement(methods: dict[str, MethodScores], references: dict[str, MethodScores], k: int,
              signs: dict[str, int]) -> pd.DataFrame:
    """Pearson and Spearman correlation of mu and of the per-pair p-values, each method against each reference.

    Computed on the seeds both share. `signs` (+1 / -1 per label) give `aligned_*`: the correlation of mu
    times both signs, so that agreement is positive whatever each method's sign convention.
    """
    rows = []
    for ref_label, ref in references.items():
        for label, ms in methods.items():
            if ms is ref:
                continue
            seeds = shared_seeds([ref, ms])
            if len(seeds) < 2:
                continue
            if (ms.train_indices, ms.test_indices) != (ref.train_indices, ref.test_indices):
                raise ValueError(f"{label} and {ref_label} cover different train/test samples")
            mu_m, p_m = pair_statistics(on_seeds(ms, seeds), k)
            mu_r, p_r = pair_statistics(on_seeds(ref, seeds), k)
            row = {"reference": ref_label, "method": label, "n_seeds": len(seeds)}
            for kind in ("pearson", "spearman"):
                row[f"{kind}_mu"] = _corr(mu_m, mu_r, kind)
                row[f"{kind}_p"] = _corr(p_m, p_r, kind)
            sign = signs.get(label, 1) * signs.get(ref_label, 1)
            row["aligned_pearson_mu"] = sign * row["pearson_mu"]
            row["aligned_spearman_mu"] = sign * row["spearman_mu"]
            rows.append(row)
    return pd.DataFrame(rows)
