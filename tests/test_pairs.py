"""Per-pair results: the tidy per-pair table's t-test p-values and BH q-values against scipy, every K, every pair;
the same numbers whatever the source (memory-mapped .npy, per-seed files, float32) and however it is cut in blocks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from helpers import script
from tda import io, stats
from tda.results import pairs
from tda.results.corrmaths import correlation_matrices
from tda.results.external_scores import load_external
from tda.results.matching import Member, share
from tda.results.pairfile import csv_header, csv_rows, read_pairs

S, C, N, M = 10, 5, 12, 15
TRAIN = list(range(300, 300 + N))
TEST = list(range(M, 0, -1))


def planted(seed: int = 0, dtype=np.float64) -> np.ndarray:
    """Noise [S, C, N, M] with a signal on some pairs, one pair of zero spread (all seeds 0.25) and one of none (0)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((S, C, N, M))
    x[:, :, :3] += rng.uniform(0.5, 4.0, size=(3, M))
    x[:, :, 5, 7] = 0.25
    x[:, :, 6, 8] = 0.0
    return x.astype(dtype)


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    io.write_index_list(TRAIN, tmp_path / "train.txt")
    io.write_index_list(TEST, tmp_path / "test.txt")

    def go(name: str, src, method: str = "trak"):
        script("run_pvalues").main(["--experiment", name, "--scores", str(src), "--method_name", method,
                                    "--train_indices", str(tmp_path / "train.txt"),
                                    "--test_indices", str(tmp_path / "test.txt")])
        return tmp_path / "results" / name
    return go


@pytest.mark.filterwarnings("ignore:Precision loss")
def test_per_pair_table_equals_scipy_ttest_and_false_discovery_control(tmp_path, run):
    x = planted()
    np.save(tmp_path / "x.npy", x)
    d = run("ext", tmp_path / "x.npy")
    table = read_pairs(d / "pairs_trak.parquet")
    assert list(table.columns) == ["train_index", "test_index", "K", "mu", "sigma", "snr", "p_z", "p_t", "q_t"]
    assert len(table) == N * M * C
    zero = np.zeros((N, M), bool)
    zero[5, 7] = zero[6, 8] = True
    for k in range(1, C + 1):
        t = table[table.K == k]
        assert list(t.train_index) == [j for j in TRAIN for _ in TEST] and list(t.test_index) == TEST * N
        per_seed = x[:, C - k:].mean(axis=1)  # written out here, independently of tda.stats
        ref = sps.ttest_1samp(per_seed, 0.0, axis=0)
        p_t = t.p_t.to_numpy().reshape(N, M)
        np.testing.assert_allclose(p_t[~zero], ref.pvalue[~zero], rtol=1e-10)
        # zero spread: every seed agrees; a non-zero value is certain (p = 0), zero is no attribution (p = 1)
        assert p_t[5, 7] == 0.0 and p_t[6, 8] == 1.0
        # BH over all pairs of the method at this K, scipy's implementation on the same p-values
        np.testing.assert_allclose(t.q_t.to_numpy(), sps.false_discovery_control(p_t.ravel(), method="bh"),
                                   rtol=1e-12)
        mu, sd = per_seed.mean(0), per_seed.std(0, ddof=1)
        sd[zero] = 1.0  # the zero-spread pairs are checked on their own
        np.testing.assert_allclose(t.mu.to_numpy().reshape(N, M), mu, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(t.sigma.to_numpy().reshape(N, M)[~zero], sd[~zero], rtol=1e-12)
        snr = t.snr.to_numpy().reshape(N, M)
        np.testing.assert_allclose(snr[~zero], (mu / sd)[~zero], rtol=1e-10)
        assert snr[5, 7] == np.inf and snr[6, 8] == 0.0
        np.testing.assert_allclose(t.p_z.to_numpy().reshape(N, M)[~zero], 2 * sps.norm.sf(np.abs(mu / sd))[~zero],
                                   rtol=1e-10)
        # the paper's per-K CSV holds the same z-test p-values, rows and columns labelled by dataset index
        csv = pd.read_csv(d / f"pvalues_trak_across_{k}_ckpts.csv", index_col=0)
        assert list(csv.index) == TRAIN and list(map(int, csv.columns)) == TEST
        np.testing.assert_allclose(csv.to_numpy(), t.p_z.to_numpy().reshape(N, M), rtol=1e-6)
    sig = pd.read_csv(d / "significance.csv")
    for k in range(1, C + 1):
        t = table[table.K == k]
        row = sig[sig.K == k].iloc[0]
        assert row["t_frac_bh_lt_0.05"] == pytest.approx((t.q_t < 0.05).mean(), abs=1e-15)
        assert row["t_frac_p_lt_0.05"] == pytest.approx((t.p_t < 0.05).mean(), abs=1e-15)
        assert row["z_mean_p"] == pytest.approx(t.p_z.mean(), rel=1e-12)
        q_z = sps.false_discovery_control(t.p_z.to_numpy(), method="bh")
        assert row["z_frac_bh_lt_0.05"] == pytest.approx((q_z < 0.05).mean(), abs=1e-15)
        assert row["n_zero_sigma"] == 2


def test_trusted_pairs_are_the_strongest_significant_ones(tmp_path, run):
    x = planted(seed=1)
    np.save(tmp_path / "x.npy", x)
    d = run("ext", tmp_path / "x.npy")
    table = read_pairs(d / "pairs_trak.parquet")
    last = table[(table.K == C) & (table.q_t < 0.05)]
    expected = last.reindex(last.snr.abs().sort_values(ascending=False, kind="stable").index).head(pairs.TOP)
    trusted = pd.read_csv(d / "trusted_pairs.csv")
    assert len(trusted) == min(pairs.TOP, len(last)) > 0
    assert list(trusted.train_index) == list(expected.train_index)
    assert list(trusted.test_index) == list(expected.test_index)
    np.testing.assert_allclose(trusted.q_t, expected.q_t, rtol=1e-6)
    report = (d / "report.md").read_text()
    assert "## Pairs you can trust" in report and f"| TRAK | {C} | {len(last)} | {N * M} |" in report


@pytest.mark.parametrize("form", ["npy_float32", "pt_dir", "pt_file"])
def test_sources_and_blocks_give_the_same_numbers(tmp_path, monkeypatch, form):
    """A memory-mapped file, per-seed files, float32 and blocks of one row: the in-memory numbers, exactly."""
    x = planted(seed=2, dtype=np.float32)
    if form == "npy_float32":
        src = tmp_path / "x.npy"
        np.save(src, x)
    elif form == "pt_file":
        src = tmp_path / "x.pt"
        torch.save({"scores": torch.from_numpy(x)}, src)
    else:
        src = tmp_path / "seeds"
        src.mkdir()
        for s in range(S):
            torch.save(torch.from_numpy(x[s]), src / f"{100 + s}.pt")
    whole = pairs.analyse(load_external(x, "a").ms.source)
    monkeypatch.setattr(pairs, "BLOCK_BYTES", 1)  # one training row per block
    assert pairs.rows_per_block(S, C, N, M) == 1
    blocked = pairs.analyse(load_external(src, "b").ms.source)
    for name in pairs.STATS:
        np.testing.assert_array_equal(blocked.arrays[name], whole.arrays[name], err_msg=name)
    for k in range(1, C + 1):
        a, b = whole.tallies[k].row("X"), blocked.tallies[k].row("X")
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == (b[key] if isinstance(a[key], str) else pytest.approx(b[key], rel=1e-13)), key
    # and the in-memory path is the textbook computation on the same float32 values
    st = stats.stats_across_k(x.astype(np.float64), 3)
    np.testing.assert_allclose(whole.arrays["mu"][2], st.mu, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(whole.arrays["p_t"][2], stats.t_pvalues(st), rtol=1e-10)
    assert whole.shared_share == pytest.approx(stats.shared_variance_share(stats.average_last_k(x, C)), rel=1e-10)


def test_bh_count_from_the_tail_equals_the_full_correction():
    rng = np.random.default_rng(4)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=rng.integers(1, 400)), rng.uniform(0, 1e-3, size=rng.integers(0, 30)),
                            np.repeat(rng.uniform(0, 0.05), rng.integers(0, 5)), [0.0] * int(rng.integers(0, 3))])
        for alpha in (0.05, 0.2):
            full = int((sps.false_discovery_control(p, method="bh") < alpha).sum())
            assert stats.bh_count_below(p[p < alpha], p.size, alpha) == full
            assert stats.bh_count_below(p, p.size, alpha) == full  # extra p-values above alpha change nothing
    # exactly at the boundary: p_(j) m / j == alpha is not below alpha
    assert stats.bh_count_below(np.array([0.01, 0.02, 0.03]), 3, 0.03) == 0


def test_streamed_pearson_and_ranks_match_scipy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(10_001) * 3 + 7
    y = 0.6 * x + rng.standard_normal(x.size)
    y[::97] = np.inf
    c = stats.Comoments()
    for a in range(0, x.size, 777):
        c.add(x[a:a + 777], y[a:a + 777])
    keep = np.isfinite(y)
    assert c.r == pytest.approx(sps.pearsonr(x[keep], y[keep])[0], rel=1e-12)
    v = np.round(rng.standard_normal(5000), 1)  # many ties
    np.testing.assert_array_equal(stats.average_ranks(v), sps.rankdata(v))


def test_csv_rows_are_pandas_to_csv():
    p = np.random.default_rng(6).random((7, 5)) ** 9
    p[0, 0], p[1, 1] = 1.0, 0.0
    frame = pd.DataFrame(p, index=pd.Index(TRAIN[:7], name="train_index"), columns=pd.Index(TEST[:5], name="test_index"))
    assert csv_header(TEST[:5]) + csv_rows(TRAIN[:7], p) == frame.to_csv(float_format="%.7g")


def test_correlations_over_shared_pairs_match_scipy(monkeypatch):
    """Reordered and partly shared samples and seeds, vectors kept on disk: scipy on the matched pairs."""
    x = planted(seed=7)
    rng = np.random.default_rng(8)
    y = x + rng.standard_normal(x.shape)
    y[:, :, 2, 3] = 1.5  # zero spread in one method: its SNR of inf is left out of that pair only
    rows, cols = rng.permutation(N)[: N - 2], rng.permutation(M)[: M - 3]
    a = Member("A", load_external(x, "a").ms.source, list(range(S)), TRAIN, TEST, C)
    b = Member("B", load_external(y[::-1][:, :, rows][:, :, :, cols], "b").ms.source, list(range(S))[::-1],
               [TRAIN[r] for r in rows], [TEST[c] for c in cols], 3)
    monkeypatch.setattr("tda.results.corrmaths.IN_MEMORY", 1)
    shared = share([a, b])
    mats = correlation_matrices([a, b], shared)
    keep_r = sorted(rows)
    keep_c = [c for c in range(M) if c in set(cols)]
    ref_a = stats.stats_across_k(x[:, :, keep_r][:, :, :, keep_c], C)
    ref_b = stats.stats_across_k(y[:, :, keep_r][:, :, :, keep_c], 3)
    for stat, va, vb in (("mean", ref_a.mu, ref_b.mu), ("std", ref_a.sigma, ref_b.sigma), ("snr", ref_a.snr, ref_b.snr)):
        va, vb = va.ravel(), vb.ravel()
        ok = np.isfinite(va) & np.isfinite(vb)
        assert mats[("pearson", stat)].loc["A", "B"] == pytest.approx(sps.pearsonr(va[ok], vb[ok])[0], rel=1e-10)
        assert mats[("spearman", stat)].loc["A", "B"] == pytest.approx(sps.spearmanr(va[ok], vb[ok])[0], rel=1e-10)
        assert mats[("pearson", stat)].loc["A", "A"] == 1.0
    assert shared.train == [TRAIN[r] for r in keep_r] and len(shared.test) == M - 3


def test_large_mode_writes_the_same_files(tmp_path, run, monkeypatch):
    """p-values kept in a temporary file between the passes, one row per block: the same bytes as in memory."""
    x = planted(seed=9, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    small = run("small", tmp_path / "x.npy")
    monkeypatch.setattr("tda.results.perpair.STASH_IN_MEMORY", 1)
    monkeypatch.setattr(pairs, "BLOCK_BYTES", 1)
    large = run("large", tmp_path / "x.npy")
    names = sorted(p.name for p in small.iterdir() if not p.name.startswith(".") and p.name != "report.md")
    assert "pairs_trak.parquet" in names
    for name in names:
        if name.endswith(".csv") or name.endswith(".parquet"):
            a, b = (d / name for d in (small, large))
            if name.endswith(".parquet"):
                pd.testing.assert_frame_equal(read_pairs(a), read_pairs(b), check_exact=True)
            elif name in ("significance.csv", "mean_p_values.csv"):  # sums over other blocks: last digits
                pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b), rtol=1e-13)
            else:
                assert a.read_bytes() == b.read_bytes(), name
