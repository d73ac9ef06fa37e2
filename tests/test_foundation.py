"""Config, data loading on real on-disk formats, subsets, seeded training, one-line errors."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from helpers import REPO
from tda import data, io, training
from tda.backends import CNNBackend, get_backend
from tda.config import PAPER_SEEDS, ExperimentConfig, TDAError, get_task, parse_experiment
from tda.models import CNN, CNN3L
from tda.seeds import load_seeds, resolve_seed_ids


# ------------------------------------------------------------------ helpers writing real formats
def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """Write an IDX file the way MNIST ships it (big-endian header, uint8 payload)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open(path, "wb") if gz else open(path, "wb")).write(raw)


def fake_mnist(n_train: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
            rng.integers(0, 256, (n_test, 28, 28)), rng.permutation(np.arange(n_test) % 10))


def write_mnist_raw(folder: Path, gz: bool = False, seed: int = 0):
    xtr, ytr, xte, yte = fake_mnist(120, 1000, seed)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", xtr, gz)
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", ytr, gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", xte, gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", yte, gz)
    return xtr, ytr, xte, yte


def write_cifar(root: Path):
    """CIFAR-10 python pickle batches: 5 train batches of 20 and a test batch of 600."""
    rng = np.random.default_rng(1)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = rng.integers(0, 256, (20, 3072)).astype(np.uint8)
        y = [int(v) for v in (np.arange(20) + b) % 10]
        pickle.dump({"data": x, "labels": y}, open(base / f"data_batch_{b}", "wb"))
        xs.append(x); ys += y
    xt = rng.integers(0, 256, (600, 3072)).astype(np.uint8)
    yt = [int(v) for v in np.arange(600) % 10]
    pickle.dump({"data": xt, "labels": yt}, open(base / "test_batch", "wb"))
    pickle.dump({"label_names": [str(i) for i in range(10)]}, open(base / "batches.meta", "wb"))
    return np.vstack(xs), np.array(ys), xt, np.array(yt)


# ------------------------------------------------------------------ config
def test_parse_experiment_and_constants():
    cfg = parse_experiment("cnn_digits3_10pc", root=Path("/r"))
    assert (cfg.model, cfg.task, cfg.num_per_class, cfg.name) == ("cnn", "digits3", 10, "cnn_digits3_10pc")
    assert cfg.epochs == 15 and cfg.ckpt_epochs == [10, 11, 12, 13, 14]
    assert parse_experiment("cnn3l_cifar10_20pc").ckpt_epochs == [25, 26, 27, 28, 29]
    assert cfg.ckpt_path(446, 10) == Path("/r/models/cnn/digits3_10pc/446/epoch_10.pt")
    assert cfg.scores_path("loo", 446) == Path("/r/tda_scores/cnn_digits3_10pc/loo/446.pt")
    assert cfg.n_train == 30


@pytest.mark.parametrize("bad", ["cnn_mnist_10pc", "resnet_mnist3_10pc", "cnn_mnist3", "cnn_mnist3_0pc", ""])
def test_bad_experiment_is_one_line_error(bad):
    with pytest.raises(TDAError) as e:
        parse_experiment(bad)
    msg = str(e.value)
    assert "\n" not in msg and "cnn_digits3_10pc" in msg


def test_random_seeds_file_holds_paper_seeds():
    seeds = torch.load(REPO / "random_seeds.pt", weights_only=True)
    assert seeds.tolist() == list(PAPER_SEEDS) and load_seeds(REPO) == list(PAPER_SEEDS)
    assert resolve_seed_ids("all", list(PAPER_SEEDS)) == list(range(10))
    assert resolve_seed_ids("3", list(PAPER_SEEDS)) == [3]
    for bad in ("10", "-1", "x"):
        with pytest.raises(TDAError):
            resolve_seed_ids(bad, list(PAPER_SEEDS))


# ------------------------------------------------------------------ loaders on real on-disk formats
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_matches_written_arrays(tmp_path, gz):
    xtr, ytr, xte, yte = write_mnist_raw(tmp_path, gz=gz)
    train, test = data.load_source(get_task("fmnist3"), tmp_path)
    assert torch.equal(train.images, torch.from_numpy(xtr.astype(np.uint8)))
    assert torch.equal(train.labels, torch.from_numpy(ytr).long())
    assert torch.equal(test.images, torch.from_numpy(xte.astype(np.uint8)))


def test_idx_reader_rejects_truncated_file(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 4, 4)))
    (tmp_path / "y").write_bytes((tmp_path / "x").read_bytes()[:-5])
    with pytest.raises(TDAError, match="truncated"):
        data.read_idx(tmp_path / "y")


def test_torchvision_mnist_path_and_subsets(tmp_path):
    xtr, ytr, xte, yte = write_mnist_raw(tmp_path / "raw" / "MNIST" / "raw")
    spec = get_task("mnist3")
    out = tmp_path / "data" / "mnist3"
    data.generate_subsets(spec, [5, 10], out, tmp_path / "raw")
    tr = torch.load(out / "train_subset_10pc.pt", weights_only=True)
    te = torch.load(out / "test_subset.pt", weights_only=True)
    # balanced over digits 0, 1, 2; images are the raw pixels / 255 of those indices
    assert torch.bincount(tr["labels"], minlength=10)[:3].tolist() == [10, 10, 10]
    assert tr["images"].shape == (30, 1, 28, 28)
    assert torch.allclose(tr["images"][:, 0], torch.from_numpy(xtr[tr["indices"].numpy()]).float() / 255)
    assert torch.equal(tr["labels"], torch.from_numpy(ytr[tr["indices"].numpy()]).long())
    # mnist3's test set: 900 drawn uniformly from the whole test set, all ten digits present
    assert len(te["indices"]) == 900 and len(set(te["indices"].tolist())) == 900
    assert set(te["labels"].tolist()) == set(range(10))
    assert io.read_index_list(out / "test_subset.txt") == te["indices"].tolist()
    # nested draws: the 5pc subset is inside the 10pc subset
    assert set(io.read_index_list(out / "train_subset_5pc.txt")) <= set(tr["indices"].tolist())


def test_torchvision_cifar10_path(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar
    xtr, ytr, xte, yte = write_cifar(tmp_path / "raw")
    # the real loader checks the md5 of the full-size files; our tiny files can only pass existence
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.exists(path))
    out = tmp_path / "data" / "cifar10"
    data.generate_subsets(get_task("cifar10"), [3], out, tmp_path / "raw")
    tr = torch.load(out / "train_subset_3pc.pt", weights_only=True)
    te = torch.load(out / "test_subset.pt", weights_only=True)
    assert torch.bincount(tr["labels"], minlength=10).tolist() == [3] * 10
    assert torch.bincount(te["labels"], minlength=10).tolist() == [50] * 10
    i = int(tr["indices"][0])
    expect = torch.from_numpy(xtr[i].reshape(3, 32, 32)).float() / 255 * 2 - 1  # mean 0.5, std 0.5
    assert torch.allclose(tr["images"][0], expect, atol=1e-6)
    assert int(tr["labels"][0]) == ytr[i]


def test_offline_missing_dataset_says_where_to_put_files(tmp_path, monkeypatch):
    import torchvision
    def no_network(self):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(TDAError) as e:
        data.load_source(get_task("mnist3"), tmp_path)
    assert "MNIST/raw" in str(e.value) and "\n" not in str(e.value)


def test_digits_subsets_balanced_disjoint_deterministic(tmp_path):
    spec = get_task("digits3")
    a, b = tmp_path / "a", tmp_path / "b"
    data.generate_subsets(spec, [10, 50], a, "")
    data.generate_subsets(spec, [10, 50], b, "")
    for name in ("train_subset_10pc.txt", "train_subset_50pc.txt", "test_subset.txt"):
        assert (a / name).read_text() == (b / name).read_text()
    tr = torch.load(a / "train_subset_50pc.pt", weights_only=True)
    te = torch.load(a / "test_subset.pt", weights_only=True)
    assert torch.bincount(tr["labels"]).tolist() == [50, 50, 50]
    assert torch.bincount(te["labels"]).tolist() == [100, 100, 100]
    assert not set(tr["indices"].tolist()) & set(te["indices"].tolist())
    assert tr["images"].shape == (150, 1, 28, 28) and 0 <= tr["images"].min() and tr["images"].max() <= 1
    with pytest.raises(TDAError, match="larger than"):
        data.generate_subsets(spec, [1000], tmp_path / "c", "")


def test_existing_index_files_are_used_in_listed_order(tmp_path):
    spec = get_task("digits3")
    from sklearn.datasets import load_digits
    y = load_digits().target
    listed = [int(i) for c in (2, 0, 1) for i in np.flatnonzero(y == c)[:2]]
    listed = listed[::-1]  # deliberately not sorted
    test_listed = [int(i) for i in np.flatnonzero(y == 1)[-3:]]
    io.write_index_list(listed, tmp_path / "train_subset_2pc.txt")
    io.write_index_list(test_listed, tmp_path / "test_subset.txt")
    data.generate_subsets(spec, [2], tmp_path, "")
    tr = torch.load(tmp_path / "train_subset_2pc.pt", weights_only=True)
    assert tr["indices"].tolist() == listed
    assert tr["labels"].tolist() == [int(y[i]) for i in listed]
    assert torch.load(tmp_path / "test_subset.pt", weights_only=True)["indices"].tolist() == test_listed
    assert io.read_index_list(tmp_path / "train_subset_2pc.txt") == listed


@pytest.mark.parametrize("edit,needle", [
    (lambda idx, y: idx[:-1], "must hold 2 images of each class"),
    (lambda idx, y: idx[:-1] + idx[:1], "more than once"),
    (lambda idx, y: idx[:-1] + [len(y) + 5], "outside 0.."),
    (lambda idx, y: idx[:-1] + [int(np.flatnonzero(y == 7)[0])], "classes [7]"),
])
def test_bad_user_index_lists_are_rejected(tmp_path, edit, needle):
    from sklearn.datasets import load_digits
    y = load_digits().target
    spec = get_task("digits3")
    data.generate_subsets(spec, [2], tmp_path, "")
    txt = tmp_path / "train_subset_2pc.txt"
    io.write_index_list(edit(io.read_index_list(txt), y), txt)
    with pytest.raises(TDAError) as e:
        data.generate_subsets(spec, [2], tmp_path, "")
    assert needle in str(e.value) and str(txt) in str(e.value) and "\n" not in str(e.value)


def test_subset_tensors_rebuilt_only_when_their_inputs_change(tmp_path):
    from sklearn.datasets import load_digits
    y = load_digits().target
    spec = get_task("digits3")
    data.generate_subsets(spec, [2, 3], tmp_path, "")
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    written, kept = data.generate_subsets(spec, [2, 3], tmp_path, "")
    assert written == [] and len(kept) == 3
    txt = tmp_path / "train_subset_2pc.txt"
    idx = io.read_index_list(txt)
    label = y[idx[0]]
    idx[0] = next(int(i) for i in np.flatnonzero(y == label) if int(i) not in idx)  # same class, other image
    io.write_index_list(idx, txt)
    lines = []
    written, kept = data.generate_subsets(spec, [2, 3], tmp_path, "", log=lines.append)
    assert written == [tmp_path / "train_subset_2pc.pt"] and lines == ["rebuilding train_subset_2pc.pt: index list changed"]
    assert torch.load(written[0], weights_only=True)["indices"].tolist() == idx
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt") if p.name != "train_subset_2pc.pt"} == \
        {k: v for k, v in stamps.items() if k != "train_subset_2pc.pt"}


# ------------------------------------------------------------------ models and training
def test_cnn_shapes_and_layer_order():
    for cls, ch, size in [(CNN, 1, 28), (CNN, 3, 32), (CNN3L, 1, 28), (CNN3L, 3, 32)]:
        m = cls(ch)
        assert m(torch.zeros(2, ch, size, size)).shape == (2, 10)
        layers = list(dict.fromkeys(n.split(".")[0] for n, _ in m.named_parameters()))
        convs = ["conv1", "conv2"] + (["conv3"] if cls is CNN3L else [])
        assert layers == convs + ["fc1", "fc2"]  # the reference's creation order
    assert CNN(1).conv1.kernel_size == (3, 3) and CNN(3).conv1.kernel_size == (5, 5)


def tiny_split(n, seed, channels=1, size=28):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(n, channels, size, size, generator=g),
            "labels": torch.arange(n) % 3, "indices": torch.arange(n)}


@pytest.mark.parametrize("model", ["cnn", "cnn3l"])
def test_training_bitwise_equals_plain_pytorch_loop(model):
    cfg = ExperimentConfig(model=model, task="digits3", num_per_class=14)
    train, test = tiny_split(42, 0), tiny_split(9, 1)
    ckpts = training.train_member(get_backend(cfg), 296, train["images"], train["labels"], test["images"],
                                  test["labels"], progress=False)

    # independent reference loop: seed, build, DataLoader(shuffle=True), torch.optim.Adam
    torch.manual_seed(296)
    ref = (CNN if model == "cnn" else CNN3L)(1)
    loader = DataLoader(TensorDataset(train["images"], train["labels"]), batch_size=32, shuffle=True)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, weight_decay=5e-3)
    saved = {}
    for epoch in range(15):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(ref(x), y).backward()
            opt.step()
        if epoch >= 10:
            saved[epoch] = {k: v.clone() for k, v in ref.state_dict().items()}
    assert [c["epoch"] for c in ckpts] == [10, 11, 12, 13, 14]
    for c in ckpts:
        for k, v in saved[c["epoch"]].items():
            assert torch.equal(c["state_dict"][k], v), (c["epoch"], k)
    ref.eval()
    with torch.no_grad():
        acc = (ref(test["images"]).argmax(1) == test["labels"]).float().mean().item()
    assert ckpts[-1]["test_accuracy"] == pytest.approx(acc)


def test_same_seed_same_init_and_batches():
    cfg = ExperimentConfig(model="cnn", task="digits3", num_per_class=20)
    m1, b1 = CNNBackend(cfg).initial(571, 60)
    m2, b2 = CNNBackend(cfg).initial(571, 60)
    torch.manual_seed(571)
    ref = CNN(1)
    loader = DataLoader(TensorDataset(torch.arange(60)), batch_size=32, shuffle=True)
    ref_batches = [[b[0] for b in loader] for _ in range(cfg.epochs)]
    for k, v in ref.state_dict().items():
        assert torch.equal(m1.state_dict()[k], v) and torch.equal(m2.state_dict()[k], v)
    flat = lambda bs: [t.tolist() for e in bs for t in e]  # noqa: E731
    assert flat(b1) == flat(b2) == flat(ref_batches)
    assert flat(CNNBackend(cfg).initial(572, 60)[1]) != flat(b1)


# ------------------------------------------------------------------ scripts
def test_scripts_train_digits_skip_finished_and_reject_bad_input(tmp_path, prewarmed):
    def run_script(name, *args, root):  # as a user would: its own process, cwd and TDA_ROOT the experiment's root
        return prewarmed.run([REPO / name, *args], cwd=root, env={"TDA_ROOT": str(root)})

    (tmp_path / "random_seeds.pt").write_bytes((REPO / "random_seeds.pt").read_bytes())
    r = run_script("run_subset_generation.py", "--task", "digits3", "--num_per_class", "4", root=tmp_path)
    assert r.returncode == 0, r.stderr
    pt = tmp_path / "data" / "digits3" / "train_subset_4pc.pt"
    before = pt.stat().st_mtime_ns
    r = run_script("run_subset_generation.py", "--task", "digits3", "--num_per_class", "4", root=tmp_path)
    assert r.returncode == 0 and "all up to date" in r.stdout and pt.stat().st_mtime_ns == before
    r = run_script("run_cnn_training.py", "--experiment", "cnn_digits3_4pc", "--seed_id", "1", "--device", "cpu",
                   root=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = parse_experiment("cnn_digits3_4pc", root=tmp_path)
    files = sorted(cfg.seed_dir(724).iterdir())
    assert [f.name for f in files] == [f"epoch_{e}.pt" for e in range(10, 15)]
    ck = torch.load(files[-1], weights_only=True)
    assert set(ck) >= {"state_dict", "epoch", "train_loss", "test_accuracy"} and ck["epoch"] == 14
    mtimes = [f.stat().st_mtime_ns for f in files]
    r = run_script("run_cnn_training.py", "--experiment", "cnn_digits3_4pc", "--seed_id", "1", root=tmp_path)
    assert r.returncode == 0 and "already trained" in r.stdout
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    for args, needle in [(["--experiment", "cnn_digits3_4pc", "--seed_id", "10"], "out of range"),
                         (["--experiment", "cnn_foo_4pc", "--seed_id", "0"], "unknown task"),
                         (["--experiment", "cnn_digits3_7pc", "--seed_id", "0"], "run_subset_generation.py")]:
        r = run_script("run_cnn_training.py", *args, root=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_script("run_subset_generation.py", "--task", "svhn", root=tmp_path)
    assert r.returncode == 2 and "unknown task" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_checkpoint_is_one_line_error(tmp_path):
    cfg = parse_experiment("cnn_digits3_4pc", root=tmp_path)
    p = cfg.ckpt_path(446, 10)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(TDAError) as e:
        io.load_checkpoint(cfg, 446, 10)
    assert "corrupt" in str(e.value) and "run_cnn_training.py" in str(e.value)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError):
        io.atomic_save({"a": torch.zeros(3), "b": Boom()}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []
    io.atomic_save({"a": torch.zeros(3)}, tmp_path / "ok.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "ok.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["ok.pt"]
