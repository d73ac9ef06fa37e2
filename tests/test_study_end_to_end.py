"""The whole study end to end on a tiny grid (every step, both IF solvers, every table, the report and its figures),
and the same study with two of its steps failing: the report is written for the rest and names what failed."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers import script
from tda.config import TDAError
from tda.study import plan as study_plan
from tda.study.workspace import entry_script

#: the tiny grid: digits3 at 2 per class (decomposition, protocols, LDS on 4 subsets), 3 seeds with CG on 2, 3 test
#: samples
TINY = ("--quick", "--seeds", "3", "--test_size", "3", "--protocol_n", "2", "--decomposition_n", "2", "--lds_n", "2",
        "--lds_subsets", "4", "--workers", "1")
MAIN = {"LOO (scratch)", "ATS", "IF (LiSSA)", "GD", "GC"}
ARMS = {"LOO (paper)", "LOO (paired)", "IF (CG, Gauss-Newton)"}
DERIVED = "IF (LiSSA), CG's seeds"
LOOS = {"LOO (scratch)", "LOO (paper)", "LOO (paired)"}
SIGN = {"LOO": 1, "GD": 1, "GC": 1, "ATS": -1, "IF": -1}  # the paper's: + where a positive score means "j helps i"
SHOWN = ("decomposition.png", "variants.png", "protocols.png", "agreement.png", "lds.png", "advice.png",
         "significance_trend.png", "summary/mean_p_vs_k.png")
FIGURES = (*SHOWN, "summary/significance.png")  # the report shows all but the last

pytestmark = pytest.mark.xdist_group("study_end_to_end")  # one study: its tests on one worker


def _png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    script("run_study").main([*TINY, "--out", str(out)])
    return out


def test_the_whole_study_runs_to_its_report(study: Path) -> None:
    timings = pd.read_csv(study / "timings.csv")
    assert len(timings) == 26 and (timings["status"] == "done").all()
    dec = pd.read_csv(study / "decomposition.csv")
    assert set(dec["method"]) == MAIN and len(dec) == 5 and (dec["n_seeds"] == 3).all()
    shares = dec[["share_init", "share_batch", "share_interaction"]].sum(axis=1)
    assert shares.to_numpy() == pytest.approx(1.0)  # s_A + s_B + s_AB = V_both
    var = pd.read_csv(study / "variants.csv")
    assert len(var) == 15 and set(var["source"]) == {"both", "init", "batch"} and set(var["method"]) == MAIN
    prot = pd.read_csv(study / "protocols.csv").set_index("arm")
    assert set(prot.index) == {"LOO (scratch)", "IF (LiSSA)"} | ARMS | {DERIVED}
    assert prot.loc["IF (CG, Gauss-Newton)", "n_seeds"] == prot.loc[DERIVED, "n_seeds"] == 2
    assert prot.loc["IF (LiSSA)", "n_seeds"] == 3 and prot["shared_share"].notna().sum() == 3  # the three LOOs
    agree = pd.read_csv(study / "agreement.csv")
    assert set(agree["reference"]) == LOOS
    for ref, g in agree.groupby("reference"):  # every method and arm against each LOO, itself aside
        assert set(g["method"]) == (MAIN | ARMS | {DERIVED}) - {ref}, ref
    for r in agree.itertuples():
        want = SIGN[r.method.split()[0]] * SIGN[r.reference.split()[0]]
        assert r.aligned_pearson_mu == pytest.approx(want * r.pearson_mu) and -1 <= r.pearson_mu <= 1
    assert (agree.loc[agree["method"] == DERIVED, "n_seeds"] == 2).all()
    cg = pd.read_csv(study / "cg.csv")
    assert len(cg) == 2 and set(cg["hessian"]) == {"gauss-newton"} and (cg["max_iterations"] > 0).all()
    bits = pd.read_csv(study / "bitwise.csv")  # 2 per class of 3 classes: one batch an epoch
    assert bits["experiment"].tolist() == ["cnn_digits3_2pc_batch"] and bits["all_identical"].all()
    lds = pd.read_csv(study / "lds.csv")  # every method, both outcomes, 3 score variants x 2 targets
    assert set(lds["method"]) == MAIN and len(lds) == 5 * 2 * 6 and (lds["n_subsets"] == 4).all()
    assert (lds["n_seeds"] == 3).all() and lds["lds"].between(-1, 1).all()
    for r in lds.itertuples():
        assert r.sign == SIGN[r.method.split()[0]]
    assert len(pd.read_csv(study / "lds_gain.csv")) == 5 * 2 * 2
    advice = pd.read_csv(study / "advice.csv")
    assert set(advice["method"]) == MAIN and set(advice["test"]) == {"t_bh", "z"}
    for (method, test), g in advice.groupby(["method", "test"]):  # LOO is no truth of itself
        truths = {"LDS effect", "LDS contribution"} | ({"LOO (scratch) mu"} if method != "LOO (scratch)" else set())
        assert set(g["truth"]) == truths and len(g) == 5 * len(truths), (method, test)
    assert set(advice["verdict"].dropna()) <= {"supports", "no difference", "contradicts", "undetermined"}
    trend = pd.read_csv(study / "significance_trend.csv")
    assert len(trend[trend["against"] == "K"]) == 5 * 5 * 2 and set(trend[trend["against"] == "seeds"]["n_seeds"]) == {3}
    assert (study / "work" / "results" / "cnn_digits3_2pc" / "lds.csv").exists()
    assert "## Linear datamodeling score" in (study / "work" / "results" / "cnn_digits3_2pc" / "report.md").read_text()
    assert set(pd.read_csv(study / "summary" / "lds.csv")["experiment"]) == {"cnn_digits3_2pc"}
    summary = pd.read_csv(study / "summary" / "mean_p_k.csv")
    assert {"cnn_digits3_2pc", "cnn_digits3_2pc_init", "cnn_digits3_2pc_batch"} <= set(summary.columns)
    report = (study / "report.md").read_text()
    for heading in ("## 1. What the noise is made of", "## 2. Batch-order noise", "## 3. Removing one source",
                    "## 4. The ground truth", "## 5. IF: the paper's LiSSA", "## 6. Which method agrees",
                    "## 7. LDS", "## 8. The paper's advice", "## 9. Across experiments",
                    "## Cost of the full grid"):
        assert heading in report, heading
    assert "What failed" not in report and "Not available" not in report
    assert "digits3 2pc / IF (LiSSA), CG's seeds" in report and "2 of 2 seeds bitwise identical" in report
    assert f"`python run_study.py {' '.join(TINY)} --out {study}`" in report
    for fig in FIGURES:
        assert _png(study / fig), fig
    for fig in SHOWN:
        assert f"]({fig})" in report, fig


def test_a_failed_arm_and_step_are_named_in_a_report_written_for_the_rest(study: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    out = tmp_path / "study"
    shutil.copytree(study / "work", out / "work", symlinks=True)  # the finished study: every other step is skipped
    for arm in ("loo_paired", "if_cg_gn"):
        shutil.rmtree(out / "work" / "arms" / arm / "tda_scores")
    monkeypatch.setitem(study_plan.ARMS, "loo_paired", ("run_loo.py", ("--protocol", "bogus"), "loo", "LOO (paired)"))
    cg_script = entry_script("run_if.py")
    real_if = cg_script.main

    def if_main(argv):
        if "cg" in argv:
            raise RuntimeError("CG broke down")
        return real_if(argv)
    monkeypatch.setattr(cg_script, "main", if_main)
    with pytest.raises(TDAError, match="2 part\\(s\\) of the study failed, the first 'loo_paired cnn_digits3_2pc'"):
        script("run_study").main([*TINY, "--out", str(out)])
    report = (out / "report.md").read_text()
    failed = report.split("## What failed", 1)[1].split("\n## ", 1)[0]
    arm = (out / "work" / "arms").resolve()
    assert ("* **loo_paired cnn_digits3_2pc**: run_loo.py: error: argument --protocol: invalid choice: 'bogus'"
            in failed)
    assert (f"rerun: `TDA_ROOT={arm}/loo_paired python run_loo.py --experiment cnn_digits3_2pc --seed_id all "
            "--workers 1 --protocol bogus`") in failed
    assert f"* **if_cg_gn cnn_digits3_2pc**: RuntimeError: CG broke down (traceback in {out}/study.log)" in failed
    assert (f"rerun: `TDA_ROOT={arm}/if_cg_gn python run_if.py --experiment cnn_digits3_2pc --seed_id all "
            "--workers 1 --solver cg --hessian gauss-newton`") in failed
    assert "CG broke down" in (out / "study.log").read_text() and "Traceback" in (out / "study.log").read_text()
    # the rest of the report is there, without the two arms
    for heading in ("## 1. What the noise is made of", "## 4. The ground truth", "## 6. Which method agrees",
                    "## 7. LDS", "## 8. The paper's advice", "## 9. Across experiments"):
        assert heading in report, heading
    assert "Not available when this report was written" in report
    prot = pd.read_csv(out / "protocols.csv")
    assert set(prot["arm"]) == {"LOO (scratch)", "IF (LiSSA)", "LOO (paper)"}
    agree = pd.read_csv(out / "agreement.csv")
    assert set(agree["reference"]) == {"LOO (scratch)", "LOO (paper)"} and DERIVED not in set(agree["method"])
    assert len(pd.read_csv(out / "decomposition.csv")) == 5
    status = pd.read_csv(out / "timings.csv").set_index("step")["status"]
    assert status[["loo_paired cnn_digits3_2pc", "if_cg_gn cnn_digits3_2pc"]].tolist() == ["failed", "failed"]
    assert (status.drop(["loo_paired cnn_digits3_2pc", "if_cg_gn cnn_digits3_2pc"]) == "done").all()
    for fig in FIGURES:
        assert _png(out / fig), fig


def test_the_tiny_setting_is_the_tiny_grid(monkeypatch, capsys) -> None:
    """TDA_STUDY_TINY=1 (for tests of `make study ARGS=--quick`) makes --quick the grid the tests above run."""
    run_study = script("run_study")
    run_study.main([*TINY, "--out", "x", "--dry_run"])
    explicit = capsys.readouterr().out
    monkeypatch.setenv(study_plan.TINY_ENV, "1")
    run_study.main(["--quick", "--out", "x", "--dry_run"])
    assert capsys.readouterr().out == explicit and "--protocol_n" not in explicit
    monkeypatch.delenv(study_plan.TINY_ENV)
    run_study.main(["--quick", "--out", "x", "--dry_run"])
    assert "cnn_digits3_14pc_init" in capsys.readouterr().out  # without it, --quick is itself
