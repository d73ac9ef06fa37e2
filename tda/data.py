"""Datasets, their transforms and the deterministic class-balanced subsets of each task.

Sources: torchvision, IDX files and scikit-learn for the built-in tasks, or Hugging Face `datasets`
(`tda.hf_data`) for a built-in task's copy and for tasks defined from a dataset of the user's own.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import hf_data, io, provenance
from .config import SUBSET_GENERATION_SEED, TaskSpec, TDAError
from .hf_data import HFSource

#: bump when `transform` changes, so existing subset tensors are rebuilt
TRANSFORM_VERSION = 1


@dataclass
class RawSplit:
    """Images as stored by the source (uint8 HxW / HxWxC or float; or decoded on indexing) and integer labels.

    `digest`: the source's own content digest where it has one (datasets read with `tda.hf_data`);
    otherwise the images and labels are hashed.
    """

    images: torch.Tensor | hf_data.ImageColumn
    labels: torch.Tensor
    digest: str | None = None

    def source_digest(self) -> str:
        """What the subset tensors drawn from this split record as their source."""
        return self.digest or provenance.digest([self.images, self.labels])


def user_defined(spec: TaskSpec) -> bool:
    """A task defined from a dataset of the user's own (data/<task>/task.json), not a built-in one."""
    return spec.source is not None


def single_pool(spec: TaskSpec) -> bool:
    """Train and test are drawn from one pool (digits3, a dataset without a test split): test first, disjointly."""
    return spec.name == "digits3" or (user_defined(spec) and not spec.source.get("test_split"))


def test_classes(spec: TaskSpec) -> tuple[int, ...] | None:
    """The classes a per-class test draw covers (None: the test set is drawn uniformly from every class)."""
    if spec.test_per_class is None:
        return None
    return spec.train_classes if spec.name == "digits3" or user_defined(spec) else tuple(range(10))


# ---------------------------------------------------------------- sources
def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (MNIST's format; `.gz` too) into a tensor."""
    path = Path(path)
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TDAError(f"{path} is not an IDX file: replace it with the original download")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise TDAError(f"{path}: unknown IDX data type {raw[2]:#x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise TDAError(f"{path} is truncated ({data.size} values for shape {shape}): download it again")
    return torch.from_numpy(data.astype(data.dtype.newbyteorder("="), copy=True).reshape(shape))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise TDAError(f"missing {stem}[.gz] in {root}: `apt-get install dataset-fashion-mnist` "
                   f"or pass --data_root with Fashion-MNIST's IDX files")


def _load_fmnist(root: Path) -> tuple[RawSplit, RawSplit]:
    root = Path(root)
    if not root.is_dir():
        raise TDAError(f"Fashion-MNIST directory {root} not found: `apt-get install dataset-fashion-mnist` "
                       f"or pass --data_root DIR holding train-images-idx3-ubyte etc.")
    split = lambda p: RawSplit(read_idx(_find_idx(root, f"{p}-images-idx3-ubyte")),  # noqa: E731
                               read_idx(_find_idx(root, f"{p}-labels-idx1-ubyte")).long())
    return split("train"), split("t10k")


def _torchvision(cls, root: Path, where: str):
    """Instantiate a torchvision dataset, downloading only when it is absent."""
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError:
            try:
                ds = cls(str(root), train=train, download=True)
            except Exception as e:  # noqa: BLE001 - no network, partial files, ...
                raise TDAError(f"cannot load or download {cls.__name__} under {root} ({type(e).__name__}); "
                               f"offline, put the files at {where} or pass --data_root DIR")
        data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
        splits.append(RawSplit(data, torch.as_tensor(ds.targets).long()))
    return splits[0], splits[1]


def _load_digits() -> tuple[RawSplit, RawSplit]:
    from sklearn.datasets import load_digits
    d = load_digits()
    s = RawSplit(torch.from_numpy(d.images.astype(np.float32)), torch.from_numpy(d.target).long())
    return s, s  # one pool: train and test are drawn disjointly from it


def load_source(spec: TaskSpec, data_root: Path, hf: HFSource | None = None,
                cache_dir: Path | None = None) -> tuple[RawSplit, RawSplit]:
    """The full train and test pools of a task, from disk (torchvision downloads only when absent).

    `hf`: read a built-in task from a Hugging Face copy instead (rows in the original order). A task
    defined from a dataset reads the source its spec records. `cache_dir`: where `imagefolder` caches.
    """
    if user_defined(spec):
        (xtr, ytr, dtr), (xte, yte, dte) = hf_data.load_task(spec, cache_dir)
        return RawSplit(xtr, ytr, dtr), RawSplit(xte, yte, dte)
    if hf is not None:
        if spec.name not in hf_data.BUILTIN:
            raise TDAError(f"{spec.name} does not read a Hugging Face dataset (it comes with scikit-learn): --hf_dataset "
                           f"works with {', '.join(hf_data.BUILTIN)} or a new task name")
        (xtr, ytr), (xte, yte) = hf_data.load_builtin(spec, hf, cache_dir)
        return RawSplit(xtr, ytr), RawSplit(xte, yte)
    import torchvision
    data_root = Path(data_root)
    if spec.name == "mnist3":
        return _torchvision(torchvision.datasets.MNIST, data_root,
                            f"{data_root}/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte")
    if spec.name == "cifar10":
        return _torchvision(torchvision.datasets.CIFAR10, data_root,
                            f"{data_root}/cifar-10-batches-py/ (data_batch_1..5, test_batch)")
    if spec.name == "fmnist3":
        return _load_fmnist(data_root)
    if spec.name == "digits3":
        return _load_digits()
    raise TDAError(f"unknown task {spec.name!r}")


# ---------------------------------------------------------------- transforms
def transform(spec: TaskSpec, images: torch.Tensor) -> torch.Tensor:
    """Source images -> float32 [N, C, H, W] model inputs."""
    if spec.name in ("mnist3", "fmnist3"):
        return images.float().div(255.0).unsqueeze(1)
    if spec.name == "cifar10":
        x = images.float().div(255.0).permute(0, 3, 1, 2)
        return (x - 0.5) / 0.5
    if spec.name == "digits3":
        # 8x8 grey levels 0..16 -> [0, 1], bilinear up to 28x28 so the MNIST CNN applies
        x = images.float().div(16.0).unsqueeze(1)
        return F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0, 1)
    if user_defined(spec):  # decoded at the task's size: uint8 [N, H, W] (grey) or [N, H, W, 3] -> [0, 1], no normalisation
        x = images.float().div(255.0)
        return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    raise TDAError(f"unknown task {spec.name!r}")


# ---------------------------------------------------------------- subsets
def _class_perms(labels: torch.Tensor, classes, g: torch.Generator) -> dict[int, torch.Tensor]:
    return {c: (labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=g)]
            for c in classes}


def draw_subsets(spec: TaskSpec, train_labels: torch.Tensor, test_labels: torch.Tensor,
                 num_per_class: list[int]) -> tuple[dict[int, list[int]], list[int]]:
    """Deterministic class-balanced draws: {n: train indices} (nested in n) and the test indices.

    Every list is sorted by dataset index. digits3, and a dataset of the user's own without a test
    split, have a single pool: the per-class test draw is taken first and the training draws come
    from the rest, so they are disjoint.
    """
    g = torch.Generator().manual_seed(SUBSET_GENERATION_SEED)
    if spec.test_per_class is None:  # uniform over the whole test set, all ten classes (as the paper did)
        test = torch.randperm(len(test_labels), generator=g)[: spec.test_size]
        test_set = set()
    else:
        perms = _class_perms(test_labels, test_classes(spec), g)
        short = {c: len(p) for c, p in perms.items() if len(p) < spec.test_per_class}
        if short:
            c, have = next(iter(short.items()))
            raise TDAError(f"{spec.test_per_class} test images per class asked for {spec.name}, class {c} has only "
                           f"{have}: define the task with a smaller --test_per_class")
        test = torch.cat([p[: spec.test_per_class] for p in perms.values()])
        test_set = set(test.tolist())
    pool_perms = _class_perms(train_labels, spec.train_classes, g)
    if single_pool(spec):  # remove the test draw from the shared pool
        pool_perms = {c: torch.tensor([i for i in p.tolist() if i not in test_set], dtype=torch.long)
                      for c, p in pool_perms.items()}
    train = {}
    for n in num_per_class:
        for c, p in pool_perms.items():
            if n > len(p):
                raise TDAError(f"--num_per_class {n} is larger than the {len(p)} training images of "
                               f"class {c} available for {spec.name}")
        train[n] = sorted(torch.cat([p[:n] for p in pool_perms.values()]).tolist())
    return train, sorted(test.tolist())


def _subset_tensors(spec: TaskSpec, split: RawSplit, indices: list[int]) -> dict:
    idx = torch.tensor(indices, dtype=torch.long)
    return {"images": transform(spec, split.images[idx]).contiguous(),
            "labels": split.labels[idx].clone(), "indices": idx}


def validate_indices(idx: list[int], labels: torch.Tensor, classes, path: Path, per_class: int | None = None) -> None:
    """Reject an index list with duplicates, indices outside the dataset, classes outside the task or wrong counts."""
    n = len(labels)
    if not idx:
        raise TDAError(f"{path} is empty: delete it to draw a new one")
    if len(set(idx)) != len(idx):
        dup = sorted({i for i in idx if idx.count(i) > 1})[:3]
        raise TDAError(f"{path} lists indices more than once ({', '.join(map(str, dup))}): fix or delete it")
    if min(idx) < 0 or max(idx) >= n:
        raise TDAError(f"{path} holds indices outside 0..{n - 1}: it belongs to another dataset; fix or delete it")
    got = labels[torch.tensor(idx)]
    outside = sorted(set(got.tolist()) - set(classes))
    if outside:
        raise TDAError(f"{path} holds images of classes {outside}, outside this task's classes {list(classes)}: "
                       "fix or delete it")
    if per_class is not None:
        counts = {c: int((got == c).sum()) for c in classes}
        if any(v != per_class for v in counts.values()):
            raise TDAError(f"{path} must hold {per_class} images of each class {list(classes)}, it holds "
                           f"{counts} ({len(idx)} in all): fix or delete it")


def _current(path: Path) -> dict | None:
    """The provenance recorded in an existing subset tensor file (None if absent or unreadable)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("provenance")
    except Exception:  # noqa: BLE001 - a corrupt file is simply rebuilt
        return None


def generate_subsets(spec: TaskSpec, num_per_class: list[int], data_dir: Path, data_root: Path,
                     overwrite: bool = False, log=lambda line: None,
                     hf: HFSource | None = None) -> tuple[list[Path], list[Path]]:
    """Write index lists and tensor files for a task; existing index lists are checked and used as they are.

    A tensor file is rebuilt only when its index list, the source data or the transform changed since it
    was written (or with `overwrite`); returns (files written, files kept). `hf`: read a built-in task
    from a Hugging Face copy (see `load_source`).
    """
    data_dir = Path(data_dir)
    io.sweep(data_dir)  # temp files of a killed run
    train_split, test_split = load_source(spec, data_root, hf, data_dir / ".hf_cache")
    drawn_train, drawn_test = draw_subsets(spec, train_split.labels, test_split.labels, num_per_class)
    source = {"train": train_split.source_digest(), "test": test_split.source_digest()}
    written, kept = [], []
    test_txt = data_dir / "test_subset.txt"
    test_idx = io.read_index_list(test_txt) if test_txt.exists() else drawn_test
    allowed = test_classes(spec) if single_pool(spec) or user_defined(spec) else sorted(set(test_split.labels.tolist()))
    validate_indices(test_idx, test_split.labels, allowed, test_txt)
    targets = [(test_txt, data_dir / "test_subset.pt", test_idx, test_split, "test")]
    for n in num_per_class:
        txt = data_dir / f"train_subset_{n}pc.txt"
        idx = io.read_index_list(txt) if txt.exists() else drawn_train[n]
        validate_indices(idx, train_split.labels, spec.train_classes, txt, per_class=n)
        if single_pool(spec) and set(idx) & set(test_idx):
            raise TDAError(f"{txt} overlaps {test_txt}: {spec.name} draws train and test from one pool, they must be "
                           "disjoint; fix or delete them")
        targets.append((txt, data_dir / f"train_subset_{n}pc.pt", idx, train_split, "train"))
    for txt, pt, idx, split, which in targets:
        if not txt.exists():
            io.write_index_list(idx, txt)
            written.append(txt)
        inputs = {"index list": provenance.digest(idx), "source": source[which], "transform": TRANSFORM_VERSION}
        reason = "--overwrite" if overwrite else provenance.changed(_current(pt), inputs) if pt.exists() else None
        if pt.exists() and reason is None:
            kept.append(pt)
            continue
        if reason is not None:
            log(f"rebuilding {pt.name}: {reason}")
        io.atomic_save({**_subset_tensors(spec, split, idx), "provenance": inputs}, pt)
        written.append(pt)
    return written, kept
