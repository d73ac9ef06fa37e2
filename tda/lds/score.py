"""The LDS statistic over arrays (numpy, float64): predicted and observed help of each subset, the Spearman
correlation per test sample, each pair's share of it, the variants over checkpoints and seeds, bootstrap means."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

OUTCOMES = ("loss", "margin")

def observed_help(values: np.ndarray, outcome: str) -> np.ndarray:
    """The outcome turned so that larger means "helped": minus the loss, the margin as it is."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    values = np.asarray(values, dtype=np.float64)
    return -values if outcome == "loss" else values


def predicted_help(scores: np.ndarray, masks: np.ndarray, sign: int) -> np.ndarray:
    """sign * the summed attributions of each subset's samples, [S, M], from tau [N, M] and masks [S, N]."""
    return sign * (np.asarray(masks, dtype=np.float64) @ np.asarray(scores, dtype=np.float64))


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of every column of a with the same column of b (over rows), [M]; nan where a column
    is constant."""
    return pearson_columns(sps.rankdata(a, axis=0), sps.rankdata(b, axis=0))


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of a with the same column of b, [M]; nan where a column is constant."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a, axis=0)
    b = np.asarray(b, dtype=np.float64) - np.mean(b, axis=0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def lds_per_test(scores: np.ndarray, masks: np.ndarray, observed: np.ndarray, sign: int) -> np.ndarray:
    """LDS_i of attributions tau [N, M] against the observed help [S, M] of the subsets `masks` [S, N], [M]."""
    return spearman_columns(predicted_help(scores, masks, sign), observed)


def pair_effects(masks: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """The subsets' own estimate of each pair's effect, [N, M]: the slope of o_i on "j is in the subset",
    cov_s(1[j in S_s], o_i) / var_s(1[j in S_s]) (nan for a sample in all subsets or none)."""
    m = np.asarray(masks, dtype=np.float64)
    mc, oc = m - m.mean(0), np.asarray(observed, dtype=np.float64) - np.mean(observed, axis=0)
    var = (mc * mc).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (mc.T @ oc) / np.where(var > 0, var, np.nan)[:, None]


def pair_contributions(scores: np.ndarray, masks: np.ndarray, observed: np.ndarray, sign: int) -> np.ndarray:
    """Each pair's additive share of the Pearson form of LDS_i, [N, M]:

        c(j, i) = sign * tau(j, i) * cov_s(1[j in S_s], o_i) / (sd_s(p_i) * sd_s(o_i)),

    so that sum_j c(j, i) = Pearson_s(p_i, o_i). nan for a test sample whose p_i or o_i is constant.
    """
    m = np.asarray(masks, dtype=np.float64)
    mc, oc = m - m.mean(0), np.asarray(observed, dtype=np.float64) - np.mean(observed, axis=0)
    p = predicted_help(scores, masks, sign)
    pc = p - p.mean(0)
    den = np.sqrt((pc * pc).sum(0) * (oc * oc).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sign * np.asarray(scores, dtype=np.float64) * (mc.T @ oc) / np.where(den > 0, den, np.nan)


# ---------------------------------------------------------------- one checkpoint, K checkpoints, the posterior mean
SCORE_VARIANTS = ("checkpoint", "checkpoints", "posterior_mean")
TARGETS = ("seed", "posterior")


@dataclass(frozen=True)
class Variant:
    """The LDS of one way of using the posterior: per test sample (seeds averaged), and per seed (None when the
    scores are not per seed)."""

    scores: str
    target: str
    k: int
    per_test: np.ndarray
    per_seed: np.ndarray | None


def _mean_last(x: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)[:, -k:].mean(axis=1)


def lds_variants(scores: np.ndarray, observed: np.ndarray, masks: np.ndarray, sign: int, k: int) -> list[Variant]:
    """Every LDS variant of one method from the seeds' tau [R, C, N, M] and observed help [R, C, S, M] (same seeds,
    same checkpoint epochs): scores of one checkpoint (the last), of each seed's last K averaged, or their posterior
    mean over seeds; each against the seed's own retrainings ("seed", averaged over the same checkpoints) or their
    mean over seeds ("posterior")."""
    scores, observed = np.asarray(scores, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    if scores.shape[:2] != observed.shape[:2] or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"scores {scores.shape} and outcomes {observed.shape} must share seeds and checkpoints, "
                         f"and K = {k} be in 1..{scores.shape[1]}")
    out = []
    for name, kk in (("checkpoint", 1), ("checkpoints", k)):
        tau, obs = _mean_last(scores, kk), _mean_last(observed, kk)
        posterior = obs.mean(axis=0)
        for target in TARGETS:
            per = np.stack([lds_per_test(t, masks, o if target == "seed" else posterior, sign)
                            for t, o in zip(tau, obs)])  # [R, M]
            out.append(Variant(name, target, kk, _nanmean(per, 0), _nanmean(per, 1)))
    mu, obs = _mean_last(scores, k).mean(axis=0), _mean_last(observed, k)
    per_seed = np.stack([lds_per_test(mu, masks, o, sign) for o in obs])
    out.append(Variant("posterior_mean", "seed", k, _nanmean(per_seed, 0), None))
    out.append(Variant("posterior_mean", "posterior", k, lds_per_test(mu, masks, obs.mean(axis=0), sign), None))
    return out


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    count = np.isfinite(x).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(x, axis) / np.maximum(count, 1), np.nan)


def bootstrap_mean(values: np.ndarray, reps: int = 1000, level: float = 0.9, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper): the mean of the finite values and its percentile bootstrap interval over them."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(v), (reps, len(v)))
    means = v[draws].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)
