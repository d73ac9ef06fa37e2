"""The "pairs you can trust" table of an experiment: labels from its subset tensors, the figure beside the CSV."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from helpers import make_tiny_root, script
from tda import io
from tda.config import parse_experiment
from tda.results.pairfile import read_pairs
from tda.seeds import load_seeds

EXP = "cnn_digits3_2pc"


def test_trusted_pairs_carry_the_subsets_labels_and_a_figure(tmp_path, monkeypatch):
    root = make_tiny_root(tmp_path / "root", seeds=(446, 724, 571, 296))
    monkeypatch.setenv("TDA_ROOT", str(root))
    cfg = parse_experiment(EXP)
    train, test = io.load_subsets(cfg)
    n, m = len(train["indices"]), len(test["indices"])
    g = torch.Generator().manual_seed(0)
    signal = torch.zeros(n, m)
    signal[train["labels"][:, None] == test["labels"][None, :]] = 3.0  # same class: a consistent attribution
    for s in load_seeds(root):
        io.save_scores(cfg, "gd", s, signal + torch.randn(5, n, m, generator=g), train["indices"].tolist(),
                       test["indices"].tolist(), {"synthetic": True})
    script("run_pvalues").main(["--experiment", EXP, "--methods", "gd"])
    d = cfg.results_dir
    trusted = pd.read_csv(d / "trusted_pairs.csv")
    assert len(trusted) > 0 and set(trusted.method) == {"GD"}
    label = dict(zip(train["indices"].tolist(), train["labels"].tolist()))
    test_label = dict(zip(test["indices"].tolist(), test["labels"].tolist()))
    assert list(trusted.train_label) == [label[i] for i in trusted.train_index]
    assert list(trusted.test_label) == [test_label[i] for i in trusted.test_index]
    assert (trusted.train_label == trusted.test_label).all()  # the planted pairs are the ones that pass
    pairs = read_pairs(d / "pairs_gd.parquet")
    at5 = pairs[(pairs.K == 5) & (pairs.q_t < 0.05)]
    assert len(at5) >= len(trusted) and set(zip(trusted.train_index, trusted.test_index)) <= set(
        zip(at5.train_index, at5.test_index))
    assert np.all(np.diff(trusted.snr.abs()) <= 0)  # strongest first
    assert (d / "trusted_pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (d / "report.md").read_text()
    assert "![strongest trusted pairs](trusted_pairs.png)" in report and "train_label" in report
