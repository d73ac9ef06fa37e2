"""tda.significance and tda.correlate in memory: equal to the scripts' files on the same scores, nothing written
unless asked, usable from outside the repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from scipy import stats as sps

import tda
from helpers import REPO, script
from tda import io, plots
from tda.config import TDAError
from tda.results.pairfile import read_pairs

S, C, N, M = 6, 3, 9, 11
TRAIN, TEST = list(range(50, 50 + N)), list(range(700, 700 + M))


def scores(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((S, C, N, M)).astype(np.float32)
    x[:, :, :2] += 2.0
    return x


def run_pvalues_scores(root, x: np.ndarray, name: str = "trak") -> "os.PathLike":
    np.save(root / "x.npy", x)
    io.write_index_list(TRAIN, root / "train.txt")
    io.write_index_list(TEST, root / "test.txt")
    script("run_pvalues").main(["--experiment", "ext", "--scores", str(root / "x.npy"), "--method_name", name,
                                "--train_indices", str(root / "train.txt"), "--test_indices", str(root / "test.txt")])
    return root / "results" / "ext"


def test_api_object_equals_the_scripts_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    x = scores()
    d = run_pvalues_scores(tmp_path, x)
    sig = tda.significance(torch.from_numpy(x), train_ids=TRAIN, test_ids=TEST, name="trak")
    pd.testing.assert_frame_equal(sig.to_frame(), read_pairs(d / "pairs_trak.parquet"), check_exact=True)
    pd.testing.assert_frame_equal(sig.fractions, pd.read_csv(d / "significance.csv"),
                                  check_exact=True)
    pd.testing.assert_frame_equal(sig.mean_p, pd.read_csv(d / "mean_p_values.csv", index_col=0),
                                  check_exact=True)
    for k in range(1, C + 1):
        np.testing.assert_allclose(pd.read_csv(d / f"pvalues_trak_across_{k}_ckpts.csv", index_col=0).to_numpy(),
                                   sig.p_z[k - 1], rtol=1e-6)
    trusted = pd.read_csv(d / "trusted_pairs.csv")
    assert list(sig.trusted.train_index) == list(trusted.train_index) and len(trusted) > 0
    assert sig.to_frame(k=2).equals(sig.to_frame()[lambda f: f.K == 2].reset_index(drop=True))

    # save(dir) writes the script's files, byte for byte (only where the scores came from differs)
    out = tmp_path / "saved" / "ext"
    report = sig.save(out)
    assert report == out / "report.md"
    visible = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert visible == sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    for name in visible:
        if name == "report.md":
            strip = lambda t: [line for line in t.splitlines() if "scores from" not in line]  # noqa: E731
            assert strip((out / name).read_text()) == strip((d / name).read_text())
        else:
            assert (out / name).read_bytes() == (d / name).read_bytes(), name


def test_nothing_is_written_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    sig = tda.significance(scores(1))
    sig.to_frame()
    fig = sig.plot_histograms()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    plots.close(fig)
    tda.correlate(sig, scores(2))
    assert list(tmp_path.iterdir()) == []
    assert "mean z-test p" in repr(sig)


def test_from_outside_the_repository(tmp_path):
    code = ("import json, torch, tda; f = tda.significance(torch.randn(10, 5, 30, 60)).to_frame(); "
            "print(json.dumps([len(f), list(f.columns), type(f).__name__]))")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    n, cols, kind = json.loads(r.stdout.strip().splitlines()[-1])
    assert kind == "DataFrame" and n == 30 * 60 * 5
    assert {"train_index", "test_index", "K", "mu", "sigma", "snr", "p_z", "p_t", "q_t"} <= set(cols)
    assert list(tmp_path.iterdir()) == []


def test_correlate_equals_the_script_and_scipy(tmp_path, monkeypatch):
    """Two score sets with different, partly shared samples: correlate() matches them by id, as the script does."""
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    x = scores(3)
    y = x + np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    rows, cols = [4, 0, 2, 7, 1], [10, 3, 5, 0, 8, 9]
    a = tda.significance(x, train_ids=TRAIN, test_ids=TEST, name="a")
    b = tda.significance(y[:, :, rows][:, :, :, cols], train_ids=[TRAIN[r] for r in rows],
                         test_ids=[TEST[c] for c in cols], name="b")
    got = tda.correlate(a, b, k=2)
    assert got.attrs["n_pairs"] == len(rows) * len(cols)
    keep_r, keep_c = sorted(rows), sorted(cols)
    mu_a = x[:, C - 2:].astype(np.float64).mean(1).mean(0)[np.ix_(keep_r, keep_c)].ravel()
    mu_b = y[:, C - 2:].astype(np.float64).mean(1).mean(0)[np.ix_(keep_r, keep_c)].ravel()
    assert got.loc["pearson", "mean"] == pytest.approx(sps.pearsonr(mu_a, mu_b)[0], rel=1e-10)
    assert got.loc["spearman", "mean"] == pytest.approx(sps.spearmanr(mu_a, mu_b)[0], rel=1e-10)
    # the script on the same two arrays (as files), all checkpoints
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    script("run_correlations").main(["--experiment", "two", "--scores", str(tmp_path / "x.npy"), "--method_name", "a",
                                     "--scores", str(tmp_path / "y.npy"), "--method_name", "b"])
    full = tda.correlate(x, y)
    for kind in ("pearson", "spearman"):
        for stat in ("mean", "std", "snr"):
            csv = pd.read_csv(tmp_path / "results" / "two" / f"correlation_{kind}_{stat}.csv", index_col=0)
            assert csv.loc["A", "B"] == pytest.approx(full.loc[kind, stat], rel=1e-12)


def test_bad_input_is_one_line(tmp_path):
    for bad, needle in ((np.zeros((S, N, M)), "expected 4 axes"), (np.zeros((1, C, N, M)), "axis 0 (seeds)"),
                        (np.full((S, C, N, M), np.nan), "NaN"), ("nothere.npy", "not found")):
        with pytest.raises(TDAError) as e:
            tda.significance(bad)
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TDAError, match="share no training samples"):
        tda.correlate(tda.significance(scores(), train_ids=TRAIN), tda.significance(scores(), train_ids=TEST[:N]))
