"""run_pvalues.py / run_correlations.py end to end on synthetic score files; missing inputs; resume."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import script, stand_in_figures
from tda import cli, io, results
from tda.config import TDAError, parse_experiment
from tda.results import report
from tda.results.inventory import Inventory
from tda.seeds import load_seeds, write_random_seeds

EXP = "cnn_digits3_2pc"  # 6 training samples
TRAIN_IDX = [11, 3, 27, 40, 5, 8]
TEST_IDX = [900, 901, 905, 910, 77, 78, 79, 1]
SIGN = {"loo": 1, "ats": -1, "if": -1, "gd": 1, "gc": 1}
LABELS = ["LOO", "ATS", "IF", "GD", "GC"]

run_pvalues = script("run_pvalues")
run_correlations = script("run_correlations")


def _signal() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    sig = torch.randn(len(TRAIN_IDX), len(TEST_IDX), generator=g) * 2
    sig[:, :4] = 0  # half the test samples get no attribution: their p-values should be large
    return sig


def write_scores(cfg, methods=tuple(SIGN), seeds=None, salt: int = 0) -> None:
    """Synthetic score files through tda.io.save_scores: a shared planted signal plus per-seed noise."""
    sig = _signal()
    for m in methods:
        for s in seeds if seeds is not None else load_seeds(cfg.root):
            g = torch.Generator().manual_seed(s * 10 + list(SIGN).index(m) + salt)
            noise = torch.randn(5, len(TRAIN_IDX), len(TEST_IDX), generator=g)
            io.save_scores(cfg, m, s, SIGN[m] * sig + noise, TRAIN_IDX, TEST_IDX, {"synthetic": True})


@pytest.fixture
def root(tmp_path, monkeypatch):
    write_random_seeds(tmp_path / "random_seeds.pt")
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    return tmp_path


def outputs(cfg) -> dict[str, bytes]:
    """The visible results files (the hidden manifests hold mtimes, which differ between runs)."""
    return {p.name: p.read_bytes() for p in sorted(cfg.results_dir.iterdir()) if not p.name.startswith(".")}


def mtimes(cfg) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cfg.results_dir.iterdir()}


def test_end_to_end_files_labels_and_values(root, capsys):
    cfg = parse_experiment(EXP)
    write_scores(cfg)
    summary = run_pvalues.main(["--experiment", EXP])
    corr = run_correlations.main(["--experiment", EXP])
    printed = capsys.readouterr().out
    d = cfg.results_dir
    seeds = load_seeds(root)

    for m in SIGN:
        for k in range(1, 6):
            df = pd.read_csv(d / f"pvalues_{m}_across_{k}_ckpts.csv", index_col=0)
            assert df.shape == (len(TRAIN_IDX), len(TEST_IDX))
            assert list(df.index) == TRAIN_IDX and list(map(int, df.columns)) == TEST_IDX
            assert df.index.name == "train_index"
            assert ((df.values >= 0) & (df.values <= 1)).all()
        assert (d / f"pvalue_hist_{m}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # one pair recomputed from the score files with a plain loop and scipy's normal distribution
    from scipy.stats import norm
    j, i, k = 2, 5, 3
    per_seed = []
    for s in seeds:
        sc = io.load_scores(cfg, "ats", s)["scores"].double()
        per_seed.append(sum(float(sc[c, j, i]) for c in range(5 - k, 5)) / k)
    mu = sum(per_seed) / len(per_seed)
    sd = math.sqrt(sum((v - mu) ** 2 for v in per_seed) / (len(per_seed) - 1))
    csv = pd.read_csv(d / f"pvalues_ats_across_{k}_ckpts.csv", index_col=0)
    assert csv.iloc[j, i] == pytest.approx(2 * norm.sf(abs(mu / sd)), rel=1e-6)

    # the planted signal: pairs with attribution have smaller p-values than pairs without
    p5 = pd.read_csv(d / "pvalues_loo_across_5_ckpts.csv", index_col=0).values
    assert p5[:, 4:].mean() < p5[:, :4].mean()

    mean_p = pd.read_csv(d / "mean_p_values.csv", index_col=0)
    assert list(mean_p.columns) == LABELS and list(mean_p.index) == [1, 2, 3, 4, 5]
    for m, lab in zip(SIGN, LABELS):
        for k in range(1, 6):
            per_pair = pd.read_csv(d / f"pvalues_{m}_across_{k}_ckpts.csv", index_col=0).values
            assert mean_p.loc[k, lab] == pytest.approx(per_pair.mean(), rel=1e-6)
    md = (d / "mean_p_values.md").read_text().splitlines()
    assert md[0] == "| K | " + " | ".join(LABELS) + " |"
    md_rows = {int(r.split("|")[1].split()[0]): [float(v) for v in r.split("|")[2:2 + len(LABELS)]]
               for r in md[2:7]}  # "| 1 ckpt | 0.1234 | ..."
    assert md_rows.keys() == {1, 2, 3, 4, 5}
    for k, vals in md_rows.items():  # the markdown table shows the CSV's numbers, row by row
        np.testing.assert_allclose(vals, mean_p.loc[k].values, atol=5e-4)

    # every row of significance.csv (and the mean p-values), recomputed from the score files with numpy and scipy:
    # per seed the mean of the last K checkpoints, the z-test on mu / sigma, scipy's one-sample t-test,
    # scipy's Benjamini-Hochberg over all pairs of a method and K
    from scipy import stats as sps
    sig = pd.read_csv(d / "significance.csv")
    assert len(sig) == 25 and set(sig["method"]) == set(LABELS)
    assert (sig["n_seeds"] == len(seeds)).all() and (sig["n_pairs"] == len(TRAIN_IDX) * len(TEST_IDX)).all()
    for m, lab in zip(SIGN, LABELS):
        sc = np.stack([io.load_scores(cfg, m, s)["scores"].double().numpy() for s in seeds])  # [S, 5, N, M]
        for k in range(1, 6):
            per_seed = sc[:, 5 - k:].mean(1)
            pz = 2 * norm.sf(np.abs(per_seed.mean(0) / per_seed.std(0, ddof=1)))
            pt = sps.ttest_1samp(per_seed, 0.0, axis=0).pvalue
            row = sig[(sig.method == lab) & (sig.K == k)].iloc[0]
            for t, p in (("z", pz), ("t", pt)):
                assert row[f"{t}_mean_p"] == pytest.approx(p.mean(), rel=1e-9)
                assert row[f"{t}_frac_p_lt_0.05"] == pytest.approx((p < 0.05).mean())
                bh = sps.false_discovery_control(p.ravel(), method="bh")
                assert row[f"{t}_frac_bh_lt_0.05"] == pytest.approx((bh < 0.05).mean())
            assert summary.mean_p.loc[k, lab] == pytest.approx(pz.mean(), rel=1e-9)
    assert sig["z_frac_p_lt_0.05"].max() > 0 and sig["z_frac_bh_lt_0.05"].max() > 0  # the planted signal is found

    for kind in ("pearson", "spearman"):
        for stat in ("mean", "std", "snr"):
            mat = pd.read_csv(d / f"correlation_{kind}_{stat}.csv", index_col=0)
            assert list(mat.index) == list(mat.columns) == LABELS
            np.testing.assert_allclose(np.diag(mat.values), 1.0, rtol=1e-12)
            np.testing.assert_allclose(mat.values, mat.values.T, rtol=1e-12)
            assert (mat.abs().values <= 1 + 1e-12).all()
        mean = pd.read_csv(d / f"correlation_{kind}_mean.csv", index_col=0)
        assert mean.loc["LOO", "ATS"] < 0 < mean.loc["LOO", "GD"]  # planted sign conventions
        assert (d / f"correlations_{kind}.png").exists()
        assert (d / f"correlations_{kind}.pdf").read_bytes()[:5] == b"%PDF-"
    assert corr.matrices[("pearson", "mean")].shape == (5, 5)

    rep = (d / "report.md").read_text()
    for f in ["pvalue_hist_loo.png", "correlations_pearson.png", "correlations_spearman.png"]:
        assert f"]({f})" in rep and (d / f).exists()
    assert "Grad-Dot" in rep and "negative" in rep
    assert "LOO" in printed and "pvalue_hist_gc.png" in printed


def test_missing_methods_and_seeds(root, capsys):
    cfg = parse_experiment(EXP)
    seeds = load_seeds(root)
    write_scores(cfg, methods=("loo",))
    write_scores(cfg, methods=("gd",), seeds=seeds[:3])
    write_scores(cfg, methods=("ats",), seeds=seeds[:1])  # one seed: no sigma
    run_pvalues.main(["--experiment", EXP])
    out = capsys.readouterr().out
    mean_p = pd.read_csv(cfg.results_dir / "mean_p_values.csv", index_col=0)
    assert list(mean_p.columns) == ["LOO", "GD"]
    sig = pd.read_csv(cfg.results_dir / "significance.csv")
    assert set(sig[sig.method == "GD"]["n_seeds"]) == {3} and set(sig[sig.method == "LOO"]["n_seeds"]) == {10}
    assert "run_if.py" in out and "IF: no scores" in out
    assert "ATS: only seed" in out and "run_ats.py" in out
    assert f"missing seeds {', '.join(map(str, seeds[3:]))}" in out
    assert not (cfg.results_dir / "pvalues_ats_across_1_ckpts.csv").exists()
    run_correlations.main(["--experiment", EXP])
    assert "correlations use the 3 seeds all of loo, gd have" in capsys.readouterr().out
    mat = pd.read_csv(cfg.results_dir / "correlation_spearman_snr.csv", index_col=0)
    assert list(mat.columns) == ["LOO", "GD"]
    assert "Not included" in (cfg.results_dir / "report.md").read_text()
    # LOO has 10 seeds, GD 3: the correlation compares statistics over the same 3 seeds
    from scipy import stats as sps
    loo, gd = (np.stack([io.load_scores(cfg, m, s)["scores"].double().mean(0).numpy() for s in seeds[:3]])
               for m in ("loo", "gd"))
    mu_loo, mu_gd = loo.mean(0).ravel(), gd.mean(0).ravel()
    mat = pd.read_csv(cfg.results_dir / "correlation_pearson_mean.csv", index_col=0)
    assert mat.loc["LOO", "GD"] == pytest.approx(sps.pearsonr(mu_loo, mu_gd)[0], rel=1e-9)

    # only one usable method: correlations name the scripts to run
    with pytest.raises(TDAError, match="run_ats.py"):
        run_correlations.main(["--experiment", EXP, "--methods", "loo", "ats"])


def test_no_scores_is_a_one_line_error(root, capsys):
    with pytest.raises(TDAError, match=r"run_loo\.py.*run_gd_and_gc\.py"):
        run_pvalues.main(["--experiment", EXP])
    with pytest.raises(SystemExit) as e:
        cli.run(run_correlations.main, ["--experiment", EXP])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "run_loo.py" in err


def test_finished_steps_are_not_recomputed(root, monkeypatch):
    stand_in_figures(monkeypatch)
    cfg = parse_experiment(EXP)
    write_scores(cfg)
    run_pvalues.main(["--experiment", EXP])
    run_correlations.main(["--experiment", EXP])
    before, first = mtimes(cfg), outputs(cfg)

    def boom(*a, **k):
        raise AssertionError("a finished step loaded scores again")
    with monkeypatch.context() as mp:
        mp.setattr(Inventory, "load", boom)
        assert run_pvalues.main(["--experiment", EXP]).skipped
        assert run_correlations.main(["--experiment", EXP]).skipped
    assert mtimes(cfg) == before

    # --overwrite recomputes, but identical results leave the files untouched
    calls = []
    orig = Inventory.load
    monkeypatch.setattr(Inventory, "load", lambda inv, m: calls.append(m) or orig(inv, m))
    assert not run_pvalues.main(["--experiment", EXP, "--overwrite"]).skipped
    assert sorted(calls) == sorted(SIGN)
    assert outputs(cfg) == first

    # new scores for one method: its files and the aggregates are redone, the others' files are not
    seeds = load_seeds(root)
    write_scores(cfg, methods=("gd",), seeds=seeds[:1], salt=7)
    calls.clear()
    before = mtimes(cfg)
    run_pvalues.main(["--experiment", EXP])
    after = mtimes(cfg)
    assert after["pvalues_gd_across_5_ckpts.csv"] > before["pvalues_gd_across_5_ckpts.csv"]
    assert after["mean_p_values.csv"] > before["mean_p_values.csv"]
    for m in ("loo", "ats", "if", "gc"):
        assert after[f"pvalues_{m}_across_3_ckpts.csv"] == before[f"pvalues_{m}_across_3_ckpts.csv"]
        assert after[f"pvalue_hist_{m}.png"] == before[f"pvalue_hist_{m}.png"]
    assert not run_correlations.main(["--experiment", EXP]).skipped  # its inputs changed too


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, bytes]:
    """The outputs of a run that was never killed (stand-in figures)."""
    cfg = parse_experiment(EXP, root=tmp_path_factory.mktemp("ref"))
    write_random_seeds(cfg.root / "random_seeds.pt")
    write_scores(cfg)
    with pytest.MonkeyPatch.context() as mp:
        stand_in_figures(mp)
        results.pvalues_step(cfg, log=lambda s: None)
        results.correlations_step(cfg, log=lambda s: None)
        report.write_report(cfg)
    return outputs(cfg)


@pytest.mark.parametrize("kill_after", [4, 31])
def test_killed_run_resumes_to_identical_outputs(root, monkeypatch, uninterrupted, kill_after):
    stand_in_figures(monkeypatch)
    cfg = parse_experiment(EXP)
    write_scores(cfg)
    orig, n = results.Outputs.write, [0]

    def dying_write(self, name, data, fp):
        if n[0] == kill_after:
            raise KeyboardInterrupt
        n[0] += 1
        return orig(self, name, data, fp)
    with monkeypatch.context() as mp:
        mp.setattr(results.Outputs, "write", dying_write)
        with pytest.raises(KeyboardInterrupt):
            run_pvalues.main(["--experiment", EXP])
    done = mtimes(cfg)
    assert len([f for f in done if not f.startswith(".")]) == kill_after
    assert not [p for p in cfg.results_dir.iterdir() if p.name.endswith(".tmp")]
    run_pvalues.main(["--experiment", EXP])
    run_correlations.main(["--experiment", EXP])
    assert outputs(cfg) == uninterrupted  # byte-identical, figures (their stand-ins) included
    after = mtimes(cfg)
    assert all(after[f] == t for f, t in done.items() if not f.startswith("."))  # no finished file redone


@pytest.mark.parametrize("r,says", [(-0.99, "practically a scaled Grad-Dot"), (-0.4, "not just a scaled Grad-Dot")])
def test_if_note_states_what_was_measured(r, says):
    mats = {("pearson", "mean"): pd.DataFrame([[1, r], [r, 1]], index=["IF", "GD"], columns=["IF", "GD"])}
    note = report.if_note({"if": {"settings": {"solver": "lissa"}}}, mats)
    assert f"r = {r:+.3f}" in note and says in note
    assert report.if_note({"if": {"settings": {"solver": "cg"}}}, mats) == ""


@pytest.mark.parametrize("share,says", [(0.82, "mostly reflect the continued training"),
                                        (0.2, "most of the variance is specific to j")])
def test_loo_note_states_what_was_measured(share, says):
    info = {"loo": {"settings": {"protocol": "paper"}, "shared_share": share, "ckpt_epochs": [10, 11, 12, 13, 14]}}
    note = report.loo_note(info, 15)
    assert f"{100 * share:.0f}%" in note and says in note
    info["loo"]["settings"]["protocol"] = "scratch"
    assert "continued training" not in report.loo_note(info, 15)
