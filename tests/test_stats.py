"""The statistics against plain loops and scipy, computed independently here."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tda import stats


def _scores(seed: int = 0, s: int = 7, c: int = 5, n: int = 4, m: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a per-pair signal plus noise, so some pairs are significant and some are not
    return rng.normal(size=(1, 1, n, m)) * rng.uniform(0, 3, size=(1, 1, n, m)) + rng.normal(size=(s, c, n, m))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_k_averaging_then_seed_stats_match_loop(k):
    x = _scores()
    st = stats.stats_across_k(x, k)
    S, C, N, M = x.shape
    for j in range(N):
        for i in range(M):
            per_seed = [sum(x[s, c, j, i] for c in range(C - k, C)) / k for s in range(S)]
            mu = sum(per_seed) / S
            var = sum((v - mu) ** 2 for v in per_seed) / (S - 1)
            assert st.mu[j, i] == pytest.approx(mu, rel=1e-12, abs=1e-12)
            assert st.sigma[j, i] == pytest.approx(math.sqrt(var), rel=1e-12)
            assert st.snr[j, i] == pytest.approx(mu / math.sqrt(var), rel=1e-12)
    assert st.n == S


def test_k_uses_the_last_checkpoints():
    x = _scores()
    np.testing.assert_array_equal(stats.average_last_k(x, 1), x[:, -1])
    np.testing.assert_allclose(stats.average_last_k(x, 2), (x[:, 3] + x[:, 4]) / 2)
    with pytest.raises(ValueError):
        stats.average_last_k(x, 6)
    with pytest.raises(ValueError):
        stats.seed_statistics(x[:1, 0])  # sigma needs two seeds


def test_z_pvalues_are_the_two_sided_normal_test():
    snr = np.array([-20.0, -3.1, -1.0, -1e-9, 0.0, 0.5, 1.959963984540054, 8.0, np.inf, -np.inf])
    p = stats.z_pvalues(snr)
    for v, pv in zip(snr, p):
        # 2 (1 - Phi(|x|)) = erfc(|x| / sqrt 2), the accurate form of the paper's formula
        assert pv == pytest.approx(math.erfc(abs(v) / math.sqrt(2)), rel=1e-12, abs=0)
    assert p[6] == pytest.approx(0.05, rel=1e-12)
    moderate = np.abs(snr) < 6
    np.testing.assert_allclose(p[moderate], 2 * (1 - sps.norm.cdf(np.abs(snr[moderate]))), rtol=1e-9)
    assert np.all((p >= 0) & (p <= 1))
    assert p[0] > 0  # the survival function keeps tiny p-values that 1 - cdf rounds to 0


@pytest.mark.parametrize("n_seeds", [2, 3, 10])
def test_t_pvalues_match_scipy_ttest(n_seeds):
    x = _scores(seed=n_seeds, s=n_seeds)
    per_seed = stats.average_last_k(x, 3)
    st = stats.seed_statistics(per_seed)
    ref = sps.ttest_1samp(per_seed, 0.0, axis=0)
    np.testing.assert_allclose(stats.t_statistic(st), ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(stats.t_pvalues(st), ref.pvalue, rtol=1e-9)


def test_zero_spread_convention():
    per_seed = np.zeros((4, 1, 3))
    per_seed[:, 0, 0] = 2.5      # every seed agrees on a non-zero attribution
    per_seed[:, 0, 1] = -1.0
    per_seed[:, 0, 2] = 0.0      # no attribution at all
    st = stats.seed_statistics(per_seed)
    assert st.snr[0, 0] == np.inf and st.snr[0, 1] == -np.inf and st.snr[0, 2] == 0
    np.testing.assert_array_equal(stats.z_pvalues(st.snr)[0], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(stats.t_pvalues(st)[0], [0.0, 0.0, 1.0])


def _bh_loop(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    for rank_pos, i in enumerate(order):
        # q_i = min over all p-values ranked at or above i of p * m / rank
        q[i] = min(1.0, min(p[order[r]] * m / (r + 1) for r in range(rank_pos, m)))
    return q


def test_benjamini_hochberg_matches_loop_and_scipy():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 1e-3, size=10), [0.02, 0.02, 0.5, 1.0]])
    rng.shuffle(p)
    q = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(q, _bh_loop(list(p)), rtol=1e-12)
    np.testing.assert_allclose(q, sps.false_discovery_control(p, method="bh"), rtol=1e-12)
    assert np.all(q >= p)
    # shape is kept and the family is all entries together
    p2 = p[:54].reshape(6, 9)
    np.testing.assert_allclose(stats.benjamini_hochberg(p2).ravel(), _bh_loop(list(p2.ravel())), rtol=1e-12)
    assert stats.fraction_below(p, 0.05) == pytest.approx(np.mean(p < 0.05))


def test_correlations_match_scipy_and_drop_nonfinite():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(5, 7))
    vals = {"LOO": base + rng.normal(size=base.shape), "ATS": -base + rng.normal(size=base.shape),
            "GD": rng.normal(size=base.shape) ** 3}
    for kind, ref in (("pearson", sps.pearsonr), ("spearman", sps.spearmanr)):
        mat = stats.correlation_matrix(vals, kind)
        assert list(mat.index) == list(mat.columns) == ["LOO", "ATS", "GD"]
        np.testing.assert_allclose(np.diag(mat), 1.0, rtol=1e-12)
        for a in vals:
            for b in vals:
                r = ref(vals[a].ravel(), vals[b].ravel())[0]
                assert mat.loc[a, b] == pytest.approx(r, rel=1e-9, abs=1e-12)
        assert mat.loc["LOO", "ATS"] < 0  # the planted opposite sign convention
    # an SNR of inf (zero spread) is left out of that pair only
    snr = {k: v.copy() for k, v in vals.items()}
    snr["GD"][0, 0] = np.inf
    mat = stats.correlation_matrix(snr, "pearson")
    keep = np.isfinite(snr["GD"].ravel())
    assert mat.loc["LOO", "GD"] == pytest.approx(
        sps.pearsonr(snr["LOO"].ravel()[keep], snr["GD"].ravel()[keep])[0], rel=1e-9)
    assert mat.loc["LOO", "ATS"] == pytest.approx(sps.pearsonr(vals["LOO"].ravel(), vals["ATS"].ravel())[0], rel=1e-9)


@pytest.mark.parametrize("n_seeds", [2, 5, 10])
def test_null_mean_of_paper_pvalue_matches_monte_carlo(n_seeds):
    rng = np.random.default_rng(n_seeds)
    noise = rng.normal(size=(n_seeds, 20000)) * 3.0  # pure noise: the true mean attribution is 0
    mu, sd = noise.mean(0), noise.std(0, ddof=1)
    p = np.array([math.erfc(abs(m / s) / math.sqrt(2)) for m, s in zip(mu, sd)])
    assert stats.null_mean_z_pvalue(n_seeds) == pytest.approx(p.mean(), abs=4 * p.std() / math.sqrt(p.size))
    if n_seeds >= 3:
        assert stats.null_mean_z_pvalue(n_seeds) > 0.5  # not uniform: the z-test on SNR is conservative


def test_shared_variance_share_matches_loop():
    rng = np.random.default_rng(9)
    shared = rng.normal(size=(3, 1, 6)) * 4  # per seed and test sample, the same for every j
    per_seed = shared + rng.normal(size=(3, 5, 6))
    shares = []
    for s in range(3):
        vals = [per_seed[s, j, i] for j in range(5) for i in range(6)]
        mean = sum(vals) / len(vals)
        total = sum((v - mean) ** 2 for v in vals) / len(vals)
        col = [sum(per_seed[s, j, i] for j in range(5)) / 5 for i in range(6)]
        shared_var = sum((col[i] - mean) ** 2 for i in range(6)) / 6
        shares.append(shared_var / total)
    assert stats.shared_variance_share(per_seed) == pytest.approx(sum(shares) / 3, rel=1e-12)
    assert stats.shared_variance_share(per_seed) > stats.shared_variance_share(per_seed - shared)
