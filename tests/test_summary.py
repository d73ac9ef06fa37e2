"""run_summary.py on synthetic results directories: the tables, figures beside their CSVs, resuming, one-line errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import script
from tda.config import TDAError
from tda.results.summary import FILES, discover, write_summary

METHODS = ("LOO", "ATS", "IF", "GD", "GC")


def fake_results(root, name: str, offset: float) -> None:
    """results/<name>/ as run_pvalues.py writes it: mean_p_values.csv (K x methods) and significance.csv."""
    d = root / "results" / name
    d.mkdir(parents=True)
    table = pd.DataFrame({m: [offset + 0.1 * i - 0.01 * k for k in range(1, 6)] for i, m in enumerate(METHODS)},
                         index=pd.Index(range(1, 6), name="K"))
    table.to_csv(d / "mean_p_values.csv")
    rows = [{"method": m, "K": k, "n_seeds": 10, "n_pairs": 90, "n_zero_sigma": 0, "z_mean_p": table.loc[k, m],
             "z_frac_p_lt_0.05": 0.1 * i, "z_frac_bh_lt_0.05": 0.05 * i, "t_mean_p": 0.4, "t_frac_p_lt_0.05": 0.2,
             "t_frac_bh_lt_0.05": offset} for i, m in enumerate(METHODS) for k in range(1, 6)]
    pd.DataFrame(rows).to_csv(d / "significance.csv", index=False)


def test_summary_tables_figures_and_resume(tmp_path) -> None:
    fake_results(tmp_path, "cnn_digits3_10pc", 0.3)
    fake_results(tmp_path, "cnn_digits3_20pc_init", 0.5)
    (tmp_path / "results" / "study").mkdir()  # not an experiment: no tables, skipped
    assert discover(tmp_path) == ["cnn_digits3_10pc", "cnn_digits3_20pc_init"]
    logs: list[str] = []
    report = write_summary(root=tmp_path, log=logs.append)
    out = tmp_path / "results" / "summary"
    assert report == out / "report.md" and all((out / f).exists() for f in FILES)
    m = pd.read_csv(out / "mean_p_k.csv", index_col=0)
    assert list(m.index) == list(METHODS) and list(m.columns) == ["cnn_digits3_10pc", "cnn_digits3_20pc_init"]
    np.testing.assert_allclose(m.loc["IF", "cnn_digits3_20pc_init"], 0.5 + 0.2 - 0.05)
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig["K"]) == {5} and len(sig) == 10
    lines = pd.read_csv(out / "mean_p_vs_k.csv")
    assert len(lines) == 2 * 5 * 5 and {"experiment", "method", "K", "mean_p"} <= set(lines.columns)
    text = report.read_text()
    assert "cnn_digits3_20pc_init" in text and "mean_p_vs_k.png" in text and "0.79" in text
    before = {f: (out / f).read_bytes() for f in FILES}
    write_summary(root=tmp_path, log=logs.append)
    assert "up to date" in logs[-1] and before == {f: (out / f).read_bytes() for f in FILES}
    fake_results(tmp_path, "cnn_digits3_50pc", 0.7)  # a new experiment changes only what depends on it
    write_summary(["cnn_digits3_10pc", "cnn_digits3_50pc"], root=tmp_path, log=logs.append)
    assert list(pd.read_csv(out / "mean_p_k.csv", index_col=0).columns) == ["cnn_digits3_10pc", "cnn_digits3_50pc"]


def test_summary_errors_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    with pytest.raises(TDAError, match="no experiment results"):
        write_summary(root=tmp_path)
    fake_results(tmp_path, "cnn_digits3_10pc", 0.3)
    with pytest.raises(TDAError, match="run `bash run_experiment.sh cnn_fmnist3_10pc`"):
        write_summary(["cnn_digits3_10pc", "cnn_fmnist3_10pc"], root=tmp_path)
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    with pytest.raises(SystemExit):
        from tda import cli
        cli.run(script("run_summary").main, ["--experiments", "cnn_mnist3_10pc"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no results for cnn_mnist3_10pc") and "\n" not in err
