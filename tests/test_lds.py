"""The linear datamodeling score: the masked ensemble against plain per-subset retrainings, the statistic against
plain scipy loops, a closed-form case (regularised logistic regression solved by Newton's method) where exact
influence scores must reach an LDS near 1 and random ones near 0, and run_lds.py end to end.

float64 throughout for the ensembles, so differences measure the algorithms (1e-7 relative to the reference).
"""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps
from torch import nn

from helpers import close, make_tiny_root, script
from tda.backends import get_backend
from tda.config import TDAError, parse_experiment
from tda.engine.functional import split_params
from tda.lds.ensemble import margins, masked_ensemble, subset_masks, subset_size
from tda.lds.score import lds_per_test, lds_variants, pair_contributions, pair_effects
from tda.models import CNN

DT = torch.float64
LR, WD = 1e-2, 5e-3


# ---------------------------------------------------------------- subsets
def test_subsets_are_seeded_and_of_fixed_size():
    m = subset_masks(11, 30, 0.5, seed=3)
    assert m.dtype == torch.bool and m.shape == (30, 11) and (m.sum(1) == round(0.5 * 11)).all()
    assert torch.equal(m, subset_masks(11, 30, 0.5, seed=3)) and not torch.equal(m, subset_masks(11, 30, 0.5, seed=4))
    assert len({tuple(r.tolist()) for r in m}) > 25  # random subsets, not one repeated
    assert subset_size(3, 0.01) == 1 and subset_size(3, 0.99) == 2  # something in, something out
    with pytest.raises(ValueError, match="alpha"):
        subset_size(10, 1.0)


# ---------------------------------------------------------------- masked ensemble vs plain retraining
class MLP(nn.Module):
    """The other model: a small MLP through the generic torch.func engine."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(28 * 28, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def plain_subset_retraining(model, x, y, xt, yt, batches, mask, snapshots, lr=LR):
    """One retraining written plainly: a copy of the model, torch.optim.Adam, loss.backward(), samples outside the
    subset weighted 0 (each batch mean still divides by the batch size); test loss and log-odds margin after
    `snapshots`."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=WD)
    w = mask.to(DT)
    out = []
    for epoch, ep in enumerate(batches):
        for idx in ep:
            opt.zero_grad()
            ((w[idx] * F.cross_entropy(model(x[idx]), y[idx], reduction="none")).sum() / len(idx)).backward()
            opt.step()
        if epoch in snapshots:
            with torch.no_grad():
                logits = model(xt)
                p = F.softmax(logits, 1)[torch.arange(len(yt)), yt]
                out.append(torch.stack([F.cross_entropy(logits, yt, reduction="none"), torch.log(p / (1 - p))]))
    return torch.stack(out)  # [C, 2, M]


@pytest.mark.parametrize("net,vectorize", [("cnn", None), ("cnn", True), ("mlp", False), ("mlp", True)])
def test_masked_ensemble_equals_plain_retraining_per_subset(net, vectorize):
    torch.manual_seed(2)
    model = (CNN() if net == "cnn" else MLP()).to(DT).eval()
    g = torch.Generator().manual_seed(5)
    x, xt = torch.rand(7, 1, 28, 28, generator=g, dtype=DT), torch.rand(4, 1, 28, 28, generator=g, dtype=DT)
    y, yt = torch.randint(0, 10, (7,), generator=g), torch.randint(0, 10, (4,), generator=g)
    batches = [[torch.tensor([3, 0, 6]), torch.tensor([4, 1, 5]), torch.tensor([2])],
               [torch.tensor([1, 2, 0]), torch.tensor([6, 4, 3]), torch.tensor([5])], [torch.tensor([0, 1, 2, 3, 4, 5, 6])]]
    masks = subset_masks(7, 5, 0.5, seed=1)
    params, frozen = split_params(model)
    snaps = [1, 2]
    out = masked_ensemble(model, params, frozen, x, y, xt, yt, batches, LR, WD, masks, snaps, chunk=2,
                          vectorize=vectorize)  # 6 members in chunks of 2
    ref = torch.stack([plain_subset_retraining(model, x, y, xt, yt, batches, m, snaps) for m in masks], dim=1)
    full = plain_subset_retraining(model, x, y, xt, yt, batches, torch.ones(7, dtype=torch.bool), snaps)
    close(out.loss, ref[:, :, 0])
    close(out.margin, ref[:, :, 1])
    close(out.control_loss, full[:, 0])
    close(out.control_margin, full[:, 1])
    # the subsets matter: retrainings on different subsets end far apart
    assert (ref[-1, :, 0] - ref[-1, :1, 0]).abs().max() > 1e-2


def test_margins_are_the_log_odds_of_the_correct_class():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.5, -1.0, 3.0]], dtype=DT)
    p = F.softmax(logits, 1)[[0, 1], [1, 0]]
    close(margins(logits, torch.tensor([1, 0])), torch.log(p / (1 - p)), 1e-12)


# ---------------------------------------------------------------- the statistic against plain loops
def test_lds_and_its_pieces_equal_plain_scipy_loops():
    rng = np.random.default_rng(0)
    n, m, s = 9, 6, 25
    masks = subset_masks(n, s, 0.5, seed=0).numpy()
    tau, obs = rng.normal(size=(n, m)), rng.normal(size=(s, m))
    obs[:, 0] += 3 * masks.astype(float) @ tau[:, 0]  # one test sample with a strong signal
    for sign in (1, -1):
        ref = [sps.spearmanr([sign * sum(tau[j, i] for j in range(n) if masks[k, j]) for k in range(s)],
                             obs[:, i])[0] for i in range(m)]
        np.testing.assert_allclose(lds_per_test(tau, masks, obs, sign), ref, rtol=1e-12)
        c = pair_contributions(tau, masks, obs, sign)
        pearson = [sps.pearsonr(sign * masks.astype(float) @ tau[:, i], obs[:, i])[0] for i in range(m)]
        np.testing.assert_allclose(c.sum(0), pearson, rtol=1e-10)  # the contributions add up to Pearson's LDS
    slopes = [[sps.linregress(masks[:, j].astype(float), obs[:, i]).slope for i in range(m)] for j in range(n)]
    np.testing.assert_allclose(pair_effects(masks, obs), slopes, rtol=1e-10)


def test_lds_variants_equal_a_plain_loop_over_seeds_and_checkpoints():
    rng = np.random.default_rng(1)
    r, c, n, m, s, k = 3, 4, 7, 5, 12, 3
    masks = subset_masks(n, s, 0.5, seed=2).numpy()
    tau, obs = rng.normal(size=(r, c, n, m)), rng.normal(size=(r, c, s, m))

    def lds(t, o):  # mean over test samples of the Spearman correlation, written plainly
        return [sps.spearmanr(masks.astype(float) @ t[:, i], o[:, i])[0] for i in range(m)]

    got = {(v.scores, v.target): v for v in lds_variants(tau, obs, masks, 1, k)}
    last, avg = tau[:, -1], tau[:, -k:].mean(1)
    o_last, o_avg = obs[:, -1], obs[:, -k:].mean(1)
    want = {("checkpoint", "seed"): np.mean([lds(last[q], o_last[q]) for q in range(r)], 0),
            ("checkpoint", "posterior"): np.mean([lds(last[q], o_last.mean(0)) for q in range(r)], 0),
            ("checkpoints", "seed"): np.mean([lds(avg[q], o_avg[q]) for q in range(r)], 0),
            ("checkpoints", "posterior"): np.mean([lds(avg[q], o_avg.mean(0)) for q in range(r)], 0),
            ("posterior_mean", "seed"): np.mean([lds(avg.mean(0), o_avg[q]) for q in range(r)], 0),
            ("posterior_mean", "posterior"): lds(avg.mean(0), o_avg.mean(0))}
    assert set(got) == set(want)
    for key, w in want.items():
        np.testing.assert_allclose(got[key].per_test, w, rtol=1e-12, err_msg=str(key))
    per_seed = [np.mean(lds(avg[q], o_avg[q])) for q in range(r)]
    np.testing.assert_allclose(got[("checkpoints", "seed")].per_seed, per_seed, rtol=1e-12)
    assert got[("checkpoint", "seed")].k == 1 and got[("checkpoints", "seed")].k == k


# ---------------------------------------------------------------- closed form: logistic regression
N, M, D, C, LAM = 40, 30, 5, 3, 0.05


def _logistic_data():
    g = torch.Generator().manual_seed(0)
    x, xt, w0 = (torch.randn(N, D, generator=g, dtype=DT), torch.randn(M, D, generator=g, dtype=DT),
                 torch.randn(D, C, generator=g, dtype=DT))
    y = torch.multinomial(F.softmax(x @ w0, 1), 1, generator=g).squeeze(1)
    yt = torch.multinomial(F.softmax(xt @ w0, 1), 1, generator=g).squeeze(1)
    return x, y, xt, yt


def _features(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=DT)], 1)


def newton_fit(x, y, weights):
    """argmin (1/N) sum_j w_j CE_j(theta) + LAM/2 |theta|^2 by Newton's method with the closed-form gradient and
    Hessian of softmax regression: the exact retraining on a subset; theta [D + 1, C] (last row the bias)."""
    xa, onehot, theta = _features(x), F.one_hot(y, C).to(DT), torch.zeros(D + 1, C, dtype=DT)
    for _ in range(25):
        p = F.softmax(xa @ theta, 1)
        grad = xa.T @ (weights[:, None] * (p - onehot)) / N + LAM * theta
        hess = LAM * torch.eye((D + 1) * C, dtype=DT)
        for n in range(N):
            hess += weights[n] / N * torch.kron(torch.outer(xa[n], xa[n]), torch.diag(p[n]) - torch.outer(p[n], p[n]))
        theta = theta - torch.linalg.solve(hess, grad.reshape(-1)).reshape(D + 1, C)
    return theta, hess


def _outcomes(theta, xt, yt):
    logits = _features(xt) @ theta
    return F.cross_entropy(logits, yt, reduction="none"), margins(logits, yt)


@pytest.fixture(scope="module")
def logistic():
    x, y, xt, yt = _logistic_data()
    masks = subset_masks(N, 40, 0.5, seed=0)
    model = nn.Linear(D, C).to(DT).eval()
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    params, frozen = split_params(model)
    epochs = 800  # full batch, Adam with a decaying learning rate: converged to ~1e-13
    out = masked_ensemble(model, params, frozen, x, y, xt, yt, [[torch.arange(N)]] * epochs,
                          lambda s: 0.05 * 0.995 ** s, LAM, masks, [epochs - 1], vectorize=True)
    exact = [_outcomes(newton_fit(x, y, mk.to(DT))[0], xt, yt) for mk in masks]
    theta, hess = newton_fit(x, y, torch.ones(N, dtype=DT))
    return x, y, xt, yt, masks, out, exact, theta, hess


def test_the_masked_ensemble_converges_to_the_exact_subset_fits(logistic):
    x, y, xt, yt, masks, out, exact, theta, _ = logistic
    close(out.loss[0], torch.stack([e[0] for e in exact]), 1e-9)
    close(out.margin[0], torch.stack([e[1] for e in exact]), 1e-9)
    close(out.control_loss[0], _outcomes(theta, xt, yt)[0], 1e-9)


def _influence(x, y, xt, yt, theta, hess):
    """Exact influence of up-weighting j on the test loss of i at the full-data optimum, [N, M] (IF's sign: < 0
    helps): d L_i / d w_j = -(1/N) g_i^T H^-1 g_j, H the Hessian of the regularised objective."""
    def grads(inputs, labels):
        p = F.softmax(_features(inputs) @ theta, 1)
        return torch.einsum("nd,nc->ndc", _features(inputs), p - F.one_hot(labels, C).to(DT)).reshape(len(labels), -1)
    return (-(grads(x, y) @ torch.linalg.solve(hess, grads(xt, yt).T)) / N).numpy()


def test_exact_influence_has_an_lds_near_one_and_random_scores_near_zero(logistic):
    x, y, xt, yt, masks, out, exact, theta, hess = logistic
    infl, mk = _influence(x, y, xt, yt, theta, hess), masks.numpy()
    loss, margin = -out.loss[0].numpy(), out.margin[0].numpy()  # observed help
    lds_loss = np.nanmean(lds_per_test(infl, mk, loss, -1))
    assert lds_loss > 0.9
    assert np.nanmean(lds_per_test(infl, mk, margin, -1)) > 0.85
    assert np.nanmean(lds_per_test(infl, mk, loss, +1)) == pytest.approx(-lds_loss)  # the wrong sign: near -1
    rng = np.random.default_rng(7)
    random = [np.nanmean(lds_per_test(rng.normal(size=(N, M)), mk, loss, 1)) for _ in range(5)]
    assert max(abs(r) for r in random) < 0.15
    # the LDS of the plain loop's outcomes (Newton per subset), by scipy per test sample, is the ensemble's
    plain = [sps.spearmanr([-sum(infl[j, i] for j in range(N) if mk[s, j]) for s in range(len(mk))],
                           [-e[0][i].item() for e in exact])[0] for i in range(M)]
    np.testing.assert_allclose(lds_per_test(infl, mk, loss, -1), plain, rtol=1e-9)


# ---------------------------------------------------------------- run_lds.py
EXPERIMENT = "cnn_digits3_12pc"  # N = 36: two batches an epoch, so the batch order matters


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_tiny_root(tmp_path_factory.mktemp("lds"), n_per_class=12, test_stride=30)
    mp = pytest.MonkeyPatch()
    mp.setenv("TDA_ROOT", str(root))
    script("run_cnn_training").main(["--experiment", EXPERIMENT, "--seed_id", "all", "--workers", "1"])
    script("run_gd_and_gc").main(["--experiment", EXPERIMENT, "--seed_id", "all", "--workers", "1"])
    yield root
    mp.undo()


def test_run_lds_retrains_each_seed_on_its_subsets_and_skips_finished_ones(tiny, capsys, monkeypatch):
    monkeypatch.setenv("TDA_ROOT", str(tiny))
    run = script("run_lds").main
    run(["--experiment", EXPERIMENT, "--seed_id", "all", "--subsets", "5", "--workers", "1"])
    cfg = parse_experiment(EXPERIMENT)
    masks = torch.load(cfg.scores_dir / "lds" / "subsets.pt", weights_only=True)
    assert masks["masks"].shape == (5, 36) and (masks["masks"].sum(1) == 18).all()
    assert masks["record"]["subsets"] == 5 and masks["record"]["alpha"] == 0.5
    seed = 446
    d = torch.load(cfg.scores_dir / "lds" / f"{seed}.pt", weights_only=True)
    assert d["loss"].shape == d["margin"].shape == (5, 5, len(d["test_indices"]))
    assert d["settings"]["control_matches_checkpoints"] and d["provenance"]["settings"]["subsets"] == 5
    # one subset's outcome against a plain retraining of the seed from its initialisation on its own batches
    backend = get_backend(cfg)
    model, batches = backend.initial(seed, 36)
    from tda import io
    train, test = io.load_subsets(cfg)
    k = 2
    ref = plain_subset_retraining(model.to(DT).eval(), train["images"].to(DT), train["labels"], test["images"].to(DT),
                                  test["labels"], batches, masks["masks"][k], cfg.ckpt_epochs, cfg.lr)
    close(d["loss"][:, k].double(), ref[:, 0], 1e-4)  # float32 run against a float64 loop
    close(d["margin"][:, k].double(), ref[:, 1], 1e-4)
    out = capsys.readouterr().out
    assert "LDS table:" in out and "GD" in out
    table = __import__("pandas").read_csv(cfg.results_dir / "lds.csv")
    assert set(table["method"]) == {"GD", "GC"} and len(table) == 2 * 2 * 6
    run(["--experiment", EXPERIMENT, "--seed_id", "all", "--subsets", "5", "--workers", "1"])
    out = capsys.readouterr().out
    assert out.count("already done, kept") == 3 and "up to date" in out
    run(["--experiment", EXPERIMENT, "--seed_id", "0", "--subsets", "4", "--workers", "1"])
    out = capsys.readouterr().out
    assert "recomputing lds seed 446: settings changed" in out and "--evaluate" in out
    assert torch.load(cfg.scores_dir / "lds" / "subsets.pt", weights_only=True)["masks"].shape == (4, 36)


def test_external_scores_and_their_sign(tiny, capsys, monkeypatch):
    import pandas as pd
    monkeypatch.setenv("TDA_ROOT", str(tiny))
    run = script("run_lds").main
    run(["--experiment", EXPERIMENT, "--seed_id", "all", "--subsets", "6", "--workers", "1"])
    cfg = parse_experiment(EXPERIMENT)
    ext = tiny / "ext_gd"
    shutil.copytree(cfg.scores_dir / "gd", ext)  # our own GD scores, brought in as external ones
    run(["--experiment", EXPERIMENT, "--evaluate", "--scores", str(ext), str(ext), "--method_name", "gdx", "gdneg",
         "--sign", "1", "-1"])
    t = pd.read_csv(cfg.results_dir / "lds.csv").set_index(["method", "outcome", "scores", "target"]).sort_index()
    assert np.allclose(t.loc["gdx", "lds"], t.loc["GD", "lds"])
    assert np.allclose(t.loc["gdneg", "lds"], -t.loc["GD", "lds"])
    from tda.lds.report import report_section
    section = report_section(cfg)
    assert "## Linear datamodeling score" in section and "| gdneg |" in section and "![LDS](lds.png)" in section
    assert (cfg.results_dir / "lds.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,message", [
    (["--seed_id", "all", "--alpha", "1.5"], "argument --alpha: must be > 0 and <= 0.99"),
    (["--seed_id", "all", "--subsets", "2"], "argument --subsets: must be >= 3"),
    ([], "give --seed_id"),
    (["--evaluate", "--scores", "x.npy"], "one --method_name"),
])
def test_bad_arguments_are_one_line_errors(tiny, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("TDA_ROOT", str(tiny))
    with pytest.raises(SystemExit) as e:
        script("run_lds").main(["--experiment", EXPERIMENT, *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluating_without_ground_truth_names_the_command(tmp_path, monkeypatch):
    root = make_tiny_root(tmp_path / "r", n_per_class=12)
    monkeypatch.setenv("TDA_ROOT", str(root))
    with pytest.raises(TDAError, match=f"run `python run_lds.py --experiment {EXPERIMENT} --seed_id all`"):
        script("run_lds").main(["--experiment", EXPERIMENT, "--evaluate"])


# ---------------------------------------------------------------- in the grid: locally and on Slurm
def test_the_grid_runs_lds_after_the_methods_when_asked(tmp_path):
    from tda.launch import grid
    from tda.launch.__main__ import parse_args
    from tda.launch.plan import SEED, plan, steps
    from tda.pipeline import parse_args as local_args, steps as local_steps
    root = make_tiny_root(tmp_path / "r")
    cfg = parse_experiment("cnn_digits3_2pc", root)
    assert all(j.step not in ("lds", "lds_table") for j in plan([cfg.name], 3, root))  # not unless asked
    _, choice, _ = local_args(["cnn_digits3_2pc", "--lds", "--methods", "gd"])
    assert choice.lds == 50 and "LDS on 50 subsets" in choice.describe()
    jobs = {j.step: j for j in plan([cfg.name], 3, root, choice=grid.MethodChoice(("gd_gc", "if"), lds=7))}
    truth, table = jobs["lds"], jobs["lds_table"]
    assert truth.argv == ("run_lds.py", "--experiment", cfg.name, "--seed_id", SEED, "--subsets", "7")
    assert truth.n_tasks == 3 and truth.after == (jobs["train"].key,) and truth.gpu
    assert set(table.after) == {truth.key, jobs["gd_gc"].key, jobs["if"].key} and table.argv[-1] == "--evaluate"
    assert table.key in jobs["summary"].after
    order = [s[1:] for s in local_steps(cfg, choice=grid.MethodChoice(("gd_gc",), lds=7))]
    ran = [" ".join([script, *args]) for script, args in order]
    assert ran.index(f"run_lds.py --experiment {cfg.name} --seed_id all --subsets 7") > ran.index(
        f"run_gd_and_gc.py --experiment {cfg.name} --seed_id all")
    assert "lds" in steps() and "lds_table" in steps()
    args, opts, _ = parse_args(["cnn_digits3_2pc", "--lds", "9", "--time", "lds=2:00:00", "--dry-run"])
    assert args.choice.lds == 9 and opts.resources["time"]["lds"] == "2:00:00"
