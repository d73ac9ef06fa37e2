"""The four TDA entry scripts end to end on a tiny real experiment (digits3, 2 per class, one trained seed)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from helpers import autograd_grads, autograd_hvp, autograd_lissa, close, script
from tda import cli, io
from tda.config import TDAError, get_task, parse_experiment
from tda.data import generate_subsets
from tda.models import CNN
from tda.seeds import load_seeds
from tda.training import train_seeds

EXPERIMENT = "cnn_digits3_2pc"
COLS = list(range(0, 300, 37))  # the test samples the plain references are computed on (of 300)

pytestmark = pytest.mark.xdist_group("methods_scripts")  # one process: the tests share the trained experiment


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


def checkpoint_model(cfg, seed: int, c: int) -> CNN:
    """Checkpoint c of a seed as a plain CNN in eval mode (not through the repo's backend)."""
    model = CNN(1, 10)
    model.load_state_dict(io.load_checkpoint(cfg, seed, cfg.ckpt_epochs[c])["state_dict"])
    return model.eval()


def plain_gd_gc(cfg, seed, c, x, y, xt, yt) -> dict:
    model = checkpoint_model(cfg, seed, c)
    g_tr, g_te = autograd_grads(model, x, y), autograd_grads(model, xt, yt)
    return {"gd": g_tr @ g_te.T, "gc": (g_tr @ g_te.T) / (g_tr.norm(dim=1)[:, None] * g_te.norm(dim=1)[None])}


def plain_ats(cfg, seed, c, x, y, xt, yt) -> dict:
    """One torch.optim.Adam step on z_j from a copy of the checkpoint, per training sample j."""
    model = checkpoint_model(cfg, seed, c)
    with torch.no_grad():
        base = F.cross_entropy(model(xt), yt, reduction="none")
    out = []
    for j in range(len(y)):
        m = copy.deepcopy(model)
        opt = torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        F.cross_entropy(m(x[j:j + 1]), y[j:j + 1]).backward()
        opt.step()
        with torch.no_grad():
            out.append(F.cross_entropy(m(xt), yt, reduction="none") - base)
    return {"ats": torch.stack(out)}


def plain_lissa(cfg, seed, c, x, y, xt, yt) -> dict:
    """The FastIF recursion per test sample over the unshuffled training batches, H_t by double backward."""
    return {"if": autograd_lissa(checkpoint_model(cfg, seed, c), x, y, xt, yt, cfg)}


def plain_loo_paper(cfg, seed, c, x, y, xt, yt, js=range(6)) -> dict:
    """The CNNs' paper protocol written out: from checkpoint c, torch.manual_seed(seed), a shuffled DataLoader per
    epoch for all epochs, a fresh torch.optim.Adam, sample j's loss zeroed; minus the checkpoint's test losses."""
    base = checkpoint_model(cfg, seed, c)
    with torch.no_grad():
        theta = F.cross_entropy(base(xt), yt, reduction="none")
    torch.manual_seed(seed)
    loader = DataLoader(list(range(len(y))), batch_size=cfg.batch_size, shuffle=True)
    epochs = [[b.clone() for b in loader] for _ in range(cfg.epochs)]
    out = []
    for j in js:
        m = copy.deepcopy(base)
        opt = torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        w = torch.ones(len(y))
        w[j] = 0
        for batches in epochs:
            for idx in batches:
                opt.zero_grad()
                ((w[idx] * F.cross_entropy(m(x[idx]), y[idx], reduction="none")).sum() / len(idx)).backward()
                opt.step()
        with torch.no_grad():
            out.append(F.cross_entropy(m(xt), yt, reduction="none") - theta)
    return {"loo": torch.stack(out)}


#: (script, outputs, extra arguments, the plain reference, its tolerance relative to the reference's largest entry)
SCRIPTS = [("run_loo", ("loo",), [], plain_loo_paper, 2e-3), ("run_ats", ("ats",), [], plain_ats, 1e-4),
           ("run_if", ("if",), [], plain_lissa, 1e-4), ("run_gd_and_gc", ("gd", "gc"), [], plain_gd_gc, 1e-4)]


@pytest.mark.parametrize("name,methods,extra,plain,rtol", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_script_writes_scores_and_skips_on_rerun(experiment, capsys, name, methods, extra, plain, rtol):
    cfg = experiment
    seed = load_seeds(cfg.root)[0]
    main = script(name).main
    main(["--experiment", EXPERIMENT, "--seed_id", "0", "--device", "cpu", *extra])
    out = capsys.readouterr().out
    train = torch.load(cfg.train_subset_pt, weights_only=True)
    test = torch.load(cfg.test_subset_pt, weights_only=True)
    x, y, xt, yt = train["images"], train["labels"], test["images"][COLS], test["labels"][COLS]
    mtimes = []
    for m in methods:
        path = cfg.scores_path(m, seed)
        assert str(cfg.scores_dir / m) in out
        d = torch.load(path, weights_only=True)
        assert set(d) == {"scores", "ckpt_epochs", "train_indices", "test_indices", "settings", "provenance"}
        assert d["scores"].dtype == torch.float32 and d["scores"].shape == (5, 6, len(test["labels"]))
        assert d["ckpt_epochs"].tolist() == cfg.ckpt_epochs
        assert torch.equal(d["train_indices"], train["indices"]) and torch.equal(d["test_indices"], test["indices"])
        assert d["settings"]["method"] == m and d["settings"]["seed"] == seed
        mtimes.append(path.stat().st_mtime_ns)
    for c in (0, 4):  # the first and the last checkpoint against the method written out as a plain loop
        ref = plain(cfg, seed, c, x, y, xt, yt)
        for m in methods:
            assert ref[m].abs().max() > 1e-6, m  # not trivially zero
            close(torch.load(cfg.scores_path(m, seed), weights_only=True)["scores"][c][:, COLS], ref[m], rtol)
    main(["--experiment", EXPERIMENT, "--seed_id", "0"])
    assert "already done" in capsys.readouterr().out
    assert [cfg.scores_path(m, seed).stat().st_mtime_ns for m in methods] == mtimes
    with pytest.raises(TDAError, match="seed_id"):
        main(["--experiment", EXPERIMENT, "--seed_id", "10"])


def plain_loo_scratch(cfg, seed, x, y, xt, yt, js) -> torch.Tensor:
    """The scratch protocol written out: torch.manual_seed(seed), CNN(1), a shuffled DataLoader per epoch, plain
    torch.optim.Adam training with and without sample j; the test-loss differences at the checkpoint epochs."""
    torch.manual_seed(seed)
    init = CNN(1, 10)
    loader = DataLoader(list(range(len(y))), batch_size=cfg.batch_size, shuffle=True)
    epochs = [[b.clone() for b in loader] for _ in range(cfg.epochs)]

    def train(remove):
        m = copy.deepcopy(init)
        opt = torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        w = torch.ones(len(y))
        if remove is not None:
            w[remove] = 0
        out = []
        for e, batches in enumerate(epochs):
            for idx in batches:
                opt.zero_grad()
                ((w[idx] * F.cross_entropy(m(x[idx]), y[idx], reduction="none")).sum() / len(idx)).backward()
                opt.step()
            if e in cfg.ckpt_epochs:
                with torch.no_grad():
                    out.append(F.cross_entropy(m.eval()(xt), yt, reduction="none"))
                m.train()
        return torch.stack(out)
    full = train(None)
    return torch.stack([train(j) - full for j in js], dim=1)


def plain_cg(cfg, seed, c, x, y, xt, yt, damping: float, tol: float, max_iter: int) -> torch.Tensor:
    """IF by conjugate gradient written out, per training gradient (N <= M: the system is solved for those):
    (H + damping I) s_j = g_j with H v by double backward, stopping at ||r|| <= tol ||g_j|| or max_iter, keeping
    the iterate of smallest residual; tau_ji = -s_j . g_i."""
    model = checkpoint_model(cfg, seed, c)
    g_tr, g_te = autograd_grads(model, x, y), autograd_grads(model, xt, yt)
    solutions = []
    for b in g_tr:
        sol, r = torch.zeros_like(b), b.clone()
        p, rs = r.clone(), float(r @ r)
        best, best_rs = sol.clone(), rs
        for _ in range(max_iter):
            if rs ** 0.5 <= tol * float(b.norm()):
                break
            ap = autograd_hvp(model, x, y, p) + damping * p
            alpha = rs / float(p @ ap)
            sol, r = sol + alpha * p, r - alpha * ap
            rs_new = float(r @ r)
            if rs_new < best_rs:
                best, best_rs = sol.clone(), rs_new
            p, rs = r + (rs_new / rs) * p, rs_new
        solutions.append(best)
    return -(torch.stack(solutions) @ g_te.T)


def test_loo_protocols_and_if_cg_through_the_scripts(experiment, capsys):
    cfg = experiment
    seed = load_seeds(cfg.root)[0]
    train = torch.load(cfg.train_subset_pt, weights_only=True)
    test = torch.load(cfg.test_subset_pt, weights_only=True)
    x, y, xt, yt = train["images"], train["labels"], test["images"][COLS], test["labels"][COLS]
    loo = script("run_loo").main
    loo(["--experiment", EXPERIMENT, "--seed_id", "0"])
    paper = torch.load(cfg.scores_path("loo", seed), weights_only=True)
    assert paper["settings"]["protocol"] == "paper"
    loo(["--experiment", EXPERIMENT, "--seed_id", "0", "--protocol", "continue"])  # the CNNs' paper protocol
    cont = torch.load(cfg.scores_path("loo", seed), weights_only=True)
    assert cont["settings"]["protocol"] == "continue" and torch.equal(cont["scores"], paper["scores"])
    ref = plain_loo_paper(cfg, seed, 2, x, y, xt, yt, js=(1, 4))  # continue, written out (the middle checkpoint)
    close(cont["scores"][2][[1, 4]][:, COLS], ref["loo"], 2e-3)
    capsys.readouterr()
    loo(["--experiment", EXPERIMENT, "--seed_id", "0", "--protocol", "scratch", "--chunk", "3"])
    out = capsys.readouterr().out  # a file computed with another protocol is recomputed, saying why
    assert f"recomputing loo seed {seed}: settings changed (protocol 'continue' -> 'scratch')" in out
    d = torch.load(cfg.scores_path("loo", seed), weights_only=True)
    s = d["settings"]
    assert s["protocol"] == "scratch" and s["members"] == 7
    # the control member retraces training, so it lands on the saved checkpoints up to float32 rounding (about
    # 3e-6 measured on the CPU: the ensemble sums the weighted per-sample losses in another order than training)
    assert max(s["control_vs_checkpoint_max_abs_test_loss_diff"]) < 1e-5 and s["control_matches_checkpoints"]
    ref = plain_loo_scratch(cfg, seed, x, y, xt, yt, js=(0, 5))
    assert ref.abs().max() > 1e-4
    close(d["scores"][:, [0, 5]][:, :, COLS], ref, 2e-3)
    script("run_if").main(["--experiment", EXPERIMENT, "--seed_id", "0", "--solver", "cg", "--max_iter", "3",
                            "--overwrite"])
    d = torch.load(cfg.scores_path("if", seed), weights_only=True)
    s = d["settings"]
    assert s["solver"] == "cg" and s["damping"] == cfg.weight_decay and len(s["max_rel_residual"]) == 5
    assert s["iterations"] == [3] * 5 and s["solved_for"] == "train"
    for c in (0, 4):
        ref = plain_cg(cfg, seed, c, x, y, xt, yt, cfg.weight_decay, s["tol"], 3)
        close(d["scores"][c][:, COLS], ref, 1e-3)


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
