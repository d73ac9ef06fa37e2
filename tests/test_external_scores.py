"""Significance for scores computed anywhere: planted signal against the null rate, file forms, one-line errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import run_script, script
from tda import io
from tda.config import TDAError
from tda.results.external import significance

S, C, N, M = 10, 5, 30, 40
ALPHA = 0.05


def planted(seed: int = 0, n_planted: int = 45, shift: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise [S, C, N, M] with `n_planted` random pairs shifted by `shift`; returns (scores, mask)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((S, C, N, M))
    mask = np.zeros(N * M, bool)
    mask[rng.choice(N * M, n_planted, replace=False)] = True
    mask = mask.reshape(N, M)
    scores[:, :, mask] += shift
    return scores, mask


def test_planted_pairs_are_significant_the_rest_at_the_null_rate(tmp_path):
    scores, mask = planted()
    out = tmp_path / "planted"
    summary = significance(scores, "trak", out, train_indices=list(range(100, 100 + N)))
    n_planted, n_null = int(mask.sum()), int((~mask).sum())
    # binomial spread of the number of null pairs below 0.05 when their t-test p-values are uniform
    tol = 4 * np.sqrt(0.05 * 0.95 / n_null)
    for k in range(1, C + 1):
        p = pd.read_csv(out / f"pvalues_trak_across_{k}_ckpts.csv", index_col=0)
        assert list(p.index) == list(range(100, 100 + N)) and list(map(int, p.columns)) == list(range(M))
        p = p.to_numpy()
        assert (p[mask] < ALPHA).all()  # every planted pair, even under the paper's conservative z-test
        row = summary.significance.query("K == @k").iloc[0]
        assert row["n_pairs"] == N * M and row["n_seeds"] == S
        # t-test: the planted pairs are significant (t = sqrt(S) SNR: below the z-test's p-values at these SNRs),
        # so what is left over is the null pairs' rate
        null_rate = (row["t_frac_p_lt_0.05"] * N * M - n_planted) / n_null
        assert abs(null_rate - 0.05) < tol, (k, null_rate, tol)
        assert row["t_frac_bh_lt_0.05"] * N * M >= n_planted  # the planted pairs survive FDR control
    text = (out / "report.md").read_text()
    assert "TRAK" in text and "pvalue_hist_trak.png" in text and (out / "pvalue_hist_trak.png").exists()
    assert "mean_p_values.csv" in {f.name for f in out.iterdir()}


def test_pure_noise_matches_the_uniform_null(tmp_path):
    scores, _ = planted(seed=1, n_planted=0)
    sig = significance(torch.from_numpy(scores).float(), "noise", tmp_path / "noise").significance
    tol = 4 * np.sqrt(0.05 * 0.95 / (N * M))
    assert (abs(sig["t_frac_p_lt_0.05"] - 0.05) < tol).all()
    assert (abs(sig["t_mean_p"] - 0.5) < 0.03).all()


def test_file_forms_give_the_same_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    scores, _ = planted(seed=2)
    np.save(tmp_path / "s.npy", scores)
    torch.save(torch.from_numpy(scores), tmp_path / "s.pt")
    torch.save({"scores": torch.from_numpy(scores)}, tmp_path / "d.pt")
    seeds = [446, 724, 571, 296, 854, 968, 245, 374, 829, 470]
    (tmp_path / "per_seed").mkdir()
    for s, block in zip(seeds, scores):
        torch.save({"scores": torch.from_numpy(block)}, tmp_path / "per_seed" / f"{s}.pt")
    io.write_index_list(list(range(500, 500 + N)), tmp_path / "train.txt")
    io.write_index_list(list(range(M, 0, -1)), tmp_path / "test.txt")
    run = script("run_pvalues").main
    tables = {}
    for name, src in [("npy", "s.npy"), ("pt", "s.pt"), ("dict", "d.pt"), ("dir", "per_seed")]:
        summary = run(["--experiment", f"ext_{name}", "--scores", str(tmp_path / src), "--method_name", "trak",
                       "--train_indices", str(tmp_path / "train.txt"), "--test_indices", str(tmp_path / "test.txt")])
        tables[name] = (tmp_path / "results" / f"ext_{name}" / "pvalues_trak_across_5_ckpts.csv").read_bytes()
        assert summary.significance["n_pairs"].eq(N * M).all()
        assert (tmp_path / "results" / f"ext_{name}" / "report.md").exists()
    assert len(set(tables.values())) == 1  # float64 from .npy and .pt give the same p-values
    p = pd.read_csv(tmp_path / "results" / "ext_dir" / "pvalues_trak_across_1_ckpts.csv", index_col=0)
    assert list(p.index) == list(range(500, 500 + N)) and list(map(int, p.columns)) == list(range(M, 0, -1))
    report = (tmp_path / "results" / "ext_dir" / "report.md").read_text()
    assert "seeds 245, 296, 374" in report  # seeds named by the files, taken in name order
    # two methods at once: one table
    summary = run(["--experiment", "ext_two", "--scores", str(tmp_path / "s.npy"), str(tmp_path / "per_seed"),
                   "--method_name", "trak", "tracin"])
    assert list(summary.mean_p.columns) == ["TRAK", "TRACIN"]


@pytest.mark.parametrize("make,needle", [
    (lambda d: np.save(d / "x.npy", np.zeros((S, N, M))), "expected 4 axes"),
    (lambda d: np.save(d / "x.npy", np.ones((1, C, N, M))), "axis 0 (seeds)"),
    (lambda d: np.save(d / "x.npy", np.full((S, C, N, M), np.nan)), "NaN"),
    (lambda d: torch.save({"tau": torch.zeros(2)}, d / "x.pt"), "without 'scores'"),
    (lambda d: (d / "x.txt").write_text("1 2 3"), ".pt or .npy"),
])
def test_bad_scores_are_one_line_errors(tmp_path, make, needle):
    make(tmp_path)
    src = next(p for p in tmp_path.iterdir() if p.name.startswith("x."))
    with pytest.raises(TDAError) as e:
        significance(src, "trak", tmp_path / "out")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_axis_mismatches_name_the_axis(tmp_path):
    d = tmp_path / "seeds"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((C, N, M)))
    np.save(d / "b.npy", np.zeros((C, N + 1, M)))
    with pytest.raises(TDAError, match=r"axis 2 \(training samples N\) differs"):
        significance(d, "trak", tmp_path / "out")
    scores, _ = planted(seed=3)
    with pytest.raises(TDAError, match=r"axis 2 \(training samples N\) has 30 entries, but its training indices list 29"):
        significance(scores, "trak", tmp_path / "out", train_indices=list(range(N - 1)))
    with pytest.raises(TDAError, match=r"axis 3 \(test samples M\) has 40 entries, but its test indices list 41"):
        significance(scores, "trak", tmp_path / "out", test_indices=list(range(M + 1)))
    with pytest.raises(TDAError, match="one of this pipeline's methods"):
        significance(scores, "gd", tmp_path / "out")


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "x.npy", np.zeros((S, C, N, M)))
    r = run_script("run_pvalues.py", "--experiment", "ext", "--scores", "nothere.npy", "--method_name", "a",
                   root=tmp_path)
    assert r.returncode == 2 and "scores nothere.npy not found" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    run = script("run_pvalues").main
    with pytest.raises(TDAError, match="give one name each"):
        run(["--experiment", "ext", "--scores", str(tmp_path / "x.npy"), "--method_name", "a", "b"])
    with pytest.raises(TDAError, match="bad results name"):
        run(["--experiment", "../x", "--scores", str(tmp_path / "x.npy"), "--method_name", "a"])
    with pytest.raises(SystemExit) as e:
        run(["--experiment", "ext", "--scores", str(tmp_path / "x.npy")])
    assert e.value.code == 2 and "--scores and --method_name go together" in capsys.readouterr().err
