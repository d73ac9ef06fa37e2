"""Image-classification datasets read with Hugging Face `datasets`, always offline (docs/own_data.md).

A source is a hub id already in the local cache, a directory written by `save_to_disk`, or an
`imagefolder` directory (one sub-directory per class, optionally under train/ and test/). The built-in
MNIST, Fashion-MNIST and CIFAR-10 tasks can be read from such a copy (rows in the original files'
order, so the subset indices are the same); any other dataset becomes a task of its own whose images
are decoded only where a subset needs them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import TaskSpec, TDAError

#: built-in tasks that can be read from a Hugging Face copy: (PIL mode, image size) of their images
BUILTIN = {"mnist3": ("L", 28), "fmnist3": ("L", 28), "cifar10": ("RGB", 32)}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MAX_CLASSES = 10  # every model has 10 outputs
IMAGE_NAMES = ("image", "img", "pixel_values", "pixels")
LABEL_NAMES = ("label", "labels", "fine_label", "target")
HOW = ("without internet, save it once where there is (`datasets.load_dataset(ID).save_to_disk(DIR)`) and pass "
       "--hf_dataset DIR, or copy that machine's Hugging Face datasets cache ($HF_DATASETS_CACHE) here")


@dataclass(frozen=True)
class HFSource:
    """Where a dataset comes from and which columns hold the images and labels (None: detected)."""

    dataset: str
    config: str | None = None
    image_column: str | None = None
    label_column: str | None = None


def hf_datasets():
    """The `datasets` module in offline mode: the hub is never contacted, hub ids come from the local cache."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets
    import huggingface_hub.constants
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True  # imported earlier, too
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _is_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def open_splits(src: HFSource, cache_dir: Path | None = None) -> tuple[dict, str]:
    """The dataset's splits {name: Dataset} and its kind: 'disk', 'imagefolder' or 'hub'; one-line errors offline."""
    ds = hf_datasets()
    path = Path(src.dataset).expanduser()
    if path.is_dir() and src.config is not None:
        raise TDAError(f"--hf_config applies to hub ids only, {src.dataset} is a directory")
    if not path.is_dir() and _is_path(src.dataset):
        raise TDAError(f"dataset directory {src.dataset} not found: pass a directory written by save_to_disk, an imagefolder "
                       "directory, or the id of a hub dataset in the local cache")
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            obj, kind = ds.load_from_disk(str(path)), "disk"
        elif path.is_dir():
            obj, kind = ds.load_dataset("imagefolder", data_dir=str(path),
                                        cache_dir=str(cache_dir) if cache_dir else None), "imagefolder"
        else:
            obj, kind = ds.load_dataset(src.dataset, src.config), "hub"
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; each is one line here
        text = (str(e).strip().splitlines() or [""])[0][:200]
        hint = HOW if not path.is_dir() else "check that it holds a dataset"
        raise TDAError(f"cannot load dataset {src.dataset!r} offline ({type(e).__name__}: {text}); {hint}")
    return (dict(obj) if isinstance(obj, ds.DatasetDict) else {"train": obj}), kind


def pick_splits(splits: dict, where: str) -> tuple[str, str | None]:
    """The training split ('train', or the only one) and the test split ('test' if there is one, else None)."""
    names = list(splits)
    train = "train" if "train" in splits else names[0] if len(names) == 1 else None
    if train is None:
        raise TDAError(f"{where} has no 'train' split (it has {', '.join(names)}): save it with a 'train' split")
    return train, ("test" if "test" in splits and train != "test" else None)


def pick_columns(ds, src: HFSource, where: str) -> tuple[str, str]:
    """The image and label columns: as given, else the Image / ClassLabel feature, else a usual name."""
    datasets = hf_datasets()
    feats = ds.features
    out = []
    for given, kind, cls, names in ((src.image_column, "image", datasets.Image, IMAGE_NAMES),
                                    (src.label_column, "label", datasets.ClassLabel, LABEL_NAMES)):
        if given is not None and given not in feats:
            raise TDAError(f"--{kind}_column {given!r} is not a column of {where} (columns: {', '.join(feats)})")
        found = [given] if given else [k for k, f in feats.items() if isinstance(f, cls)] + [n for n in names if n in feats]
        if not found:
            raise TDAError(f"cannot tell which column of {where} holds the {kind}s (columns: {', '.join(feats)}): "
                           f"pass --{kind}_column")
        out.append(found[0])
    return out[0], out[1]


def column_labels(ds, column: str, where: str) -> np.ndarray:
    """A label column as int64; a one-line error when it does not hold integer class ids."""
    labels = np.asarray(ds.select_columns([column]).with_format("numpy")[:][column])
    if labels.dtype.kind not in "iu":
        raise TDAError(f"label column {column!r} of {where} holds {labels.dtype} values, not integer class ids: "
                       f"encode it first (`ds.class_encode_column({column!r})`) and save it with save_to_disk")
    return labels.astype(np.int64)


def to_pil(value):
    """A stored image (PIL, or an array of 0..255 values / floats in [0, 1], HxW, HxWxC or CxHxW) as a PIL image."""
    from PIL import Image
    if isinstance(value, Image.Image):
        return value
    a = np.asarray(value)
    if a.dtype.kind == "f":
        a = np.clip(np.rint(a * 255 if a.size and a.max() <= 1 else a), 0, 255)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3):
        raise TDAError(f"an image of shape {a.shape} is neither HxW nor HxWxC")
    return Image.fromarray(a.astype(np.uint8))


def decode(value, mode: str, size: int | None) -> np.ndarray:
    """One image as uint8 HxW (mode L) or HxWx3 (RGB), bilinearly resized to size x size unless size is None."""
    from PIL import Image
    img = to_pil(value)
    img = img if img.mode == mode else img.convert(mode)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


class ImageColumn:
    """A dataset's image column, decoded on indexing: `col[idx]` -> uint8 [len(idx), H, W(, 3)] at the task's size."""

    def __init__(self, ds, column: str, mode: str, size: int):
        self.ds, self.column, self.mode, self.size = ds.select_columns([column]), column, mode, size

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.ds[[int(i) for i in torch.as_tensor(idx).flatten()]][self.column]
        return torch.from_numpy(np.stack([decode(v, self.mode, self.size) for v in rows]))


def content_digest(ds, image_column: str, label_column: str) -> str:
    """SHA-256 of a split's stored images (encoded bytes, or the files they point to) and labels, without decoding."""
    h = hashlib.sha256()
    for batch in ds.select_columns([image_column, label_column]).with_format("arrow").iter(batch_size=1024):
        for v in batch.column(image_column).to_pylist():
            if isinstance(v, dict) and set(v) <= {"bytes", "path"}:
                raw = v.get("bytes") or Path(v["path"]).read_bytes()
            else:
                a = np.asarray(v)
                raw = f"{a.shape}{a.dtype}".encode() + a.tobytes()
            h.update(len(raw).to_bytes(8, "little") + raw)
        h.update(np.asarray(batch.column(label_column).to_pylist(), dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


def load_builtin(spec: TaskSpec, src: HFSource, cache_dir: Path | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train and test (images, labels) of a built-in task from a Hugging Face copy, decoded as its own files store them."""
    mode, size = BUILTIN[spec.name]
    splits, _ = open_splits(src, cache_dir)
    train, test = pick_splits(splits, src.dataset)
    if test is None:
        raise TDAError(f"{src.dataset} has no 'test' split: {spec.name} needs the dataset's train and test splits")
    out = []
    for name in (train, test):
        ds, where = splits[name], f"{src.dataset} [{name}]"
        img, lab = pick_columns(ds, src, where)
        first = to_pil(ds[0][img])
        if first.mode != mode or first.size != (size, size):
            raise TDAError(f"{where} holds {first.mode} {first.size[0]}x{first.size[1]} images, {spec.name} has {mode} "
                           f"{size}x{size}: it is another dataset; give it a task name of its own")
        images = np.stack([decode(v, mode, None) for v in ds.select_columns([img])[:][img]])
        out.append((torch.from_numpy(images), torch.from_numpy(column_labels(ds, lab, where))))
    return out


def define_task(name: str, src: HFSource, classes: list[int] | None, num_per_class: list[int], test_per_class: int,
                cache_dir: Path | None = None) -> TaskSpec:
    """The spec of a new task from a dataset: its classes (<= 10), grey 28x28 or colour 32x32, the test rule, the source."""
    splits, kind = open_splits(src, cache_dir)
    train, test = pick_splits(splits, src.dataset)
    ds, where = splits[train], f"{src.dataset} [{train}]"
    img, lab = pick_columns(ds, src, where)
    if test is not None:
        pick_columns(splits[test], HFSource(src.dataset, src.config, img, lab), f"{src.dataset} [{test}]")
    present = sorted(set(column_labels(ds, lab, where).tolist()))
    classes = list(classes) if classes else present
    absent = [c for c in classes if c not in present]
    if absent or len(set(classes)) != len(classes) or not 2 <= len(classes) <= MAX_CLASSES:
        why = (f"class {absent[0]} has no image" if absent else "classes repeat" if len(set(classes)) != len(classes)
               else f"{len(classes)} classes, the models have {MAX_CLASSES} outputs and need >= 2")
        raise TDAError(f"bad classes for {where} ({why}): its labels are {present[:20]}; choose 2 to {MAX_CLASSES} "
                       "of them with --classes")
    modes = {to_pil(v).mode for v in ds.select(range(min(16, len(ds))))[img]}
    grey = modes <= GREY_MODES
    feature = ds.features[lab]
    names = [feature.names[c] if getattr(feature, "names", None) and c < len(feature.names) else str(c) for c in classes]
    source = {"hf_dataset": str(Path(src.dataset).expanduser().resolve()) if kind != "hub" else src.dataset,
              "hf_config": src.config, "format": kind, "train_split": train, "test_split": test,
              "image_column": img, "label_column": lab, "classes": classes, "class_names": names}
    return TaskSpec(name, 1 if grey else 3, 28 if grey else 32, tuple(range(len(classes))), 15 if grey else 30, "",
                    tuple(num_per_class), test_per_class, test_per_class * len(classes), source)


def load_task(spec: TaskSpec, cache_dir: Path | None = None) -> list[tuple[ImageColumn, torch.Tensor, str]]:
    """Train and test (images, labels, digest) of a task defined from a dataset.

    Labels are the positions of the task's classes (other images get -1); the test pool is the test
    split, or the training split itself when there is none (the test draw then comes first and the
    training draws exclude it). The digest covers the stored images, labels, classes and image format.
    """
    s = spec.source
    src = HFSource(s["hf_dataset"], s.get("hf_config"), s["image_column"], s["label_column"])
    splits, _ = open_splits(src, cache_dir)
    lookup = {c: i for i, c in enumerate(s["classes"])}
    out, digests = [], {}
    for name in (s["train_split"], s.get("test_split") or s["train_split"]):
        if name not in splits:
            raise TDAError(f"{src.dataset} has no split {name!r} any more (it has {', '.join(splits)}): restore it, or "
                           f"delete data/{spec.name}/ and define the task again")
        ds, where = splits[name], f"{src.dataset} [{name}]"
        raw = column_labels(ds, src.label_column, where)
        labels = torch.tensor([lookup.get(int(v), -1) for v in raw], dtype=torch.long)
        mode = "L" if spec.channels == 1 else "RGB"
        if name not in digests:
            digests[name] = hashlib.sha256(repr([content_digest(ds, src.image_column, src.label_column), s["classes"],
                                                 mode, spec.image_size]).encode()).hexdigest()[:32]
        out.append((ImageColumn(ds, src.image_column, mode, spec.image_size), labels, digests[name]))
    return out
