"""run_correlations.py --scores: external methods against ours (LOO included) over the pairs and seeds they share,
matched by dataset index and seed name; one-line refusal when nothing is shared; run_summary.py lists them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from helpers import run_script, script
from test_report import EXP, TEST_IDX, TRAIN_IDX, write_scores
from tda import io
from tda.config import parse_experiment
from tda.seeds import load_seeds, write_random_seeds


@pytest.fixture
def root(tmp_path, monkeypatch):
    write_random_seeds(tmp_path / "random_seeds.pt")
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    write_scores(parse_experiment(EXP))
    return tmp_path


def ours(cfg, method: str, seeds: list[int]) -> np.ndarray:
    """[S, C, N, M] of one of our methods on `seeds`, in our sample order."""
    return np.stack([io.load_scores(cfg, method, s)["scores"].double().numpy() for s in seeds])


def test_external_scores_correlate_with_ours_on_shared_pairs_and_seeds(root, capsys):
    cfg = parse_experiment(EXP)
    seeds = load_seeds(root)
    loo = ours(cfg, "loo", seeds)
    rng = np.random.default_rng(0)
    # TRAK's own sample order, one training and two test samples we do not have, one of ours it lacks
    rows, cols = [3, 0, 5, 2, 1], [7, 2, 0, 5, 4, 1]
    train = [TRAIN_IDX[r] for r in rows] + [999]
    test = [TEST_IDX[c] for c in cols] + [5000, 5001]
    use = seeds[2:6]  # four of our ten seeds, named by their files
    d = root / "trak_dir"
    d.mkdir()
    for s in use:
        x = loo[seeds.index(s)][:, rows][:, :, cols] * 2.0 + rng.standard_normal((5, len(rows), len(cols)))
        x = np.concatenate([x, rng.standard_normal((5, 1, len(cols)))], axis=1)
        x = np.concatenate([x, rng.standard_normal((5, len(train), 2))], axis=2)
        torch.save({"scores": torch.from_numpy(x).float()}, d / f"{s}.pt")
    io.write_index_list(train, root / "train.txt")
    io.write_index_list(test, root / "test.txt")
    script("run_correlations").main(["--experiment", EXP, "--scores", str(d), "--method_name", "trak",
                                     "--train_indices", str(root / "train.txt"), "--test_indices", str(root / "test.txt")])
    out = capsys.readouterr().out
    assert "5 training x 6 test samples and 4 seeds shared by LOO, ATS, IF, GD, GC, TRAK" in out
    # the same numbers written out: our order, shared samples only, the four shared seeds, K = 5
    keep_r, keep_c = sorted(rows), sorted(cols)
    trak = np.stack([torch.load(d / f"{s}.pt", weights_only=True)["scores"].double().numpy() for s in use])
    order_r = [rows.index(r) for r in keep_r]
    order_c = [cols.index(c) for c in keep_c]
    mu_trak = trak[:, :, order_r][:, :, :, order_c].mean(1).mean(0).ravel()
    mine = loo[[seeds.index(s) for s in use]][:, :, keep_r][:, :, :, keep_c].mean(1)
    mu_loo = mine.mean(0).ravel()
    sd_loo = mine.std(0, ddof=1).ravel()
    sd_trak = trak[:, :, order_r][:, :, :, order_c].mean(1).std(0, ddof=1).ravel()
    res = root / "results" / EXP
    p = pd.read_csv(res / "correlation_pearson_mean.csv", index_col=0)
    assert list(p.columns) == ["LOO", "ATS", "IF", "GD", "GC", "TRAK"]
    assert p.loc["LOO", "TRAK"] == pytest.approx(sps.pearsonr(mu_loo, mu_trak)[0], rel=1e-10)
    s_ = pd.read_csv(res / "correlation_spearman_std.csv", index_col=0)
    assert s_.loc["TRAK", "LOO"] == pytest.approx(sps.spearmanr(sd_loo, sd_trak)[0], rel=1e-10)
    assert p.loc["LOO", "TRAK"] > 0.5  # TRAK was built from LOO: matched pairs agree

    # the p-value step takes the same scores; the summary then lists TRAK with its correlation with LOO
    script("run_pvalues").main(["--experiment", EXP, "--scores", str(d), "--method_name", "trak",
                                "--train_indices", str(root / "train.txt"), "--test_indices", str(root / "test.txt")])
    script("run_correlations").main(["--experiment", EXP, "--scores", str(d), "--method_name", "trak",
                                     "--train_indices", str(root / "train.txt"), "--test_indices", str(root / "test.txt")])
    assert "up to date" in capsys.readouterr().out
    report = script("run_summary").main([])
    ext = pd.read_csv(report.parent / "external_methods.csv")
    assert list(ext.method) == ["TRAK"] and ext.n_seeds[0] == 4
    assert ext.pearson_mean_vs_LOO[0] == pytest.approx(p.loc["TRAK", "LOO"], rel=1e-5)
    assert "## Methods computed elsewhere" in report.read_text()


def test_unnamed_seeds_take_the_experiments_and_an_external_pair(root, capsys):
    """An array without seed names: its seeds are the experiment's, in random_seeds.pt order; two externals alone."""
    cfg = parse_experiment(EXP)
    seeds = load_seeds(root)
    gd = ours(cfg, "gd", seeds)
    np.save(root / "a.npy", gd[:3] * 3.0)
    script("run_correlations").main(["--experiment", EXP, "--methods", "gd", "--scores", str(root / "a.npy"),
                                     "--method_name", "tracin", "--train_indices", str(_ids(root, TRAIN_IDX, "tr")),
                                     "--test_indices", str(_ids(root, TEST_IDX, "te"))])
    out = capsys.readouterr().out
    assert f"seeds not named by its files, taken as the experiment's first 3 ({', '.join(map(str, seeds[:3]))})" in out
    p = pd.read_csv(root / "results" / EXP / "correlation_pearson_snr.csv", index_col=0)
    assert p.loc["GD", "TRACIN"] == pytest.approx(1.0, abs=1e-12)  # a multiple of GD on the same three seeds
    # two external arrays and no experiment: correlated with each other
    np.save(root / "b.npy", -gd[:3])
    script("run_correlations").main(["--experiment", "mine", "--scores", str(root / "a.npy"), str(root / "b.npy"),
                                     "--method_name", "x", "y"])
    m = pd.read_csv(root / "results" / "mine" / "correlation_spearman_mean.csv", index_col=0)
    assert m.loc["X", "Y"] == pytest.approx(-1.0, abs=1e-12)


def _ids(root, ids, name):
    io.write_index_list(ids, root / f"{name}.txt")
    return root / f"{name}.txt"


def test_nothing_shared_is_a_one_line_refusal(root):
    np.save(root / "x.npy", np.random.default_rng(1).standard_normal((10, 5, len(TRAIN_IDX), len(TEST_IDX))))
    io.write_index_list([i + 10_000 for i in TRAIN_IDX], root / "train.txt")
    r = run_script("run_correlations.py", "--experiment", EXP, "--scores", "x.npy", "--method_name", "trak",
                   "--train_indices", "train.txt", root=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "share no training samples" in r.stderr
    assert not (root / "results" / EXP / "correlation_pearson_mean.csv").exists()
