"""The paper's published index lists: shipped in data/paper_subsets/, copied into a task by
`run_subset_generation.py --paper_subsets`, and used as they are by the subsets step, on MNIST IDX and CIFAR-10
pickle files built here, just large enough to hold the listed indices."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, script
from tda import io
from tda.config import TDAError, get_task, parse_experiment
from tda.paper_subsets import PAPER_DIR, install_paper_subsets, paper_num_per_class
from test_foundation import write_idx

SHIPPED = {  # file -> (entries, size of the split it indexes)
    "mnist3/train_subset_10pc.txt": (30, 60000), "mnist3/train_subset_20pc.txt": (60, 60000),
    "mnist3/train_subset_50pc.txt": (150, 60000), "mnist3/test_subset.txt": (900, 10000),
    "mnist3/full_mnist_analysis_train.txt": (100, 60000), "mnist3/full_mnist_analysis_test.txt": (10, 10000),
    **{f"cifar10/train_subset_{n}pc.txt": (10 * n, 50000) for n in (10, 20, 30, 40, 50, 60)},
    "cifar10/test_subset.txt": (500, 10000)}


def paper(name: str) -> list[int]:
    return io.read_index_list(PAPER_DIR / name)


def test_the_shipped_lists_are_complete_and_well_formed():
    assert PAPER_DIR == REPO / "data" / "paper_subsets"
    assert sorted(str(p.relative_to(PAPER_DIR)) for p in PAPER_DIR.rglob("*.txt")) == sorted(SHIPPED)
    for name, (entries, size) in SHIPPED.items():
        idx = paper(name)
        assert len(idx) == entries and len(set(idx)) == entries and 0 <= min(idx) and max(idx) < size, name
    assert paper_num_per_class("mnist3") == [10, 20, 50] and paper_num_per_class("cifar10") == [10, 20, 30, 40, 50, 60]
    readme = (PAPER_DIR / "README.md").read_text()
    assert "MIT License" in readme and "Copyright (c) 2023 Elisa Nguyen" in readme
    assert set(re.findall(r"`(\w+\.txt)`", readme)) >= {"test_subset.txt", "full_mnist_analysis_train.txt"}
    # git ships them although data/ is ignored
    assert "!data/paper_subsets/" in (REPO / ".gitignore").read_text().splitlines()


def pattern(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """n uint8 images whose first two pixels spell their own index (low byte, high byte)."""
    x = np.zeros((n, int(np.prod(shape))), dtype=np.uint8)
    x[:, 0], x[:, 1] = np.arange(n) % 256, np.arange(n) // 256
    return x.reshape(n, *shape)


def grouped_labels(size: int, lists: dict[int, list[int]], other: int) -> np.ndarray:
    """Labels under which each list holds n of each class in blocks of n (its first n class 0, ...); `other`
    for every index no list names."""
    y = np.full(size, other, dtype=np.int64)
    for n, idx in lists.items():
        y[idx] = np.arange(len(idx)) // n
    return y


def make_mnist(root: Path) -> None:
    """torchvision's MNIST layout with all 60000 + 10000 images, each 2x2 pixels (what the lists need is the count)."""
    lists = {n: paper(f"mnist3/train_subset_{n}pc.txt") for n in (10, 20, 50)}
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", pattern(60000, (2, 2)))
    write_idx(raw / "train-labels-idx1-ubyte", grouped_labels(60000, lists, other=7))
    write_idx(raw / "t10k-images-idx3-ubyte", pattern(10000, (2, 2)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(10000) % 10)


def run(*args: str) -> None:
    script("run_subset_generation").main(list(args))


def test_mnist3_takes_the_papers_lists_in_their_order(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    make_mnist(tmp_path / "raw")
    out = tmp_path / "data" / "mnist3"
    run("--task", "mnist3", "--paper_subsets", "--data_root", str(tmp_path / "raw"))
    assert "4 copied, 0 already there" in capsys.readouterr().out
    for n in (10, 20, 50):
        want = paper(f"mnist3/train_subset_{n}pc.txt")
        assert io.read_index_list(out / f"train_subset_{n}pc.txt") == want
        t = torch.load(out / f"train_subset_{n}pc.pt", weights_only=True)
        assert t["indices"].tolist() == want  # the listed order, not sorted
        pixels = (t["images"][:, 0, 0, :2] * 255).round().long()  # the index each image spells
        assert (pixels[:, 0] + 256 * pixels[:, 1]).tolist() == want
        assert t["labels"].tolist() == [k // n for k in range(3 * n)]
    test = torch.load(out / "test_subset.pt", weights_only=True)
    assert test["indices"].tolist() == paper("mnist3/test_subset.txt") and test["images"].shape == (900, 1, 2, 2)

    run("--task", "mnist3", "--paper_subsets", "--data_root", str(tmp_path / "raw"))  # again: nothing to do
    assert "4 already there" in capsys.readouterr().out
    mine = sorted(paper("mnist3/train_subset_10pc.txt"))  # the same indices in another order: another list
    io.write_index_list(mine, out / "train_subset_10pc.txt")
    with pytest.raises(TDAError, match=r"train_subset_10pc\.txt holds another index list than the paper's"):
        run("--task", "mnist3", "--paper_subsets", "--data_root", str(tmp_path / "raw"))
    assert io.read_index_list(out / "train_subset_10pc.txt") == mine  # refused: nothing changed
    run("--task", "mnist3", "--paper_subsets", "--num_per_class", "10", "--overwrite", "--data_root",
        str(tmp_path / "raw"))
    t = torch.load(out / "train_subset_10pc.pt", weights_only=True)
    assert t["indices"].tolist() == paper("mnist3/train_subset_10pc.txt")


def test_cifar10_takes_the_papers_lists(tmp_path, monkeypatch):
    """The 10 per class list and the test list lie within the first 10000 images of each split: a CIFAR-10 with
    10000 training images (the first batch; the other four empty) and 10000 test images holds them."""
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: Path(path).exists())  # tiny files, no md5
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    ten, test = paper("cifar10/train_subset_10pc.txt"), paper("cifar10/test_subset.txt")
    base = tmp_path / "raw" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    labels = grouped_labels(10000, {10: ten}, other=0)
    for b in range(1, 6):
        x, y = (pattern(10000, (3072,)), labels.tolist()) if b == 1 else (np.zeros((0, 3072), np.uint8), [])
        pickle.dump({"data": x, "labels": y}, open(base / f"data_batch_{b}", "wb"))
    pickle.dump({"data": pattern(10000, (3072,)), "labels": (np.arange(10000) % 10).tolist()},
                open(base / "test_batch", "wb"))
    pickle.dump({"label_names": [str(i) for i in range(10)]}, open(base / "batches.meta", "wb"))
    run("--task", "cifar10", "--paper_subsets", "--num_per_class", "10", "--data_root", str(tmp_path / "raw"))
    out = tmp_path / "data" / "cifar10"
    assert sorted(p.name for p in out.glob("*.txt")) == ["test_subset.txt", "train_subset_10pc.txt"]
    for name, want in (("train_subset_10pc", ten), ("test_subset", test)):
        t = torch.load(out / f"{name}.pt", weights_only=True)
        assert t["indices"].tolist() == want
        pixels = ((t["images"][:, 0, 0, :2] * 0.5 + 0.5) * 255).round().long()  # undo (x - 0.5) / 0.5
        assert (pixels[:, 0] + 256 * pixels[:, 1]).tolist() == want


def test_paper_subsets_refuse_what_the_paper_did_not_publish(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    for args, msg in ((["--task", "digits3"], "published index lists for cifar10, mnist3 only, not digits3"),
                      (["--task", "mnist3", "--num_per_class", "30"], "no mnist3 list for --num_per_class 30 (it has "
                                                                      "10, 20, 50)")):
        with pytest.raises(TDAError, match=re.escape(msg)):
            run(*args, "--paper_subsets")
    assert not (tmp_path / "data").exists()  # refused before anything was written
    # a refusal of one list writes none of them
    (tmp_path / "d").mkdir()
    io.write_index_list([1, 2, 3], tmp_path / "d" / "train_subset_20pc.txt")
    with pytest.raises(TDAError, match="holds another index list"):
        install_paper_subsets("mnist3", tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["train_subset_20pc.txt"]


def test_the_documented_grid_matches_the_tasks_and_the_lists(tmp_path, monkeypatch):
    """docs/paper_grid.md's table: each row's epochs and test size are the task's, its sizes the published lists',
    and its command names experiments of those sizes."""
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| ([\d, ]+)[^|]*\| (\d+) \| (\d+) \| `bash run_experiment\.sh ([^`]*)` \|$",
                      (REPO / "docs" / "paper_grid.md").read_text(), flags=re.M)
    assert [(m, t) for m, t, *_ in rows] == [("cnn", "mnist3"), ("cnn", "cifar10"), ("vit", "mnist3"),
                                              ("vit", "cifar10")]
    for model, task, sizes, m, epochs, command in rows:
        assert [int(n) for n in sizes.split(",")] == paper_num_per_class(task)
        assert int(m) == len(paper(f"{task}/test_subset.txt")) == get_task(task).test_size
        assert int(epochs) == get_task(task).epochs
        names = command.split(" -- ")[0].split()
        assert all(parse_experiment(e).model == model and parse_experiment(e).task == task for e in names)
        if model == "cnn":  # the CNN rows run every published size
            assert [parse_experiment(e).num_per_class for e in names] == paper_num_per_class(task)
