"""docs/api.md's worked examples run, in a temporary directory, and compute what they say: the posterior holds the
user's own loop's state dicts, Grad-Dot is the dot product of autograd's per-sample gradients, IF by CG on the
Gauss-Newton matrix is the dense damped solve, the method of the user's own is its function at every sample,
dattri's TRAK is dattri's at every sample (skipped without dattri unless TDA_REQUIRE_DATTRI=1). The significance
block needs `tda.significance` and `tda.correlate`."""
from __future__ import annotations

import os
import re
import sys

import pytest
import torch

import tda
from helpers import REPO, close

DOC = REPO / "docs" / "api.md"
pytestmark = pytest.mark.xdist_group("api_docs")  # one run of the example for the module: its tests on one worker


def block(first_line: str) -> str:
    """The python block of docs/api.md whose first line is `first_line`."""
    found = [b for b in re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
             if b.splitlines()[0].strip() == first_line]
    assert len(found) == 1, f"docs/api.md must hold exactly one python block starting with {first_line!r}"
    return found[0]


def run_block(first_line: str, namespace: dict, where) -> dict:
    """Execute a block in `namespace` (extended in place) with `where` as the current directory."""
    before = os.getcwd()
    os.chdir(where)
    try:
        exec(compile(block(first_line), f"docs/api.md: {first_line}", "exec"), namespace)
    finally:
        os.chdir(before)
    return namespace


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    where = tmp_path_factory.mktemp("example")
    return run_block("# api_example.py: a posterior of your own training loop, attributed three ways",
                     {"__name__": "api_example"}, where), where


def sample_grads(model, x, y) -> torch.Tensor:
    ps = list(model.parameters())
    return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        torch.nn.functional.cross_entropy(model(x[k:k + 1]), y[k:k + 1]), ps)]) for k in range(len(y))])


def dense_gauss_newton(model, x) -> torch.Tensor:
    """mean_n J_n^T (diag(p_n) - p_n p_n^T) J_n in float64, J_n the logits' Jacobian (one backward per logit)."""
    ps = list(model.parameters())
    total = 0
    for n in range(len(x)):
        z = model(x[n:n + 1])[0]
        jac = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(z[k], ps, retain_graph=True)])
                           for k in range(len(z))]).double()
        p = torch.softmax(z.detach().double(), 0)
        total = total + jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    return total / len(x)


def test_the_worked_example_computes_what_it_says(example):
    ns, _ = example
    post, train, test, scores = ns["posterior"], ns["train"], ns["test"], ns["scores"]
    assert post.shape == (5, 3) and set(scores) == {"GD", "IF", "hidden"}
    assert all(s.shape == (5, 3, 60, 30) for s in scores.values())
    for ck, own in zip(post.checkpoints(3), ns["my_training"](3)):
        assert all(torch.equal(ck["state_dict"][k], own[k]) for k in own)
    i, c = 2, 1
    model = post.model(i, c)
    g_tr, g_te = sample_grads(model, *train), sample_grads(model, *test)
    close(scores["GD"][i, c], g_tr @ g_te.T, 1e-4)
    damping = tda.Training().weight_decay  # CG's default damping: the posterior's weight decay
    g = dense_gauss_newton(model, train[0])
    want = -(g_tr.double() @ torch.linalg.solve(g + damping * torch.eye(len(g), dtype=g.dtype), g_te.double().T))
    close(scores["IF"][i, c].double(), want, 2e-2)  # CG stops at a relative residual of 1e-4, in float32
    assert torch.equal(scores["hidden"][i, c], ns["hidden_similarity"](model, train, test))


def test_the_worked_examples_significance_block_runs(example, capsys):
    ns, where = example
    ns = run_block("# api_example_significance.py: the significance test and the correlations of the scores above",
                   dict(ns), where)
    out = capsys.readouterr().out
    assert all(f"{name}: one row per pair and K" in out for name in ("GD", "IF", "hidden"))
    assert (where / "api_example.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frame = ns["results"]["GD"].to_frame()
    assert len(frame) == 60 * 30 * 3 and {"mu", "sigma", "K"} <= set(frame.columns)
    mu_all = frame[frame["K"] == 3]["mu"].sort_values().to_numpy()
    want = ns["scores"]["GD"].double().mean(1).mean(0).flatten().sort().values.numpy()
    assert abs(mu_all - want).max() <= 1e-6 * abs(want).max()


def require_dattri() -> None:
    try:
        import dattri  # noqa: F401
    except ImportError:
        if os.environ.get("TDA_REQUIRE_DATTRI") == "1":
            pytest.fail("dattri is not installed and TDA_REQUIRE_DATTRI=1: pip install -r req-extra.txt")
        pytest.skip("dattri (the optional extra, req-extra.txt) is not installed")


def test_the_dattri_requirement_fails_where_it_is_required(monkeypatch):
    monkeypatch.setitem(sys.modules, "dattri", None)  # `import dattri` raises ImportError
    monkeypatch.setenv("TDA_REQUIRE_DATTRI", "1")
    with pytest.raises(pytest.fail.Exception, match="TDA_REQUIRE_DATTRI=1"):
        require_dattri()
    monkeypatch.delenv("TDA_REQUIRE_DATTRI")
    with pytest.raises(pytest.skip.Exception):
        require_dattri()


def test_the_trak_example_is_dattris_trak_at_every_sample(example):
    require_dattri()
    ns, where = example
    ns = run_block("# api_example_trak.py: dattri's TRAK at every posterior sample of the example above", dict(ns),
                   where)
    trak = ns["scores"]["TRAK"]
    assert trak.shape == (5, 3, 60, 30) and bool(torch.isfinite(trak).all())
    post, train, test = ns["posterior"], ns["train"], ns["test"]
    for i, c in ((0, 0), (4, 2)):
        assert torch.equal(trak[i, c], torch.as_tensor(ns["trak"](post.model(i, c), train, test)).detach().cpu())
