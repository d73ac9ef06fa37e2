"""The statistics (docs/statistics.md): K-checkpoint averaging, mean/std/SNR over seeds, p-values, BH, correlations.

Pure maths over arrays (numpy, float64); no file I/O. Shapes: `scores` is [n_seeds, n_ckpts, n_train,
n_test] with checkpoints in epoch order; every per-pair statistic is [n_train, n_test].

Zero spread (sigma = 0) convention, used by the z- and the t-test alike: every seed gave the same
attribution. If that value is non-zero the attribution is perfectly consistent, so SNR = +-inf and
p = 0; if it is zero there is no signal at all, so SNR = 0 and p = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import integrate, special
from scipy import stats as sps

ArrayLike = np.ndarray
_CHUNK = 1 << 20  # entries per chunk where a whole-length temporary would cost memory


def average_last_k(scores: ArrayLike, k: int) -> np.ndarray:
    """Per seed, tau averaged over its last K checkpoints: [S, C, N, M] -> [S, N, M]."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 4:
        raise ValueError(f"scores must be [seeds, ckpts, train, test], got shape {scores.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"K must be in 1..{scores.shape[1]}, got {k}")
    return scores[:, -k:].mean(axis=1)


@dataclass(frozen=True)
class SeedStats:
    """Posterior mean mu, sample std sigma (ddof 1) and SNR = mu / sigma of every pair, over n seeds."""

    mu: np.ndarray
    sigma: np.ndarray
    snr: np.ndarray
    n: int


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with the zero-spread convention: den = 0 gives +-inf for num != 0 and 0 for num = 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    zero = den == 0
    return np.where(zero, np.where(num == 0, 0.0, np.copysign(np.inf, num)), out)


def seed_statistics(per_seed: ArrayLike) -> SeedStats:
    """mu, sigma (ddof 1) and SNR over the seed axis of [S, N, M]; needs S >= 2."""
    x = np.asarray(per_seed, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError(f"sigma needs at least 2 seeds, got {x.shape[0]}")
    mu = x.mean(axis=0)
    d = x - mu
    d *= d
    sigma = np.sqrt(d.sum(axis=0) / (x.shape[0] - 1))  # numpy's std(ddof=1), without computing mu twice
    return SeedStats(mu=mu, sigma=sigma, snr=safe_ratio(mu, sigma), n=x.shape[0])


def stats_across_k(scores: ArrayLike, k: int) -> SeedStats:
    """Seed statistics of the attribution averaged over each seed's last K checkpoints."""
    return seed_statistics(average_last_k(scores, k))


def z_pvalues(snr: ArrayLike) -> np.ndarray:
    """The paper's two-sided normal test on the SNR: p = 2 (1 - Phi(|SNR|)), via the survival function."""
    # norm.sf(x) is ndtr(-x): called directly, without scipy.stats' argument checks
    return np.minimum(2.0 * special.ndtr(-np.abs(np.asarray(snr, dtype=np.float64))), 1.0)


def null_mean_z_pvalue(n: int) -> float:
    """Mean of the paper's z-test p-value when attributions are pure Gaussian noise over n seeds.

    Then SNR = T / sqrt(n) with T ~ t(n - 1), so p is not uniform (mean 1/2) but piles up near 1:
    E[p] = integral of 2 sf(|t| / sqrt(n)) against the t(n - 1) density.
    """
    if n < 2:
        raise ValueError(f"needs n >= 2 seeds, got {n}")
    f = lambda t: 2.0 * sps.norm.sf(t / np.sqrt(n)) * 2.0 * sps.t.pdf(t, n - 1)  # noqa: E731 - |T| folded
    return float(integrate.quad(f, 0, np.inf)[0])


def shared_variance_share(per_seed: ArrayLike) -> float:
    """Share of a seed's tau variance over pairs that is common to all training samples j of a test sample.

    Per seed, the [N, M] matrix is split into its per-test-sample mean over j plus the rest; the share
    is var(mean over j) / var(tau), averaged over seeds. For LOO under the paper protocol this is the
    continuation effect every j shares (docs/methods.md), not the effect of removing j.
    """
    x = np.asarray(per_seed, dtype=np.float64)
    shares = []
    for seed in x:
        total = seed.var()
        shares.append(seed.mean(axis=0).var() / total if total > 0 else 0.0)
    return float(np.mean(shares))


def t_statistic(st: SeedStats) -> np.ndarray:
    """t = mu / (sigma / sqrt(n)): the one-sample t statistic of "mean attribution = 0"."""
    return safe_ratio(st.mu, st.sigma / np.sqrt(st.n))


def t_pvalues(st: SeedStats) -> np.ndarray:
    """Two-sided one-sample t-test of the mean over seeds, n - 1 degrees of freedom."""
    # t.sf(x, df) is stdtr(df, -x): called directly, without scipy.stats' argument checks
    return np.minimum(2.0 * special.stdtr(st.n - 1, -np.abs(t_statistic(st))), 1.0)


def benjamini_hochberg(p: ArrayLike, overwrite: bool = False) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over all entries, same shape as `p`.

    q_(i) = min(1, min_{j >= i} p_(j) m / j) over the sorted p-values. Written to hold few temporaries, so that
    20 million p-values (one method's pairs at one K of a TRAK-sized array) need 3 x 160 MB beside them;
    `overwrite=True` writes the q-values into `p` itself (a float64 array) instead of a new array.
    """
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    m = flat.size
    if m == 0:
        return p.copy()
    order = np.argsort(flat)  # tied p-values get the same q whatever their order
    scaled = flat[order]
    for a in range(0, m, _CHUNK):  # p_(j) m / j, chunk by chunk (no m-long array of ranks)
        b = min(a + _CHUNK, m)
        scaled[a:b] = scaled[a:b] * m / np.arange(a + 1, b + 1)
    carry = np.inf  # running minimum from the largest p down, chunk by chunk from the end
    for b in range(m, 0, -_CHUNK):
        a = max(b - _CHUNK, 0)
        run = np.minimum.accumulate(scaled[a:b][::-1])
        np.minimum(run, carry, out=run)
        carry = run[-1]
        scaled[a:b] = np.minimum(run[::-1], 1.0)
    q = flat if overwrite else np.empty(m)
    q[order] = scaled
    return q.reshape(p.shape)


def bh_count_below(tail: ArrayLike, m: int, alpha: float = 0.05) -> int:
    """How many of m p-values have a BH q-value below alpha, given `tail`: every p-value below alpha (more may be in).

    The BH rejections are the R smallest p-values, R = max{j : p_(j) m / j < alpha}; only p-values below alpha
    can satisfy that, and their ranks among all m are their ranks in `tail`. Equals
    `(benjamini_hochberg(p) < alpha).sum()` without sorting all m.
    """
    s = np.sort(np.asarray(tail, dtype=np.float64).ravel())
    hits = np.flatnonzero(s * m / np.arange(1, s.size + 1) < alpha)
    return int(hits[-1]) + 1 if hits.size else 0


def fraction_below(p: ArrayLike, alpha: float = 0.05) -> float:
    """Fraction of pairs with p < alpha."""
    p = np.asarray(p)
    return float((p < alpha).mean()) if p.size else float("nan")


def correlation_matrix(values: dict[str, ArrayLike], method: str = "pearson") -> pd.DataFrame:
    """Pearson or Spearman correlations between methods of one per-pair statistic, flattened over pairs.

    Non-finite entries (an SNR of +-inf under the zero-spread convention) are dropped pairwise.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be pearson or spearman, got {method!r}")
    frame = pd.DataFrame({k: np.asarray(v, dtype=np.float64).ravel() for k, v in values.items()})
    frame = frame.where(np.isfinite(frame))
    return frame.corr(method=method)


@dataclass
class Comoments:
    """Running count, means and centred (co)moments of pairs (x, y), merged block by block (Chan et al.).

    Gives Pearson's r of vectors seen in pieces, e.g. the mu of two methods over 20 million pairs, without
    holding them whole; entries where x or y is not finite are left out (as `correlation_matrix` does).
    """

    n: int = 0
    mx: float = 0.0
    my: float = 0.0
    cxx: float = 0.0
    cyy: float = 0.0
    cxy: float = 0.0

    def add(self, x: ArrayLike, y: ArrayLike) -> None:
        """Merge one block of pairs."""
        x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
        keep = np.isfinite(x) & np.isfinite(y)
        if not keep.all():
            x, y = x[keep], y[keep]
        nb = x.size
        if nb == 0:
            return
        bx, by = x.mean(), y.mean()
        dx, dy = x - bx, y - by
        sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
        n = self.n + nb
        ex, ey = bx - self.mx, by - self.my
        w = self.n * nb / n
        self.cxx += sxx + ex * ex * w
        self.cyy += syy + ey * ey * w
        self.cxy += sxy + ex * ey * w
        self.mx += ex * nb / n
        self.my += ey * nb / n
        self.n = n

    @property
    def r(self) -> float:
        """Pearson's correlation coefficient (NaN with fewer than 2 pairs or a constant side)."""
        den = np.sqrt(self.cxx * self.cyy)
        return float(self.cxy / den) if self.n >= 2 and den > 0 else float("nan")


def average_ranks(v: ArrayLike) -> np.ndarray:
    """Ranks 1..n of a vector, ties given their average rank (scipy.stats.rankdata's default), float64.

    float64 because ranks above 2**24 (16.8 million) are not exact in float32. Besides `v` and the result it
    holds the sort order (8 bytes an entry) and a few chunks: about 500 MB for 20 million entries.
    """
    v = np.asarray(v).ravel()
    n = v.size
    order = np.argsort(v)  # tied entries get the same (average) rank, so their order does not matter
    new = np.ones(n, dtype=bool)  # sorted position i starts a group of equal values
    for a in range(1, n, _CHUNK):
        s = v[order[a - 1:min(a + _CHUNK, n)]]
        np.not_equal(s[1:], s[:-1], out=new[a:a + s.size - 1])
    ranks = np.empty(n)
    if new.all():  # no ties: the sorted position is the rank
        for a in range(0, n, _CHUNK):
            b = min(a + _CHUNK, n)
            ranks[order[a:b]] = np.arange(a + 1, b + 1, dtype=np.float64)
        return ranks
    bounds = np.flatnonzero(np.append(new, True))  # group g holds sorted positions bounds[g]..bounds[g + 1] - 1
    starts = 0  # groups that start before position a
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        g = starts + np.cumsum(new[a:b]) - 1
        starts = int(g[-1]) + 1
        ranks[order[a:b]] = (bounds[g] + bounds[g + 1] + 1) / 2.0
    return ranks
