"""The paper's advice as a hypothesis, on planted ensembles: when the significant pairs carry the true effect and the
rest are noise, the analysis finds the difference (against LOO-like truths and against the LDS contributions);
when significance is unrelated to agreement with the truth, it reports none. Plus the shares of significant pairs
against K and the number of seeds, against direct computations."""
from __future__ import annotations

import numpy as np
import pytest

from tda import stats
from tda.lds.ensemble import subset_masks
from tda.lds.score import pair_contributions, pair_effects
from tda.study.advice import (advice_rows, mean_in, seed_counts, share_vs_k, share_vs_seeds, significant, spearman,
                              top_magnitude)

N, M, R, S = 40, 30, 10, 200


def seeds_around(mu: np.ndarray, sigma: np.ndarray, rng, n_seeds: int = R) -> np.ndarray:
    """tau [R, N, M] whose mean over seeds is exactly mu and whose sample std (ddof 1) is exactly sigma."""
    eps = rng.normal(size=(n_seeds, *mu.shape))
    eps -= eps.mean(0)
    eps /= eps.std(0, ddof=1)
    return mu + sigma * eps


def planted(difference: bool, seed: int = 0):
    """A truth T [N, M], per-seed scores whose significance is set by a strong/weak mask drawn independently of
    everything else, and the outcomes of S subsets whose per-pair effects are T.

    T holds a part shared by all pairs of a training sample (a sample that matters for every test sample, as real
    attributions have), so that pairs of one training sample are not independent.
    difference=True: strong pairs have mu = T (they carry the effect), weak pairs mu = independent noise.
    difference=False: every pair has mu = 0.6 T + 0.8 Z (the same agreement with T everywhere).
    sigma = |mu| / f with f = 3 (strong) or 0.05 (weak), so t = f sqrt(R): significance depends on f alone.
    """
    rng = np.random.default_rng(seed)
    shared = rng.normal(scale=1.5, size=(N, 1)) * np.abs(rng.normal(size=(1, M)))
    truth = rng.normal(size=(N, M)) + shared
    strong = rng.random((N, M)) < 0.4
    z = rng.normal(size=(N, M))
    mu = np.where(strong, truth, z) if difference else 0.6 * truth + 0.8 * z
    sigma = np.abs(mu) / np.where(strong, 3.0, 0.05)
    tau = seeds_around(mu, sigma, rng)
    masks = subset_masks(N, S, 0.5, seed=seed).numpy()
    observed = masks.astype(float) @ truth + rng.normal(scale=2.0, size=(S, M))
    return truth, strong, tau, masks, observed


def truths(truth, mu, masks, observed):
    return {"LOO": (truth, spearman), "LDS effect": (pair_effects(masks, observed), spearman),
            "LDS contribution": (N * pair_contributions(mu, masks, observed, 1), mean_in)}


@pytest.mark.parametrize("test", ["t_bh", "z"])
def test_a_planted_difference_is_recovered(test):
    truth, strong, tau, masks, observed = planted(difference=True)
    sig = significant(tau, test)
    assert np.array_equal(sig, strong)  # the planted split is what both tests find
    mu = tau.mean(0)
    rows = {(r["truth"], r["group"]): r for r in advice_rows(mu, sig, truths(truth, mu, masks, observed))}
    assert rows[("LOO", "significant")]["value"] == pytest.approx(1.0)
    assert abs(rows[("LOO", "not significant")]["value"]) < 0.1
    for name in ("LOO", "LDS effect", "LDS contribution"):
        d = rows[(name, "significant - not significant")]
        assert d["verdict"] == "supports" and d["lo"] > 0, (name, d)
    assert rows[("LDS effect", "significant")]["value"] > 0.5
    assert rows[("LDS contribution", "significant")]["value"] > 5 * abs(rows[("LDS contribution", "not significant")]["value"])


def test_without_a_planted_difference_none_is_reported():
    """20 planted ensembles where significance is unrelated to agreement with the truth: the 95% intervals of
    "significant minus not significant" must cover 0 nearly always (60 intervals; a calibrated one misses ~3;
    resampling test samples alone, blind to what pairs of one training sample share, missed 8)."""
    found = []
    for seed in range(20):
        truth, strong, tau, masks, observed = planted(difference=False, seed=seed)
        sig = significant(tau, "t_bh")
        assert np.array_equal(sig, strong)
        mu = tau.mean(0)
        found += [r["verdict"] for r in advice_rows(mu, sig, truths(truth, mu, masks, observed), reps=200)
                  if r["group"] == "significant - not significant"]
    assert len(found) == 60 and sum(v != "no difference" for v in found) <= 3, found


def test_the_magnitude_control_and_the_groups():
    mu = np.array([[3.0, -5.0], [0.1, 2.0]])
    assert top_magnitude(mu, 2).tolist() == [[True, True], [False, False]]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    mask = rng.random((6, 5)) < 0.5
    from scipy import stats as sps
    assert spearman(x, y, mask) == pytest.approx(sps.spearmanr(x[mask], y[mask])[0])
    assert mean_in(x, y, mask) == pytest.approx(x[mask].mean())


def test_shares_against_k_and_seeds_equal_direct_computation():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(10, 5, 8, 6)) + np.linspace(0, 1.5, 8)[None, None, :, None]
    by_k = {(r["K"], r["test"]): r["share"] for r in share_vs_k(scores)}
    for k in (1, 3, 5):
        st = stats.stats_across_k(scores, k)
        assert by_k[(k, "t_bh")] == pytest.approx((stats.benjamini_hochberg(stats.t_pvalues(st)) < 0.05).mean())
        assert by_k[(k, "z")] == pytest.approx((stats.z_pvalues(st.snr) < 0.05).mean())
    assert seed_counts(10) == [3, 5, 10] and seed_counts(4) == [3, 4] and seed_counts(25) == [3, 5, 10, 20, 25]
    rows = {(r["n_seeds"], r["test"]): r for r in share_vs_seeds(scores, [5, 10], draws=7)}
    assert rows[(10, "t_bh")]["share"] == pytest.approx(by_k[(5, "t_bh")]) and rows[(10, "t_bh")]["draws"] == 1
    five = rows[(5, "t_bh")]
    assert five["draws"] == 7 and five["share_min"] <= five["share"] <= five["share_max"]
    # more seeds give the t-test more power here (a real mean effect on most pairs)
    assert rows[(10, "t_bh")]["share"] > five["share"]
