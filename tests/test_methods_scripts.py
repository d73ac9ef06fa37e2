"""The four TDA entry scripts end to end on a tiny real experiment (digits3, 2 per class, one trained seed)."""
from __future__ import annotations

import pytest
import torch

from helpers import script
from tda import cli
from tda.config import TDAError, get_task, parse_experiment
from tda.data import generate_subsets
from tda.seeds import load_seeds
from tda.training import train_seeds

EXPERIMENT = "cnn_digits3_2pc"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("tda_root")
    mp = pytest.MonkeyPatch()
    mp.setenv("TDA_ROOT", str(root))
    generate_subsets(get_task("digits3"), [2], root / "data" / "digits3", "")
    cfg = parse_experiment(EXPERIMENT)
    train_seeds(cfg, [load_seeds(root)[0]])
    yield cfg
    mp.undo()


SCRIPTS = [("run_loo", ("loo",), []), ("run_ats", ("ats",), []), ("run_if", ("if",), []),
           ("run_gd_and_gc", ("gd", "gc"), [])]


@pytest.mark.parametrize("name,methods,extra", SCRIPTS)
def test_script_writes_scores_and_skips_on_rerun(experiment, capsys, name, methods, extra):
    cfg = experiment
    seed = load_seeds(cfg.root)[0]
    main = script(name).main
    main(["--experiment", EXPERIMENT, "--seed_id", "0", "--device", "cpu", *extra])
    out = capsys.readouterr().out
    train = torch.load(cfg.train_subset_pt, weights_only=True)
    test = torch.load(cfg.test_subset_pt, weights_only=True)
    mtimes = []
    for m in methods:
        path = cfg.scores_path(m, seed)
        assert str(cfg.scores_dir / m) in out
        d = torch.load(path, weights_only=True)
        assert set(d) == {"scores", "ckpt_epochs", "train_indices", "test_indices", "settings", "provenance"}
        assert d["scores"].dtype == torch.float32 and d["scores"].shape == (5, 6, len(test["labels"]))
        assert torch.isfinite(d["scores"]).all() and d["scores"].abs().sum() > 0
        assert d["ckpt_epochs"].tolist() == cfg.ckpt_epochs
        assert torch.equal(d["train_indices"], train["indices"]) and torch.equal(d["test_indices"], test["indices"])
        assert d["settings"]["method"] == m and d["settings"]["seed"] == seed
        mtimes.append(path.stat().st_mtime_ns)
    main(["--experiment", EXPERIMENT, "--seed_id", "0"])
    assert "already done" in capsys.readouterr().out
    assert [cfg.scores_path(m, seed).stat().st_mtime_ns for m in methods] == mtimes
    with pytest.raises(TDAError, match="seed_id"):
        main(["--experiment", EXPERIMENT, "--seed_id", "10"])


def test_loo_protocols_and_if_cg_through_the_scripts(experiment, capsys):
    cfg = experiment
    seed = load_seeds(cfg.root)[0]
    loo = script("run_loo").main
    loo(["--experiment", EXPERIMENT, "--seed_id", "0"])
    paper = torch.load(cfg.scores_path("loo", seed), weights_only=True)
    assert paper["settings"]["protocol"] == "paper"
    loo(["--experiment", EXPERIMENT, "--seed_id", "0", "--protocol", "continue"])  # the CNNs' paper protocol
    cont = torch.load(cfg.scores_path("loo", seed), weights_only=True)
    assert cont["settings"]["protocol"] == "continue" and torch.equal(cont["scores"], paper["scores"])
    loo(["--experiment", EXPERIMENT, "--seed_id", "0", "--protocol", "paper"])
    capsys.readouterr()
    loo(["--experiment", EXPERIMENT, "--seed_id", "0", "--protocol", "scratch"])
    out = capsys.readouterr().out  # a file computed with another protocol is recomputed, saying why
    assert f"recomputing loo seed {seed}: settings changed (protocol 'paper' -> 'scratch')" in out
    loo(["--experiment", EXPERIMENT, "--seed_id", "0", "--protocol", "scratch", "--chunk", "3", "--overwrite"])
    s = torch.load(cfg.scores_path("loo", seed), weights_only=True)["settings"]
    assert s["protocol"] == "scratch" and s["members"] == 7
    # the control member retraces training, so it lands on the saved checkpoints up to float32 rounding (about
    # 3e-6 measured on the CPU: the ensemble sums the weighted per-sample losses in another order than training)
    assert max(s["control_vs_checkpoint_max_abs_test_loss_diff"]) < 1e-5 and s["control_matches_checkpoints"]
    script("run_if").main(["--experiment", EXPERIMENT, "--seed_id", "0", "--solver", "cg", "--max_iter", "3",
                            "--overwrite"])
    s = torch.load(cfg.scores_path("if", seed), weights_only=True)["settings"]
    assert s["solver"] == "cg" and s["damping"] == cfg.weight_decay and len(s["max_rel_residual"]) == 5


def test_missing_inputs_name_the_script_to_run(experiment, capsys):
    with pytest.raises(TDAError, match="run_cnn_training.py"):  # seed 1 was never trained
        script("run_ats").main(["--experiment", EXPERIMENT, "--seed_id", "1"])
    with pytest.raises(TDAError, match="run_subset_generation.py"):
        script("run_gd_and_gc").main(["--experiment", "cnn_digits3_3pc", "--seed_id", "0"])
    with pytest.raises(SystemExit) as e:  # through cli.run: one line, exit code 2, no traceback
        cli.run(script("run_if").main, ["--experiment", EXPERIMENT, "--seed_id", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err  # (progress bars also write to stderr)
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error:") and "run_cnn_training.py" in last
