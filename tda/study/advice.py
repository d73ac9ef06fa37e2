"""The paper's advice as a hypothesis: are the significant pairs of a method closer to the ground truth than the rest?

Pure maths over arrays. Per method, the pairs are split by significance over the seeds (the t-test with
Benjamini-Hochberg at 0.05, or the paper's z-test at p < 0.05), and a statistic against a ground truth is taken
within each group: the sign-aligned Spearman correlation of the method's posterior mean mu with a per-pair truth
(LOO's mu, or the LDS subsets' own per-pair effect), or the mean per-pair contribution to the LDS
(`tda.lds.score.pair_contributions`). A third group, the pairs of largest |mu|, as many as are significant, separates
what significance adds from what a large attribution alone gives. Intervals come from resampling test samples and
training samples.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats as sps

from .. import stats

ALPHA = 0.05
#: the two ways a pair is called significant
TESTS = {"t_bh": "t-test, BH q < 0.05", "z": "z-test p < 0.05 (paper)"}
GROUPS = ("significant", "not significant", "top |mu|")
#: seed counts the share of significant pairs is shown at, where the study has them (and all of its seeds)
SEED_COUNTS = (3, 5, 10, 20)

Statistic = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def significant(per_seed: np.ndarray, test: str, alpha: float = ALPHA) -> np.ndarray:
    """Which pairs are significant over the seeds of tau [R, N, M] (already averaged over K checkpoints), [N, M]."""
    st = stats.seed_statistics(per_seed)
    if test == "t_bh":
        return stats.benjamini_hochberg(stats.t_pvalues(st)) < alpha
    if test == "z":
        return stats.z_pvalues(st.snr) < alpha
    raise ValueError(f"test must be one of {tuple(TESTS)}, got {test!r}")


def top_magnitude(mu: np.ndarray, count: int) -> np.ndarray:
    """The `count` pairs of largest |mu| (ties in index order), [N, M]."""
    flat = np.zeros(mu.size, dtype=bool)
    flat[np.argsort(-np.abs(mu).ravel(), kind="stable")[:count]] = True
    return flat.reshape(mu.shape)


def spearman(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Spearman correlation of x and y over the pairs in `mask` (nan with fewer than 3 or a constant side)."""
    a, b = np.asarray(x)[mask], np.asarray(y)[mask]
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(sps.spearmanr(a, b)[0])


def mean_in(x: np.ndarray, _unused: np.ndarray, mask: np.ndarray) -> float:
    """The mean of x over the pairs in `mask` (nan when empty)."""
    v = np.asarray(x)[mask]
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def compare_groups(x: np.ndarray, y: np.ndarray, groups: dict[str, np.ndarray], statistic: Statistic,
                   reps: int = 500, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """statistic(x, y, group) for every group, and the differences "significant - not significant" and
    "significant - top |mu|": (estimate, lower, upper). The interval resamples test samples and training samples
    (both with replacement, independently): pairs of one test sample share its outcome, pairs of one training
    sample share that sample, and resampling test samples alone proved too narrow (docs/study.md)."""
    def all_of(rows: np.ndarray | None, cols: np.ndarray | None) -> dict[str, float]:
        pick = (lambda a: a) if cols is None else (lambda a: a[np.ix_(rows, cols)])
        got = {g: statistic(pick(x), pick(y), pick(m)) for g, m in groups.items()}
        got["significant - not significant"] = got["significant"] - got["not significant"]
        got["significant - top |mu|"] = got["significant"] - got["top |mu|"]
        return got

    point = all_of(None, None)
    rng = np.random.default_rng(seed)
    n, m = x.shape
    draws = [all_of(rng.integers(0, n, n), rng.integers(0, m, m)) for _ in range(reps)]
    out = {}
    for key, value in point.items():
        d = np.array([dr[key] for dr in draws])
        d = d[np.isfinite(d)]
        lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2]) if len(d) else (np.nan, np.nan)
        out[key] = (value, float(lo), float(hi))
    return out


def verdict(lo: float, hi: float) -> str:
    """What an interval of "significant minus the rest" says: the significant pairs are closer to the truth
    ('supports'), farther ('contradicts'), or no difference is resolved ('no difference'); 'undetermined' where a
    group is too small for the statistic."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undetermined"
    return "supports" if lo > 0 else "contradicts" if hi < 0 else "no difference"


def advice_rows(mu: np.ndarray, sig: np.ndarray, truths: dict[str, tuple[np.ndarray, Statistic]],
                reps: int = 500, level: float = 0.95, seed: int = 0) -> list[dict]:
    """One method against every truth: per truth (name -> (per-pair array, statistic taking mu-aligned x and the
    truth)), the groups' statistics, the two differences and their intervals. `mu` must already be sign-aligned
    (positive = "j helps i") and the truths too."""
    groups = {"significant": sig, "not significant": ~sig, "top |mu|": top_magnitude(mu, int(sig.sum()))}
    rows = []
    for name, (truth, statistic) in truths.items():
        x = truth if statistic is mean_in else mu
        got = compare_groups(x, truth, groups, statistic, reps, level, seed)
        for key, (value, lo, hi) in got.items():
            rows.append({"truth": name, "group": key, "n_pairs": int(groups[key].sum()) if key in groups else np.nan,
                         "value": value, "lo": lo, "hi": hi,
                         "verdict": (verdict(lo, hi) if np.isfinite(value) else "undetermined")
                         if key.startswith("significant -") else ""})
    return rows


def share_vs_k(scores: np.ndarray) -> list[dict]:
    """The fraction of significant pairs under each test with tau averaged over the last K = 1..C checkpoints."""
    return [{"K": k, "n_seeds": scores.shape[0], "test": t,
             "share": float(significant(stats.average_last_k(scores, k), t).mean())}
            for k in range(1, scores.shape[1] + 1) for t in TESTS]


def seed_counts(available: int) -> list[int]:
    """The seed counts of SEED_COUNTS the study has, and all of its seeds."""
    return sorted({n for n in SEED_COUNTS if n <= available} | {available})


def share_vs_seeds(scores: np.ndarray, counts: list[int], draws: int = 20, seed: int = 0) -> list[dict]:
    """The fraction of significant pairs at all C checkpoints with n of the R seeds, averaged over `draws` random
    choices of the n seeds (one when n = R); also its smallest and largest over the draws."""
    rng, per = np.random.default_rng(seed), stats.average_last_k(scores, scores.shape[1])
    rows = []
    for n in counts:
        picks = [np.arange(len(per))] if n >= len(per) else [rng.choice(len(per), n, replace=False)
                                                            for _ in range(draws)]
        for t in TESTS:
            shares = [float(significant(per[p], t).mean()) for p in picks]
            rows.append({"n_seeds": n, "test": t, "share": float(np.mean(shares)), "share_min": min(shares),
                         "share_max": max(shares), "draws": len(picks)})
    return rows
