"""The documentation under docs/: its worked examples run and are right, its links resolve, its wording is clean."""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tda import attribution, io, results, training
from tda.backends import get_backend
from tda.config import get_task, parse_experiment
from tda.data import generate_subsets
from tda.methods import base as methods_base
from tda.models import CNN
from tda.seeds import load_seeds

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXPERIMENT = "cnn_digits3_2pc"


def code_block(doc: Path, first_line: str) -> str:
    """The fenced python block of `doc` whose first line is `first_line` (e.g. the file it belongs in)."""
    blocks = re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.S | re.M)
    found = [b for b in blocks if b.splitlines()[0].strip() == first_line]
    assert len(found) == 1, f"{doc.name} must hold exactly one python block starting with {first_line!r}"
    return found[0]


def import_block(code: str, module: str, tmp_path: Path, monkeypatch) -> object:
    """Write a docs code block as module `module` in a temp dir on sys.path and import it."""
    (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(module)


@pytest.fixture
def example_method(tmp_path, monkeypatch):
    """The method of docs/extending.md, imported (so it registers itself); unregistered afterwards."""
    before = dict(methods_base.REGISTRY)
    (tmp_path / "mod").mkdir()
    mod = import_block(code_block(DOCS / "extending.md", "# tda/methods/last_layer_gd.py"),
                       "docs_example_last_layer_gd", tmp_path / "mod", monkeypatch)
    yield mod
    for k in set(methods_base.REGISTRY) - set(before):
        del methods_base.REGISTRY[k]
    sys.modules.pop("docs_example_last_layer_gd", None)


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """cnn_digits3_2pc (6 training, 300 test images) in a temp TDA_ROOT, two seeds trained."""
    root = tmp_path / "root"
    monkeypatch.setenv("TDA_ROOT", str(root))
    generate_subsets(get_task("digits3"), [2], root / "data" / "digits3", "")
    cfg = parse_experiment(EXPERIMENT)
    seeds = load_seeds(root)[:2]
    training.train_seeds(cfg, seeds, progress=False)
    return cfg, seeds


def classifier_grads(model, x, y, names) -> torch.Tensor:
    """Per-sample gradients over the named parameters, one plain autograd call per sample, [B, P]."""
    params = dict(model.named_parameters())
    ps = [params[n] for n in names]
    return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        F.cross_entropy(model(x[k:k + 1]), y[k:k + 1]), ps)]) for k in range(len(y))])


def test_last_layer_grad_dot_example_runs_and_is_right(example_method, experiment):
    cfg, seeds = experiment
    cls = methods_base.REGISTRY["gd_last"]
    assert cls is example_method.LastLayerGradDot and cls.outputs == {"gd_last": "GD-last"}
    method = cls()
    assert method.prefix == "fc2."

    rows = attribution.run_method(method, cfg, seeds, progress=False)
    assert [r["skipped"] for r in rows] == [False, False]

    train, test = io.load_subsets(cfg)
    x_tr, y_tr = train["images"], train["labels"]
    cols = torch.arange(0, len(test["labels"]), 10)  # the reference is checked on every 10th test sample
    x_te, y_te = test["images"][cols], test["labels"][cols]
    last = ["fc2.weight", "fc2.bias"]
    for seed in seeds:
        saved = torch.load(cfg.scores_path("gd_last", seed), weights_only=True)
        scores = saved["scores"]
        assert scores.shape == (5, 6, 300) and scores.dtype == torch.float32
        assert saved["ckpt_epochs"].tolist() == cfg.ckpt_epochs == [10, 11, 12, 13, 14]
        assert torch.equal(saved["train_indices"], train["indices"])
        assert saved["settings"]["prefix"] == "fc2." and saved["settings"]["seed"] == seed
        for c, epoch in enumerate(cfg.ckpt_epochs):
            # independent reference: a plain CNN with the checkpoint's weights, per-sample autograd
            model = CNN(1, 10)
            model.load_state_dict(torch.load(cfg.ckpt_path(seed, epoch), weights_only=True)["state_dict"])
            model.eval()
            ref = classifier_grads(model, x_tr, y_tr, last) @ classifier_grads(model, x_te, y_te, last).T
            assert ref.abs().max() > 1e-4  # not trivially zero
            torch.testing.assert_close(scores[c][:, cols], ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        # and it really is the last layer only: Grad-Dot over all parameters is something else
        every = [n for n, _ in model.named_parameters()]
        full = classifier_grads(model, x_tr, y_tr, every) @ classifier_grads(model, x_te[:5], y_te[:5], every).T
        assert not torch.allclose(scores[-1][:, cols[:5]], full, rtol=1e-2, atol=1e-6)

    # a second run keeps the finished seeds
    assert all(r["skipped"] for r in attribution.run_method(method, cfg, seeds, progress=False))
    # the results step picks the registered output up by itself
    summary = results.pvalues_step(cfg, log=lambda line: None)
    assert list(summary.mean_p.columns) == ["GD-last"] and list(summary.mean_p.index) == [1, 2, 3, 4, 5]
    assert (cfg.results_dir / "pvalues_gd_last_across_5_ckpts.csv").exists()


def test_mlp_backend_example_trains_and_reloads(tmp_path, monkeypatch):
    mod = import_block(code_block(DOCS / "extending.md", "# tda/backends/mlp.py"), "docs_example_mlp",
                       tmp_path, monkeypatch)
    root = tmp_path / "root"
    monkeypatch.setenv("TDA_ROOT", str(root))
    generate_subsets(get_task("digits3"), [2], root / "data" / "digits3", "")
    cfg = parse_experiment(EXPERIMENT)  # the MLP is bound to a cnn experiment's data and settings
    backend = mod.MLPBackend(cfg)
    train, test = io.load_subsets(cfg)
    ckpts = training.train_member(backend, 446, train["images"], train["labels"], test["images"], test["labels"],
                                  progress=False)
    assert [c["epoch"] for c in ckpts] == cfg.ckpt_epochs
    model = backend.load(ckpts[-1])
    assert not model.training and model(test["images"][:3]).shape == (3, 10)
    assert torch.equal(model.fc2.weight, ckpts[-1]["state_dict"]["fc2.weight"])
    # the same seed gives the same initialisation
    torch.manual_seed(446)
    a = backend.build().fc1.weight.clone()
    torch.manual_seed(446)
    assert torch.equal(a, backend.build().fc1.weight)
    assert get_backend(cfg).__class__.__name__ == "CNNBackend"  # registering it is the contributor's step


# ---------------------------------------------------------------- hygiene
DOC_FILES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    out = set()
    for line in text.splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_docs_exist_and_are_indexed():
    names = {p.name for p in DOC_FILES}
    assert {"README.md", "pipeline.md", "methods.md", "statistics.md", "deviations.md", "extending.md"} <= names
    index = (DOCS / "README.md").read_text()
    for name in names - {"README.md"}:
        assert f"({name})" in index, f"docs/README.md does not list {name}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest.read_text()), f"{doc.name}: no heading #{anchor} in {dest.name}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_no_internal_references(doc):
    text = doc.read_text()
    assert "DESIGN" not in text, f"{doc.name} mentions DESIGN"
    assert not re.search(r"\bissues?\s*#?\d+", text, flags=re.I), f"{doc.name} refers to an issue number"
