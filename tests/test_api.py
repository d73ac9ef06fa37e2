"""The Python API computes what the scripts compute: on the scripts' own checkpoints (read with `Posterior.load`)
every method's scores equal the saved score files bit for bit, and `train_posterior` reproduces the scripts'
checkpoints. Posteriors in memory, saved, trained to a directory (kept when current) or from a training function
of your own; a method of your own at every sample; the caller's generator untouched; bad input in one line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import tda
from helpers import REPO, make_tiny_root
from tda import attribution, io, training
from tda.api import sampling
from tda.config import TDAError, parse_experiment
from tda.methods import ATS, IF, LOO, GradSim
from tda.models import CNN

EXP = "cnn_digits3_2pc"  # N = 6 training images, 20 test images
SEEDS = (446, 724)
pytestmark = pytest.mark.xdist_group("api")  # one scripted root for the module: its tests on one worker


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The scripts' training and every method's score files for two seeds of the tiny experiment."""
    root = make_tiny_root(tmp_path_factory.mktemp("root"), seeds=SEEDS)
    cfg = parse_experiment(EXP, root)
    training.train_seeds(cfg, list(SEEDS), progress=False)
    for method in (GradSim(), ATS(), IF(), LOO()):
        attribution.run_method(method, cfg, list(SEEDS), "cpu", progress=False)
    train, test = io.load_subsets(cfg)
    return cfg, (train["images"], train["labels"]), (test["images"], test["labels"])


def make_cnn() -> nn.Module:
    return CNN(1, 10)


def test_scores_through_the_api_equal_the_scripts_score_files(scripted):
    cfg, train, test = scripted
    post = tda.Posterior.load(cfg.model_dir, make_cnn, seeds=list(SEEDS), own_protocol=True)
    assert post.shape == (2, 5) and post.epochs == cfg.ckpt_epochs
    for output in ("gd", "gc", "ats", "if", "loo"):
        got = tda.attribute(output, post, train, test, device="cpu", progress=False)
        want = torch.stack([io.load_scores(cfg, output, s)["scores"] for s in SEEDS])
        assert got.shape == want.shape == (2, 5, 6, 20) and torch.equal(got, want), output


def test_train_posterior_reproduces_the_scripts_checkpoints(scripted):
    cfg, train, test = scripted
    post = tda.train_posterior(make_cnn, train, SEEDS, test=test, device="cpu", progress=False)
    assert post.own_protocol and post.epochs == cfg.ckpt_epochs
    for i, seed in enumerate(SEEDS):
        for ck, epoch in zip(post.checkpoints(i), cfg.ckpt_epochs):
            saved = io.load_checkpoint(cfg, seed, epoch)["state_dict"]
            assert ck["state_dict"].keys() == saved.keys()
            assert all(torch.equal(ck["state_dict"][k], saved[k]) for k in saved)


# ---- a small classifier of the user's own: data, posterior, method
G = torch.Generator().manual_seed(1)
X, Y = torch.randn(14, 5, generator=G), torch.randint(0, 3, (14,), generator=G)
TRAIN, TEST = (X[:9], Y[:9]), (X[9:], Y[9:])
SMALL = tda.Training(epochs=3, checkpoints=2, batch_size=4)


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def my_training(seed: int) -> list[dict]:
    """A loop of the user's own: plain SGD over a fixed order, the last two epochs kept."""
    torch.manual_seed(seed)
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = []
    for _ in range(3):
        for idx in torch.arange(9).split(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(TRAIN[0][idx]), TRAIN[1][idx]).backward()
            opt.step()
        kept.append({k: v.clone() for k, v in model.state_dict().items()})
    return kept[1:]


def probe(model: nn.Module, train, test) -> np.ndarray:
    """A method of the user's own, [N, M], returned as an array: depends on the weights and on both sets."""
    assert not model.training
    with torch.no_grad():
        return (model(train[0]) @ model(test[0]).T).numpy()


def equal_states(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_a_posterior_saved_and_loaded_gives_the_same_scores(tmp_path):
    post = tda.train_posterior(make_mlp, TRAIN, [1, 2], SMALL, progress=False)
    disk = post.save(tmp_path / "post")
    loaded = tda.Posterior.load(tmp_path / "post", make_mlp)
    assert disk.states is None and loaded.own_protocol and loaded.training == SMALL and loaded.seeds == [1, 2]
    for i in range(2):
        assert equal_states([c["state_dict"] for c in loaded.checkpoints(i)], post.states[i])
    want = tda.attribute("loo", post, TRAIN, TEST, progress=False)
    assert torch.equal(tda.attribute("loo", loaded, TRAIN, TEST, progress=False), want)
    # data as a torch Dataset gives the same
    assert torch.equal(tda.attribute("loo", post, TensorDataset(*TRAIN), TensorDataset(*TEST), progress=False), want)


def test_training_to_a_directory_keeps_current_seeds_and_retrains_changed_ones(tmp_path, monkeypatch):
    d = tmp_path / "post"
    first = tda.train_posterior(make_mlp, TRAIN, [1, 2], SMALL, directory=d, progress=False)
    memory = tda.train_posterior(make_mlp, TRAIN, [1, 2], SMALL, progress=False)
    for i in range(2):
        assert equal_states([c["state_dict"] for c in first.checkpoints(i)], memory.states[i])
    calls = []
    real = sampling.train_member
    monkeypatch.setattr(sampling, "train_member", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    tda.train_posterior(make_mlp, TRAIN, [1, 2], SMALL, directory=d, progress=False)
    assert calls == []
    tda.train_posterior(make_mlp, TRAIN, [1, 2, 3], SMALL, directory=d, progress=False)
    assert calls == [3]
    faster = tda.Training(epochs=3, checkpoints=2, batch_size=4, lr=2e-3)
    tda.train_posterior(make_mlp, TRAIN, [1, 2], faster, directory=d, progress=False)
    assert calls == [3, 1, 2]
    tda.train_posterior(make_mlp, (TRAIN[0] + 1, TRAIN[1]), [1], faster, directory=d, progress=False)
    assert calls == [3, 1, 2, 1]
    tda.train_posterior(make_mlp, (TRAIN[0] + 1, TRAIN[1]), [1], faster, directory=d, progress=False)
    assert calls == [3, 1, 2, 1]


def test_a_training_function_of_your_own(tmp_path):
    post = tda.posterior_from(my_training, make_mlp, [4, 5], progress=False)
    assert post.shape == (2, 2) and not post.own_protocol
    for i, seed in enumerate([4, 5]):
        assert equal_states([c["state_dict"] for c in post.checkpoints(i)], my_training(seed))
    assert tda.attribute("loo", post, TRAIN, TEST, progress=False).shape == (2, 2, 9, 5)  # protocol `continue`
    for protocol in ("paper", "scratch"):
        with pytest.raises(TDAError, match="continue") as e:
            tda.attribute("loo", post, TRAIN, TEST, protocol=protocol, progress=False)
        assert "\n" not in str(e.value)
    # saved as it is made; kept when its function is unchanged
    calls = []

    def counted(seed):
        calls.append(seed)
        return [make_mlp() for _ in range(2)]  # models are accepted too

    tda.posterior_from(counted, make_mlp, [4, 5], directory=tmp_path / "p", progress=False)
    again = tda.posterior_from(counted, make_mlp, [4, 5], directory=tmp_path / "p", progress=False)
    assert calls == [4, 5] and again.shape == (2, 2)
    tda.posterior_from(counted, make_mlp, [4], directory=tmp_path / "p", overwrite=True, progress=False)
    assert calls == [4, 5, 4]


@pytest.mark.parametrize("bad, words", [(lambda s: {"w": torch.zeros(1)}, "list of state dicts"),
                                        (lambda s: [make_mlp()] * (1 + s), "different numbers of checkpoints"),
                                        (lambda s: ["x"], "not a state dict")])
def test_a_training_function_returning_something_else_is_one_line(bad, words):
    with pytest.raises(TDAError, match=words) as e:
        tda.posterior_from(bad, make_mlp, [0, 1], progress=False)
    assert "\n" not in str(e.value)


def test_a_method_of_your_own_runs_at_every_sample():
    post = tda.posterior_from(my_training, make_mlp, [4, 5], progress=False)
    got = tda.attribute(probe, post, TRAIN, TEST, progress=False)
    assert got.shape == (2, 2, 9, 5)
    for i in range(2):
        for c in range(2):
            assert torch.equal(got[i, c], torch.as_tensor(probe(post.model(i, c), TRAIN, TEST)))
    with pytest.raises(TDAError, match=r"\[N, M\]"):
        tda.attribute(lambda m, tr, te: torch.zeros(3), post, TRAIN, TEST, progress=False)


def test_the_callers_random_generator_is_left_as_it_was():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    post = tda.train_posterior(make_mlp, TRAIN, [1], SMALL, progress=False)
    tda.attribute("loo", post, TRAIN, TEST, progress=False)
    post.model(0)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("call, words", [
    (lambda p: tda.attribute("nope", p, TRAIN, TEST), "unknown TDA method"),
    (lambda p: tda.attribute("if", p, TRAIN, TEST, solver="qr"), "solver must be one of"),
    (lambda p: tda.attribute("if", p, TRAIN, TEST, sovler="cg"), "its options are"),
    (lambda p: tda.attribute("gd", p, "data", TEST), "pair"),
    (lambda p: tda.attribute("gd", p, (X, Y[:3]), TEST), "one row per sample"),
    (lambda p: tda.attribute(probe, p, TRAIN, TEST, solver="cg"), "takes no options"),
    (lambda p: tda.Training(epochs=2, checkpoints=3), "at most epochs"),
    (lambda p: tda.Training(lr=0), "lr must be"),
    (lambda p: tda.Posterior.load(REPO / "docs", make_mlp), "no posterior"),
])
def test_bad_input_is_one_line(call, words):
    post = tda.posterior_from(my_training, make_mlp, [4], progress=False)
    with pytest.raises(TDAError, match=words) as e:
        call(post)
    assert "\n" not in str(e.value)


def test_import_tda_loads_the_api_only_when_asked():
    code = ("import sys, tda; print('tda.api' in sys.modules, 'torch' in sys.modules); tda.attribute; "
            "print('tda.api' in sys.modules, sorted(tda.__all__) == sorted(n for n in tda.__all__ if hasattr(tda, n)))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "True", "True"]
