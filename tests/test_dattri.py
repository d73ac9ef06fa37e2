"""The optional extra (req-extra.txt): dattri's TRAK and TracIn as run_dattri.py runs them, each checked against its
definition written out here (plain autograd per sample, the projection rebuilt from its seed), and a singular TRAK
refused. Skipped without dattri, unless TDA_REQUIRE_DATTRI=1 (CI), where a missing dattri fails."""
from __future__ import annotations

import math
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import make_tiny_root, run_script, script
from tda.config import TDAError, parse_experiment
from tda.models import CNN

EXP = "cnn_digits3_2pc"  # N = 6 training images, 20 test images
SEEDS = (446, 724)
ARGS = ["--experiment", EXP, "--seed_id", "all", "--workers", "1"]
pytestmark = pytest.mark.xdist_group("dattri")  # one trained root for the module: its tests on one worker


def require_dattri() -> None:
    try:
        import dattri  # noqa: F401
    except ImportError:
        if os.environ.get("TDA_REQUIRE_DATTRI") == "1":
            pytest.fail("dattri is not installed and TDA_REQUIRE_DATTRI=1: pip install -r req-extra.txt")
        pytest.skip("dattri (the optional extra, req-extra.txt) is not installed")


def test_a_missing_dattri_skips_here_and_fails_where_it_is_required(monkeypatch):
    monkeypatch.setitem(sys.modules, "dattri", None)  # `import dattri` raises ImportError

    def outcome() -> BaseException | None:
        try:
            require_dattri()
        except BaseException as e:  # noqa: BLE001 - skip and fail are BaseExceptions; a wrong one must not escape
            return e
        return None

    monkeypatch.delenv("TDA_REQUIRE_DATTRI", raising=False)
    assert isinstance(outcome(), pytest.skip.Exception)
    monkeypatch.setenv("TDA_REQUIRE_DATTRI", "1")
    failed = outcome()
    assert isinstance(failed, pytest.fail.Exception) and "TDA_REQUIRE_DATTRI=1" in str(failed)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The tiny experiment with two seeds trained and their Grad-Dot scores, as TDA_ROOT for the module."""
    require_dattri()
    root = make_tiny_root(tmp_path_factory.mktemp("dattri") / "root", seeds=SEEDS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TDA_ROOT", str(root))
        script("run_cnn_training").main(ARGS)
        script("run_gd_and_gc").main(ARGS)
        yield root


def saved(root, output: str, seed: int) -> dict:
    return torch.load(root / "tda_scores" / EXP / output / f"{seed}.pt", weights_only=True)


# ---------------------------------------------------------------- the definitions, written out
def float64_model(root, seed: int, epoch: int) -> CNN:
    model = CNN(1, 10).double()
    cfg = parse_experiment(EXP, root)
    state = torch.load(cfg.ckpt_path(seed, epoch), weights_only=True)["state_dict"]
    model.load_state_dict({k: v.double() for k, v in state.items()})
    return model.eval()


def data(root) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from tda import io
    train, test = io.load_subsets(parse_experiment(EXP, root))
    return train["images"].double(), train["labels"], test["images"].double(), test["labels"]


def per_sample(model, x, y, f) -> torch.Tensor:
    """Gradient of f(logits [C], label) over all parameters, one autograd call per sample, [B, P]."""
    ps = list(model.parameters())
    return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(f(model(x[i:i + 1])[0], y[i]), ps)])
                        for i in range(len(y))])


def margin(z: torch.Tensor, y) -> torch.Tensor:
    """TRAK's model output log(p / (1 - p)) of the label's probability p."""
    p = F.softmax(z, -1)[y]
    return torch.log(p) - torch.log1p(-p)


def loss(z: torch.Tensor, y) -> torch.Tensor:
    return F.cross_entropy(z.unsqueeze(0), y.unsqueeze(0))


def projection(n_params: int, proj_dim: int, seed: int) -> torch.Tensor:
    """dattri's Gaussian projection on the CPU [P, k]: blocks of 100 columns, block b drawn from seed + 1000 b."""
    block = min(proj_dim, 100)
    cols = []
    for b in range(math.ceil(proj_dim / block)):
        gen = torch.Generator().manual_seed(seed + 1000 * b)
        cols.append(torch.empty(n_params, block).normal_(generator=gen)[:, :min(block, proj_dim - b * block)])
    return torch.cat(cols, 1).double() / math.sqrt(proj_dim)


def trak_formula(model, x_tr, y_tr, x_te, y_te, proj_dim: int, ridge: float, seed: int = 0) -> torch.Tensor:
    """TRAK at one model [N, M]: phi_j^T (Phi^T Phi + lambda I)^-1 phi_i (1 - p_i), phi = R^T grad margin / sqrt(P),
    lambda = ridge x sum_i |grad margin_i|^2 / (P k)."""
    n_params = sum(p.numel() for p in model.parameters())
    g_tr, g_te = per_sample(model, x_tr, y_tr, margin), per_sample(model, x_te, y_te, margin)
    r = projection(n_params, proj_dim, seed)
    phi_tr, phi_te = g_tr @ r / math.sqrt(n_params), g_te @ r / math.sqrt(n_params)
    lam = ridge * g_tr.pow(2).sum() / (n_params * proj_dim)
    kernel = phi_tr.T @ phi_tr + lam * torch.eye(proj_dim, dtype=torch.float64)
    with torch.no_grad():
        q = 1 - F.softmax(model(x_tr), -1)[torch.arange(len(y_tr)), y_tr]
    return (phi_te @ torch.linalg.solve(kernel, phi_tr.T)).T * q[:, None]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    """Equal up to rtol of the reference's largest entry."""
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=rtol * ref.abs().max().item())


# ---------------------------------------------------------------- TRAK
@pytest.mark.parametrize("flags, proj_dim, ridge", [([], 3, 0.0), (["--proj_dim", "8", "--ridge", "0.05"], 8, 0.05)],
                         ids=["default", "ridge"])
def test_trak_is_its_formula(root, monkeypatch, flags, proj_dim, ridge):
    """The default (k = N // 2 = 3, no ridge) and a ridge with k >= N: every checkpoint of every seed is the formula."""
    monkeypatch.setenv("TDA_ROOT", str(root))
    script("run_dattri").main([*ARGS, "--method", "trak", *flags])
    x_tr, y_tr, x_te, y_te = data(root)
    cfg = parse_experiment(EXP, root)
    for seed in SEEDS:
        d = saved(root, "dattri_trak", seed)
        assert d["scores"].shape == (5, 6, 20)
        s = d["settings"]
        assert (s["proj_dim"], s["ridge"], s["proj_seed"], s["output"]) == (proj_dim, ridge, 0, "margin")
        assert {k: d["provenance"]["settings"][k] for k in ("proj_dim", "ridge", "proj_seed", "output")} == \
            {"proj_dim": proj_dim, "ridge": ridge, "proj_seed": 0, "output": "margin"}
        assert (s["ridge_lambda"][0] > 0) == (ridge > 0)
        for c, epoch in enumerate(cfg.ckpt_epochs):
            ref = trak_formula(float64_model(root, seed, epoch), x_tr, y_tr, x_te, y_te, proj_dim, ridge)
            assert_close(d["scores"][c], ref, 1e-3)


def test_changing_the_projection_or_ridge_recomputes(root, monkeypatch):
    monkeypatch.setenv("TDA_ROOT", str(root))
    run = script("run_dattri").main
    run([*ARGS, "--method", "trak"])
    assert run([*ARGS, "--method", "trak"])[:2] == [f"seed {s}: already done, kept" for s in SEEDS]
    for flags in (["--proj_seed", "1"], ["--proj_dim", "2"], ["--ridge", "0.01"], []):
        lines = run([*ARGS, "--method", "trak", *flags])
        assert all("done in" in line for line in lines[:2]), (flags, lines)
    seed1 = run([*ARGS, "--method", "trak", "--proj_seed", "1"]) and saved(root, "dattri_trak", SEEDS[0])
    assert seed1["settings"]["proj_seed"] == 1 and seed1["provenance"]["settings"]["proj_seed"] == 1


def test_trak_without_its_q_weighting_or_margin_is_not_the_formula(root, monkeypatch):
    """The formula check has teeth: the (1 - p) weighting and the margin each change the scores beyond its tolerance."""
    monkeypatch.setenv("TDA_ROOT", str(root))
    script("run_dattri").main([*ARGS, "--method", "trak"])
    x_tr, y_tr, x_te, y_te = data(root)
    model = float64_model(root, SEEDS[0], 14)
    ours = saved(root, "dattri_trak", SEEDS[0])["scores"][-1].double()
    ref = trak_formula(model, x_tr, y_tr, x_te, y_te, 3, 0.0)
    with torch.no_grad():
        q = 1 - F.softmax(model(x_tr), -1)[torch.arange(len(y_tr)), y_tr]
    for wrong in (ref / q[:, None], ref * q[:, None]):
        assert (ours - wrong).abs().max() > 1e-2 * wrong.abs().max()
    n_params = sum(p.numel() for p in model.parameters())
    r = projection(n_params, 3, 0)
    phi_tr, phi_te = per_sample(model, x_tr, y_tr, loss) @ r, per_sample(model, x_te, y_te, loss) @ r
    with_loss = (phi_te @ torch.linalg.solve(phi_tr.T @ phi_tr, phi_tr.T)).T * q[:, None]
    assert (ours - with_loss).abs().max() > 1e-2 * with_loss.abs().max()


def test_a_singular_trak_is_refused_and_would_be_round_off(root, monkeypatch):
    """proj_dim 512 >= N = 6 without a ridge (the former default): one line, nothing computed. Run anyway, its
    scores change with the order of the training samples (round-off decides them); a well-posed TRAK's do not."""
    r = run_script("run_dattri.py", *ARGS, "--method", "trak", "--proj_dim", "512", "--overwrite", root=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "singular" in r.stderr and "--proj_dim below 6" in r.stderr, r.stderr
    for bad in (["--proj_dim", "0"], ["--ridge", "-1"], ["--ridge", "nan"]):
        with pytest.raises(SystemExit) as e:  # refused by the parser, with the option's range
            script("run_dattri").main([*ARGS, "--method", "trak", *bad])
        assert e.value.code == 2
    with pytest.raises(TDAError, match="--ridge is TRAK's"):
        script("run_dattri").main([*ARGS, "--method", "tracin", "--ridge", "0.1"])

    from tda.backends import get_backend
    from tda.dattri_methods import trak_scores
    cfg = parse_experiment(EXP, root)
    backend = get_backend(cfg)
    x_tr, y_tr, x_te, y_te = (t.float() if t.is_floating_point() else t for t in data(root))
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    ck = torch.load(cfg.ckpt_path(SEEDS[0], 14), weights_only=True)

    def both_orders(proj_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for perm in (torch.arange(6), order):
            model = backend.load(ck)
            s, _ = trak_scores(model, lambda m, st: (m.load_state_dict(st), m.eval())[1], x_tr[perm], y_tr[perm],
                               x_te, y_te, proj_dim, 0.0, 0, torch.device("cpu"))
            out.append(s[torch.argsort(perm)])
        return out[0], out[1]

    a, b = both_orders(3)
    assert_close(b, a.double(), 1e-4)
    a, b = both_orders(512)
    assert (a - b).abs().max() > 0.1 * a.abs().max()


# ---------------------------------------------------------------- TracIn
def test_tracin_is_lr_times_projected_grad_dot_and_gets_tested(root, monkeypatch):
    """dattri's TracIn at one checkpoint is lr x (R^T g_i) . (R^T g_j), loss gradients g: within 1e-4 of that formula,
    within its projection of our Grad-Dot, and run_pvalues.py tests it beside our methods."""
    monkeypatch.setenv("TDA_ROOT", str(root))
    script("run_dattri").main([*ARGS, "--method", "tracin", "--proj_dim", "64"])
    cfg = parse_experiment(EXP, root)
    x_tr, y_tr, x_te, y_te = data(root)
    for seed in SEEDS:
        ours, theirs = saved(root, "gd", seed), saved(root, "dattri_tracin", seed)
        assert torch.equal(ours["train_indices"], theirs["train_indices"])
        assert theirs["scores"].shape == ours["scores"].shape
        assert (theirs["settings"]["proj_dim"], theirs["provenance"]["settings"]["proj_dim"]) == (64, 64)
        model = float64_model(root, seed, 14)
        r = projection(sum(p.numel() for p in model.parameters()), 64, 0)
        ref = cfg.lr * (per_sample(model, x_tr, y_tr, loss) @ r) @ (per_sample(model, x_te, y_te, loss) @ r).T
        assert_close(theirs["scores"][-1], ref, 1e-4)
        a, b = theirs["scores"].flatten(), ours["scores"].flatten()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99
    summary = script("run_pvalues").main(["--experiment", EXP, "--scores", str(root / "tda_scores" / EXP /
                                          "dattri_tracin"), "--method_name", "dattri_tracin"])
    assert list(summary.mean_p.columns) == ["GD", "GC", "DATTRI_TRACIN"]


# ---------------------------------------------------------------- seeds in parallel
def test_seeds_in_parallel_and_a_failing_seed_does_not_stop_the_other(root, tmp_path):
    """--workers 2: one process per seed, the same scores as in this process; a seed with a corrupt checkpoint
    is named with its one-line error and the other seed's scores are complete."""
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "tda_scores" / EXP / "dattri_trak", ignore_errors=True)
    cfg = parse_experiment(EXP, copy)
    good, bad = SEEDS
    cfg.ckpt_path(bad, 12).write_bytes(b"truncated")
    r = run_script("run_dattri.py", *ARGS[:-1], "2", "--method", "trak", root=copy)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"seed {bad}: error: corrupt checkpoint" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: 1 of 2 failed (seed {bad})")
    assert f"seed {bad}: failed: corrupt checkpoint" in r.stdout and f"seed {good}: done in" in r.stdout
    assert not cfg.scores_path("dattri_trak", bad).exists()
    x_tr, y_tr, x_te, y_te = data(copy)
    computed = torch.load(cfg.scores_path("dattri_trak", good), weights_only=True)["scores"]
    for c, epoch in enumerate(cfg.ckpt_epochs):
        assert_close(computed[c], trak_formula(float64_model(copy, good, epoch), x_tr, y_tr, x_te, y_te, 3, 0.0), 1e-3)


# ---------------------------------------------------------------- the docs' correlation script
def test_the_docs_correlation_command_is_right(root, monkeypatch):
    """docs/own_data.md's correlation command, on the tiny experiment with Grad-Dot only: its Pearson and Spearman
    of mu equal numpy's and scipy's on the seeds' mean over the last 5 checkpoints."""
    import re
    import shlex
    from pathlib import Path

    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr
    monkeypatch.setenv("TDA_ROOT", str(root))
    script("run_dattri").main([*ARGS, "--method", "trak"])
    doc = (Path(__file__).resolve().parents[1] / "docs" / "own_data.md").read_text()
    block = [b for b in re.findall(r"^```bash\n(.*?)^```", doc, flags=re.S | re.M)
             if b.startswith("# correlate dattri's TRAK")]
    assert len(block) == 1
    argv = shlex.split(block[0].splitlines()[1].replace("cnn_digits3_10pc", EXP))
    assert argv[:2] == ["python", "run_correlations.py"]
    monkeypatch.chdir(root)  # the docs' relative score path is under the project root
    script("run_correlations").main(argv[2:])
    mu = {o: torch.stack([saved(root, o, s)["scores"][-5:].double().mean(0) for s in SEEDS]).mean(0).flatten().numpy()
          for o in ("dattri_trak", "gd")}
    want = {"pearson": np.corrcoef(mu["dattri_trak"], mu["gd"])[0, 1],
            "spearman": spearmanr(mu["dattri_trak"], mu["gd"])[0]}
    for kind, value in want.items():
        table = pd.read_csv(root / "results" / EXP / f"correlation_{kind}_mean.csv", index_col=0)
        row = [r for r in table.index if "trak" in r.lower()]
        assert len(row) == 1, table.index
        assert abs(table.loc[row[0], "GD"] - value) <= 1e-9
