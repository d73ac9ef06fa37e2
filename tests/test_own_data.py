"""Datasets and models of your own: Hugging Face datasets as tasks (save_to_disk, imagefolder, the hub cache), the
built-in tasks from Hugging Face copies, model families from models.json, and every command of README's section."""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from helpers import REPO, autograd_grads, close, script
from test_foundation import write_cifar, write_mnist_raw
from tda import data, hf_data, training
from tda.backends import CNNBackend, CustomBackend, get_backend
from tda.backends.custom import register
from tda.config import ExperimentConfig, TDAError, get_task, parse_experiment
from tda.models import CNN

DOCS = REPO / "docs" / "own_data.md"
SEEDS = (446, 724)


def code_block(doc: Path, first_line: str, lang: str = "python") -> str:
    """The fenced block of `doc` whose first line is `first_line`."""
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", doc.read_text(), flags=re.S | re.M)
    found = [b for b in blocks if b.splitlines()[0].strip() == first_line]
    assert len(found) == 1, f"{doc.name} must hold exactly one {lang} block starting with {first_line!r}"
    return found[0]


def readme_commands() -> list[str]:
    """The commands of README.md's section on your own data, model or scores, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own data, model or scores", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def make_root(root: Path, seeds=SEEDS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    torch.save(torch.tensor(list(seeds), dtype=torch.int64), root / "random_seeds.pt")
    return root


def digit_images(classes=(0, 1, 2), per_class: int = 12, colour: bool = False, size: int = 8):
    """(uint8 images, labels) of scikit-learn's digits, grey or tinted per class, resized to size x size."""
    d = load_digits()
    rows = [i for c in classes for i in np.flatnonzero(d.target == c)[:per_class]]
    images = []
    for i in rows:
        img = Image.fromarray(np.uint8(np.rint(d.images[i] * 255 / 16)))
        if colour:
            tint = np.array([(1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1)][int(d.target[i]) % 3])
            img = Image.fromarray(np.uint8(np.asarray(img)[..., None] * tint))
        images.append(np.asarray(img.resize((size, size), Image.BILINEAR) if size != 8 else img))
    return images, [int(d.target[i]) for i in rows]


# ---------------------------------------------------------------- README, end to end through the scripts
def test_readme_commands_run_end_to_end(tmp_path, monkeypatch):
    """Every command of the README section, in a fresh interpreter, on the docs' own worked examples."""
    root = make_root(tmp_path / "root")
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the factory's directory is added while importing it
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    exec(compile(code_block(DOCS, "# make_my_digits.py: scikit-learn's digits 0-3 as a Hugging Face dataset, saved "
                                  "with save_to_disk"), "make_my_digits.py", "exec"), {})
    (root / "mymodels.py").write_text(code_block(DOCS, "# mymodels.py, beside models.json: a model family for "
                                                       "`python -m tda.backends.custom`"))
    monkeypatch.setenv("TDA_ROOT", str(root))
    exec(compile(code_block(DOCS, "# scores from anywhere: pure noise except three training samples that help every "
                                  "test sample"), "scores.py", "exec"), {})
    from_python = (root / "results" / "my_trak" / "mean_p_values.csv").read_bytes()
    env = dict(os.environ, TDA_ROOT=str(root), PYTHONPATH=str(REPO), TDA_WORKERS="1", OMP_NUM_THREADS="1")
    monkeypatch.setenv("TDA_WORKERS", "1")
    commands = readme_commands()
    assert len(commands) >= 8 and any("--hf_dataset" in c for c in commands) and any("--scores" in c for c in commands)
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] == "python", cmd
        if argv[1] == "-m":  # a module entry point: in a fresh interpreter, as typed
            r = subprocess.run([sys.executable, *argv[1:]], cwd=root, env=env, capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        else:  # an entry script: its main() in this process (the same code without the interpreter's start-up)
            script(argv[1]).main(argv[2:])
    spec = get_task("digits4", root)
    assert (spec.channels, spec.image_size, spec.epochs, spec.train_classes) == (1, 28, 15, (0, 1, 2, 3))
    assert spec.source["class_names"] == ["zero", "one", "two", "three"] and spec.source["test_split"] is None
    train = torch.load(root / "data" / "digits4" / "train_subset_5pc.pt", weights_only=True)
    test = torch.load(root / "data" / "digits4" / "test_subset.pt", weights_only=True)
    assert torch.bincount(train["labels"]).tolist() == [5] * 4 and torch.bincount(test["labels"]).tolist() == [20] * 4
    assert not set(train["indices"].tolist()) & set(test["indices"].tolist())
    assert "GD" in (root / "results" / "cnn_digits4_5pc" / "report.md").read_text()
    ck = torch.load(root / "models" / "mymlp" / "digits4_5pc" / "724" / "epoch_14.pt", weights_only=True)
    assert ck["model_factory"] == "mymodels:make_mlp" and "1.weight" in ck["state_dict"]
    assert torch.load(root / "tda_scores" / "mymlp_digits4_5pc" / "if" / "446.pt", weights_only=True)["scores"].shape \
        == (5, 20, 80)
    # the other methods take the model of your own too (its generic, non-CNN code paths)
    for name in ("run_ats", "run_loo"):
        script(name).main(["--experiment", "mymlp_digits4_5pc", "--seed_id", "0", "--workers", "1"])
    for output in ("ats", "loo"):
        assert torch.load(root / "tda_scores" / "mymlp_digits4_5pc" / output / "446.pt", weights_only=True)["scores"] \
            .isfinite().all()
    # the saved array through the script gives the same table as the array through significance()
    assert (root / "results" / "my_trak" / "mean_p_values.csv").read_bytes() == from_python
    # our own score directory as external scores: the same p-values as the pipeline's, next to them in one table
    summary = script("run_pvalues").main(["--experiment", "cnn_digits4_5pc", "--scores",
                                          str(root / "tda_scores" / "cnn_digits4_5pc" / "gd"), "--method_name", "gdcopy"])
    assert set(summary.mean_p.columns) == {"GD", "GC", "GDCOPY"}
    assert summary.mean_p["GD"].tolist() == summary.mean_p["GDCOPY"].tolist()
    assert "GDCOPY" in (root / "results" / "cnn_digits4_5pc" / "report.md").read_text()


# ---------------------------------------------------------------- tasks from datasets
def test_imagefolder_colour_task_end_to_end(tmp_path, monkeypatch):
    root = make_root(tmp_path / "root")
    folder = tmp_path / "shapes"
    images, labels = digit_images(per_class=6, colour=True, size=10)
    for k, (img, y) in enumerate(zip(images, labels)):
        split = "train" if k % 6 < 4 else "test"  # 4 training and 2 test images per class
        (folder / split / "abc"[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / split / "abc"[y] / f"{k:03d}.png")
    monkeypatch.setenv("TDA_ROOT", str(root))
    script("run_subset_generation").main(["--task", "shapes", "--hf_dataset", str(folder), "--num_per_class", "2",
                                          "--test_per_class", "2"])
    spec = get_task("shapes", root)
    assert (spec.channels, spec.image_size, spec.epochs, spec.source["format"]) == (3, 32, 30, "imagefolder")
    assert spec.source["class_names"] == ["a", "b", "c"] and spec.source["test_split"] == "test"
    train = torch.load(root / "data" / "shapes" / "train_subset_2pc.pt", weights_only=True)
    test = torch.load(root / "data" / "shapes" / "test_subset.pt", weights_only=True)
    assert train["images"].shape == (6, 3, 32, 32) and test["images"].shape == (6, 3, 32, 32)
    # the tensors are the files' pixels, resized by PIL to 32 x 32 and scaled to [0, 1]
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "c"))["train"]
    j = int(train["indices"][0])
    expect = np.asarray(ds[j]["image"].convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
    assert torch.equal(train["images"][0], torch.from_numpy(expect).permute(2, 0, 1))
    assert int(train["labels"][0]) == ds[j]["label"]
    cfg = parse_experiment("cnn_shapes_2pc", root)
    rows = training.train_seeds(cfg, list(SEEDS), progress=False)
    assert [r["checkpoint"]["epoch"] for r in rows] == [29, 29]
    script("run_gd_and_gc").main(["--experiment", "cnn_shapes_2pc", "--seed_id", "all", "--workers", "1"])
    summary = script("run_pvalues").main(["--experiment", "cnn_shapes_2pc"])
    assert list(summary.mean_p.columns) == ["GD", "GC"] and (cfg.results_dir / "report.md").exists()
    # the colour CNN's Grad-Dot equals per-pair autograd on a plain CNN(3) with the checkpoint's weights
    model = CNN(3, 10)  # the paper's 10-way head, whatever the number of classes
    model.load_state_dict(torch.load(cfg.ckpt_path(724, 29), weights_only=True)["state_dict"])
    model.eval()
    g_tr, g_te = autograd_grads(model, train["images"], train["labels"]), autograd_grads(model, test["images"],
                                                                                         test["labels"])
    close(torch.load(cfg.scores_path("gd", 724), weights_only=True)["scores"][-1], g_tr @ g_te.T, 1e-4)
    # the ViT takes the task too: its inputs are the [0, 1] images resized to its own size (32: as they are) and
    # normalised with the tiny ViT's mean and std of 0.5, (x - 0.5) / 0.5
    from tda import vit
    tiny = vit.make_tiny(tmp_path / "vit")
    script("run_vit_finetuning").main(["--experiment", "vit_shapes_2pc", "--seed_id", "all", "--workers", "1",
                                       "--model_name_or_path", str(tiny)])
    script("run_gd_and_gc").main(["--experiment", "vit_shapes_2pc", "--seed_id", "0", "--workers", "1"])
    vcfg = parse_experiment("vit_shapes_2pc", root)
    x = get_backend(vcfg).inputs(train, "train")
    torch.testing.assert_close(x, train["images"] * 2 - 1, rtol=0, atol=1e-6)
    vit_model = get_backend(vcfg).load(torch.load(vcfg.ckpt_path(446, 29), weights_only=True))
    g_tr = autograd_grads(vit_model, train["images"] * 2 - 1, train["labels"])
    g_te = autograd_grads(vit_model, test["images"] * 2 - 1, test["labels"])
    close(torch.load(vcfg.scores_path("gd", 446), weights_only=True)["scores"][-1], g_tr @ g_te.T, 1e-4)


def test_saved_dataset_classes_disjoint_test_and_provenance(tmp_path, monkeypatch):
    images, labels = digit_images(classes=(0, 1, 3), per_class=9)
    feats = datasets.Features({"picture": datasets.Image(), "digit": datasets.Value("int64")})
    datasets.Dataset.from_dict({"picture": images, "digit": labels}, features=feats).save_to_disk(tmp_path / "ds")
    root = make_root(tmp_path / "root")
    monkeypatch.setenv("TDA_ROOT", str(root))
    gen = script("run_subset_generation").main
    with pytest.raises(TDAError, match="cannot tell which column .* holds the labels"):
        gen(["--task", "mine", "--hf_dataset", str(tmp_path / "ds")])
    args = ["--task", "mine", "--hf_dataset", str(tmp_path / "ds"), "--label_column", "digit", "--classes", "3", "1",
            "--num_per_class", "2", "4", "--test_per_class", "3"]
    gen(args)
    d = root / "data" / "mine"
    tr, te = (torch.load(d / f, weights_only=True) for f in ("train_subset_4pc.pt", "test_subset.pt"))
    # classes 3 and 1 become 0 and 1; the test draw comes first and the training subsets avoid it
    assert [labels[i] for i in tr["indices"].tolist()] == [{0: 3, 1: 1}[y] for y in tr["labels"].tolist()]
    assert torch.bincount(te["labels"]).tolist() == [3, 3] and not set(tr["indices"].tolist()) & set(te["indices"].tolist())
    small = torch.load(d / "train_subset_2pc.pt", weights_only=True)["indices"].tolist()
    assert set(small) <= set(tr["indices"].tolist())
    assert torch.allclose(tr["images"][0, 0], torch.from_numpy(np.asarray(
        Image.fromarray(images[int(tr["indices"][0])]).resize((28, 28), Image.BILINEAR), dtype=np.float32) / 255))
    stamps = {p.name: p.read_bytes() for p in d.glob("*.pt")}
    gen(["--task", "mine", "--num_per_class", "2", "4"])  # defined once: the options are in task.json
    assert {p.name: p.read_bytes() for p in d.glob("*.pt")} == stamps
    with pytest.raises(TDAError, match=r"already defined differently .*test_per_class 3 -> 5"):
        gen(args[:-1] + ["5"])
    # a changed image changes the source digest: the subsets are rebuilt, and say why
    images[int(tr["indices"][0])] = 255 - images[int(tr["indices"][0])]
    datasets.Dataset.from_dict({"picture": images, "digit": labels}, features=feats).save_to_disk(tmp_path / "ds2")
    (tmp_path / "ds").rename(tmp_path / "old")
    (tmp_path / "ds2").rename(tmp_path / "ds")
    lines = []
    written, _ = data.generate_subsets(get_task("mine", root), [4], d, "", log=lines.append)
    assert "rebuilding train_subset_4pc.pt: source changed" in lines and d / "train_subset_4pc.pt" in written


def fake_hub_cache(cache: Path, repo: str, splits: dict[str, tuple[list, list]], features) -> None:
    """What an online `load_dataset(repo)` leaves in the Hugging Face cache, written here without a network."""
    from datasets.arrow_writer import ArrowWriter
    name = repo.split("/")[-1]
    d = cache / repo.replace("/", "___") / "default" / "0.0.0" / "0123456789abcdef"
    d.mkdir(parents=True)
    infos = datasets.SplitDict()
    for split, (images, labels) in splits.items():
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).with_format("arrow")[:]
        with ArrowWriter(path=str(d / f"{name}-{split}.arrow"), features=features) as w:
            w.write_table(table)
            n, _ = w.finalize()
        infos.add(datasets.SplitInfo(name=split, num_examples=n))
    datasets.DatasetInfo(features=features, splits=infos, config_name="default", dataset_name=name).write_to_directory(d)


def test_builtin_mnist3_from_the_hub_cache_equals_torchvision(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = write_mnist_raw(tmp_path / "raw" / "MNIST" / "raw")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    pil = lambda xs: [Image.fromarray(x.astype(np.uint8), "L") for x in xs]  # noqa: E731
    fake_hub_cache(tmp_path / "cache", "someone/mnist", {"train": (pil(xtr), ytr.tolist()),
                                                         "test": (pil(xte), yte.tolist())}, feats)
    monkeypatch.setattr(hf_data.hf_datasets().config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    spec = get_task("mnist3")
    data.generate_subsets(spec, [5], tmp_path / "tv", tmp_path / "raw")
    data.generate_subsets(spec, [5], tmp_path / "hf", "", hf=hf_data.HFSource("someone/mnist"))
    for f in ("train_subset_5pc.txt", "test_subset.txt", "train_subset_5pc.pt", "test_subset.pt"):
        assert (tmp_path / "tv" / f).read_bytes() == (tmp_path / "hf" / f).read_bytes(), f
    with pytest.raises(TDAError) as e:
        data.load_source(spec, "", hf=hf_data.HFSource("someone/not-cached"))
    assert "save_to_disk" in str(e.value) and "\n" not in str(e.value)


def test_builtin_cifar10_from_save_to_disk_equals_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar
    xtr, ytr, xte, yte = write_cifar(tmp_path / "raw")
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.exists(path))
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    pil = lambda xs: [Image.fromarray(x.reshape(3, 32, 32).transpose(1, 2, 0)) for x in xs]  # noqa: E731
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"img": pil(x), "label": y.tolist()}, features=feats)
                          for s, x, y in (("train", xtr, ytr), ("test", xte, yte))}).save_to_disk(tmp_path / "c10")
    spec = get_task("cifar10")
    data.generate_subsets(spec, [2], tmp_path / "tv", tmp_path / "raw")
    data.generate_subsets(spec, [2], tmp_path / "hf", "", hf=hf_data.HFSource(str(tmp_path / "c10")))
    for f in ("train_subset_2pc.txt", "test_subset.txt", "train_subset_2pc.pt", "test_subset.pt"):
        assert (tmp_path / "tv" / f).read_bytes() == (tmp_path / "hf" / f).read_bytes(), f
    with pytest.raises(TDAError, match="it is another dataset"):
        data.load_source(get_task("mnist3"), "", hf=hf_data.HFSource(str(tmp_path / "c10")))


# ---------------------------------------------------------------- models of your own
FACTORIES = '''
from torch import nn
from tda.models import CNN


def paper_cnn(in_channels, image_size, num_classes):
    return CNN(in_channels, num_classes)


def not_a_model(in_channels, image_size, num_classes):
    return "cnn"


def wrong_outputs(in_channels, image_size, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 3))
'''


def test_model_factory_is_a_model_family(tmp_path, monkeypatch):
    root = make_root(tmp_path)
    (root / "userfactories.py").write_text(FACTORIES)
    monkeypatch.setenv("TDA_ROOT", str(root))
    monkeypatch.setattr(sys, "path", [str(root), *sys.path])
    monkeypatch.delitem(sys.modules, "userfactories", raising=False)
    with pytest.raises(TDAError, match=r"unknown model 'mine'.*model in \{cnn, cnn3l, vit\}"):
        parse_experiment("mine_digits3_14pc", root)
    for spec, needle in [("userfactories:not_a_model", "not a torch.nn.Module"),
                         ("userfactories:wrong_outputs", "expected logits of shape (2, 10)"),
                         ("userfactories:absent", "has no function 'absent'"),
                         ("nomodule:f", "cannot import module 'nomodule'"), ("nocolon", "expected module:function")]:
        with pytest.raises(TDAError) as e:
            register("mine", spec, root)
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TDAError, match="bad model name"):
        register("cnn", "userfactories:paper_cnn", root)
    register("mine", "userfactories:paper_cnn", root)
    assert json.loads((root / "models.json").read_text()) == {"mine": "userfactories:paper_cnn"}
    cfg = parse_experiment("mine_digits3_14pc", root)
    backend = get_backend(cfg)
    assert isinstance(backend, CustomBackend) and cfg.train_script == "run_cnn_training.py"
    # the same protocol as the built-in family: the paper's CNN through the factory trains bitwise equally
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(42, 1, 28, 28, generator=g), torch.arange(42) % 3
    ours = training.train_member(backend, 296, x, y, x[:9], y[:9], progress=False)
    ref = training.train_member(CNNBackend(ExperimentConfig("cnn", "digits3", 14, root=root)), 296, x, y, x[:9], y[:9],
                                progress=False)
    for a, b in zip(ours, ref):
        assert a["model_factory"] == "userfactories:paper_cnn" and a["epoch"] == b["epoch"]
        assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    # worker processes get the backend pickled, and import the factory themselves
    clone = pickle.loads(pickle.dumps(backend))
    assert clone._fn is None and isinstance(clone.build(), CNN)
    # editing the factory's file changes the checkpoints' provenance: they are retrained
    before = backend.provenance()
    (root / "userfactories.py").write_text(FACTORIES + "\n# edited\n")
    assert CustomBackend(cfg).provenance()["factory source"] != before["factory source"]
    (root / "models.json").write_text('{"Bad name": "m:f"}')
    with pytest.raises(TDAError, match="bad entry 'Bad name'"):
        parse_experiment("cnn_digits3_14pc", root)


def test_bad_definitions_are_one_line_errors(tmp_path, monkeypatch):
    images, labels = digit_images(per_class=4)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=12)})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats).save_to_disk(tmp_path / "ds")
    monkeypatch.setenv("TDA_ROOT", str(make_root(tmp_path / "root")))
    gen = script("run_subset_generation").main
    for args, needle in [(["--task", "Bad", "--hf_dataset", str(tmp_path / "ds")], "bad task name"),
                         (["--task", "x", "--hf_dataset", str(tmp_path / "ds"), "--classes", "0", "5"], "class 5 has no"),
                         (["--task", "x", "--hf_dataset", str(tmp_path / "ds"), "--image_column", "im"], "not a column"),
                         (["--task", "x", "--hf_dataset", str(tmp_path / "ds"), "--num_per_class", "2"],
                          "class 0 has only 4"),
                         (["--task", "x", "--hf_dataset", str(tmp_path / "nope")], "not found"),
                         (["--task", "digits3", "--hf_dataset", str(tmp_path / "ds")], "reads no Hugging Face"),
                         (["--task", "digits3", "--classes", "0", "1"], "pass it with --hf_dataset")]:
        with pytest.raises(TDAError) as e:
            gen(args)
        assert needle in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
