"""Attribution scores [S seeds, C checkpoints, N train, M test] read block by block, never whole.

A source hands out the rows of some training samples, for chosen seeds and checkpoints, never to be modified:
`read(seeds, ckpts, rows) -> [s, k, b, M]` in the file's dtype (float32 stays float32). Files are
memory-mapped only for the duration of one read (`.npy` through `np.load(mmap_mode='r')`, `.pt`
through `torch.load(mmap=True)`), so the pages a read touched leave the process with it: a 4 GB
array is processed with a resident set of a few blocks. Rows, not test columns, are the unit
because a row of M scores is contiguous in a C-ordered [S, C, N, M] array: a block of rows reads
S x C contiguous ranges, where a block of test columns would touch every page of the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import TDAError

Rows = Union[slice, np.ndarray]
SUFFIXES = (".pt", ".npy")
AXES = ("seeds", "checkpoints", "training samples N", "test samples M")


class ScoreSource(Protocol):
    """Scores [S, C, N, M] that can be read in blocks of training rows."""

    shape: tuple[int, int, int, int]
    dtype: np.dtype

    def read(self, seeds: Sequence[int], ckpts: slice, rows: Rows) -> np.ndarray:
        """scores[seeds][:, ckpts][:, :, rows]: [len(seeds), k, b, M] (a copy, or a view the caller must not modify)."""
        ...


def _float(a: np.ndarray) -> np.ndarray:
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


class ArraySource:
    """Scores already in memory (a numpy array or a CPU tensor's memory, not copied)."""

    def __init__(self, scores: np.ndarray | torch.Tensor):
        if isinstance(scores, torch.Tensor):
            t = scores.detach().cpu()
            scores = (t if t.dtype in (torch.float32, torch.float64) else t.double()).numpy()
        self.array = _float(np.asarray(scores))
        self.shape, self.dtype = tuple(self.array.shape), self.array.dtype

    def read(self, seeds: Sequence[int], ckpts: slice, rows: Rows) -> np.ndarray:
        if list(seeds) == list(range(self.shape[0])) and isinstance(rows, slice):
            return self.array[:, ckpts, rows]  # a view: readers never write to what they read
        return np.stack([self.array[s, ckpts][:, rows] for s in seeds])


def _mapped(path: Path):
    """The file's array, memory-mapped where the format allows (the mapping ends when the result is freed)."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the pre-zip format of torch.save cannot be mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["scores"] if isinstance(obj, dict) else obj


def _rows_into(out: np.ndarray, mapped, ckpts: slice, rows: Rows) -> None:
    """Copy mapped[ckpts][:, rows] into `out` (a tensor's values converted to out's dtype)."""
    part = mapped[ckpts]
    if isinstance(part, torch.Tensor):
        part = part[:, torch.as_tensor(rows)] if not isinstance(rows, slice) else part[:, rows]
        out[...] = part.numpy() if part.dtype in (torch.float32, torch.float64) else part.double().numpy()
    else:
        out[...] = part[:, rows]


def _empty(src: ScoreSource, seeds: Sequence[int], ckpts: slice, rows: Rows) -> np.ndarray:
    """The array a read fills: [seeds, checkpoints, rows, M] in the source's dtype (float32 or float64)."""
    k = len(range(*ckpts.indices(src.shape[1])))
    b = len(range(*rows.indices(src.shape[2]))) if isinstance(rows, slice) else len(rows)
    return np.empty((len(seeds), k, b, src.shape[3]), dtype=src.dtype if src.dtype == np.float32 else np.float64)


class FileSource:
    """One `.npy` or `.pt` file holding [S, C, N, M] (a tensor, an array, or a dict with 'scores')."""

    def __init__(self, path: Path, shape: tuple, dtype: np.dtype):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)

    def read(self, seeds: Sequence[int], ckpts: slice, rows: Rows) -> np.ndarray:
        out = _empty(self, seeds, ckpts, rows)
        m = _mapped(self.path)
        for i, s in enumerate(seeds):
            _rows_into(out[i], m[s], ckpts, rows)
        del m
        return out


class SeedFilesSource:
    """One file per seed, each [C, N, M] (or [N, M]: one checkpoint), stacked along the seed axis."""

    def __init__(self, files: list[Path], shape: tuple, dtype: np.dtype):
        self.files, self.shape, self.dtype = [Path(f) for f in files], tuple(shape), np.dtype(dtype)

    def read(self, seeds: Sequence[int], ckpts: slice, rows: Rows) -> np.ndarray:
        out = _empty(self, seeds, ckpts, rows)
        for i, s in enumerate(seeds):
            m = _mapped(self.files[s])
            _rows_into(out[i], m[None] if m.ndim == 2 else m, ckpts, rows)
            del m
        return out


def _describe(path: Path) -> tuple[tuple, np.dtype, dict]:
    """(shape, dtype, metadata) of one score file without reading its scores; one-line errors."""
    if path.suffix not in SUFFIXES:
        raise TDAError(f"{path}: scores must be a .pt or .npy file (or a directory of them), "
                       f"not {path.suffix or 'a file without suffix'}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return tuple(arr.shape), arr.dtype, {}
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line
            raise _unreadable(path, e)
    except Exception as e:  # noqa: BLE001
        raise _unreadable(path, e)
    meta = {}
    if isinstance(obj, dict):
        if "scores" not in obj:
            raise TDAError(f"{path} holds a dict without 'scores' (keys: {', '.join(map(str, obj))[:100]})")
        meta = {k: [int(v) for v in torch.as_tensor(obj[k]).flatten()] for k in ("train_indices", "test_indices",
                                                                                 "ckpt_epochs", "seeds") if k in obj}
        obj = obj["scores"]
    if isinstance(obj, torch.Tensor):
        if obj.is_complex() or not (obj.is_floating_point() or obj.dtype in (torch.int32, torch.int64)):
            raise TDAError(f"{path} holds a {obj.dtype} tensor: save real-valued scores")
        dtype = np.float32 if obj.dtype == torch.float32 else np.float64
        return tuple(obj.shape), np.dtype(dtype), meta
    if isinstance(obj, np.ndarray):
        return tuple(obj.shape), obj.dtype, meta
    raise TDAError(f"{path} holds a {type(obj).__name__}, not a tensor or array of scores")


def _unreadable(path: Path, e: Exception) -> TDAError:
    first = str(e).splitlines()[0][:120] if str(e) else ""
    return TDAError(f"cannot read scores {path} ({type(e).__name__}: {first}): save a tensor or {{'scores': tensor}} "
                    "with torch.save, or an array with numpy.save")


def open_scores(path: Path) -> tuple[ScoreSource, dict, list[int] | None, list[Path]]:
    """(source, metadata, seeds named by the files or None, files) of a file or a per-seed directory; reads no scores.

    The metadata of a dict file ('train_indices', 'test_indices', 'ckpt_epochs', 'seeds') comes with it.
    """
    path = Path(path)
    if path.is_file():
        shape, dtype, meta = _describe(path)
        if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
            raise TDAError(f"{path} holds {dtype} values: save real-valued scores")
        return FileSource(path, shape, dtype), meta, meta.get("seeds"), [path]
    if not path.is_dir():
        raise TDAError(f"scores {path} not found: pass a .pt or .npy file, or a directory with one file per seed")
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise TDAError(f"{path} holds no .pt or .npy files: put one file of scores [checkpoints, N, M] per seed there")
    shapes, metas, dtypes = [], [], []
    for f in files:
        shape, dtype, meta = _describe(f)
        shape = (1, *shape) if len(shape) == 2 else shape
        if len(shape) != 3:
            raise TDAError(f"{f} has shape {shape}: one seed's file must be [checkpoints, N, M] (or [N, M])")
        if shapes and shape != shapes[0]:
            axis = next(i for i, (a, b) in enumerate(zip(shape, shapes[0])) if a != b) + 1
            raise TDAError(f"{f} has shape {shape}, {files[0].name} has {shapes[0]}: axis {axis} "
                           f"({AXES[axis]}) differs between the seeds' files")
        meta = {k: v for k, v in meta.items() if k != "seeds"}
        if metas and meta != metas[0]:
            raise TDAError(f"{f} records other indices or checkpoints than {files[0].name}: the seeds must score the "
                           "same pairs")
        shapes.append(shape)
        metas.append(meta)
        dtypes.append(dtype)
    stems = [f.stem for f in files]
    seeds = [int(s) for s in stems] if all(s.isdigit() for s in stems) and len(set(stems)) == len(stems) else None
    dtype = np.float32 if all(d == np.float32 for d in dtypes) else np.float64
    return SeedFilesSource(files, (len(files), *shapes[0]), dtype), metas[0], seeds, files


def check_finite(src: ScoreSource, where: str, rows_per_read: int) -> None:
    """A one-line error when any score is NaN or infinite (read block by block)."""
    S, C, N, _ = src.shape
    bad = 0
    big = src.shape[0] * src.shape[1] * N * src.shape[3] >= 1 << 28  # a bar only where the check takes a while
    for a in tqdm(range(0, N, rows_per_read), desc=f"checking {where}", leave=False, disable=not big):
        bad += int((~np.isfinite(src.read(range(S), slice(0, C), slice(a, min(a + rows_per_read, N))))).sum())
    if bad:
        raise TDAError(f"{where}: {bad} NaN or infinite values: only finite scores can be tested")
