"""File I/O at the edges: atomic writes, checkpoints, subsets and score files."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import ExperimentConfig, TDAError


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write, suffix: str = ".tmp") -> None:
    """Run `write(tmp)` on a temp file beside `path`, then rename it over `path`.

    The temp file gets the permissions a plain open() would give (mkstemp makes it 0600), so
    checkpoints, scores and results stay readable by the other users of a shared machine.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file beside `path`, then rename: a kill never leaves a half file."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: Path) -> None:
    """Write text atomically."""
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_with(path: Path, writer) -> None:
    """Call `writer(tmp_path)` (e.g. a DataFrame's to_csv or a figure's savefig), then rename."""
    # the temp file keeps the extension so writers that infer the format from it (savefig) still work
    _atomic(path, writer, suffix=Path(path).suffix)


def load_tensor_file(path: Path, what: str, fix: str) -> Any:
    """torch.load(weights_only=True) with one-line errors for a missing or corrupt file."""
    path = Path(path)
    if not path.exists():
        raise TDAError(f"missing {what} {path}: {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise TDAError(f"corrupt {what} {path} ({type(e).__name__}): delete it and {fix}")


# ---- index lists ----
def write_index_list(indices: list[int], path: Path) -> None:
    atomic_write_text("".join(f"{i}\n" for i in indices), path)


def read_index_list(path: Path) -> list[int]:
    try:
        return [int(line) for line in Path(path).read_text().split()]
    except ValueError:
        raise TDAError(f"index file {path} must hold one integer per line: fix or delete it")


# ---- subsets ----
def load_subsets(cfg: ExperimentConfig) -> tuple[dict, dict]:
    """The train and test subset tensors {'images', 'labels', 'indices'} of an experiment."""
    fix = f"run `python run_subset_generation.py --task {cfg.task} --num_per_class {cfg.num_per_class}` first"
    train = load_tensor_file(cfg.train_subset_pt, "training subset", fix)
    test = load_tensor_file(cfg.test_subset_pt, "test subset", fix)
    return train, test


# ---- checkpoints ----
def load_checkpoint(cfg: ExperimentConfig, seed: int, epoch: int) -> dict:
    """One checkpoint {'state_dict', 'epoch', 'train_loss', 'test_accuracy'} (weights_only)."""
    fix = f"run `python {cfg.train_script} --experiment {cfg.name} --seed_id <id> --overwrite`"
    ck = load_tensor_file(cfg.ckpt_path(seed, epoch), "checkpoint", fix)
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise TDAError(f"corrupt checkpoint {cfg.ckpt_path(seed, epoch)}: delete it and {fix}")
    return ck


def load_checkpoints(cfg: ExperimentConfig, seed: int) -> list[dict]:
    """The `n_ckpts` checkpoints of one seed, in epoch order."""
    return [load_checkpoint(cfg, seed, e) for e in cfg.ckpt_epochs]


def seed_finished(cfg: ExperimentConfig, seed: int) -> bool:
    """True when all checkpoints of a seed exist (they are written atomically, so existing = complete)."""
    return all(cfg.ckpt_path(seed, e).exists() for e in cfg.ckpt_epochs)


# ---- TDA scores ----
def save_scores(cfg: ExperimentConfig, method: str, seed: int, scores: torch.Tensor,
                train_indices, test_indices, settings: dict) -> Path:
    """Write tda_scores/<experiment>/<method>/<seed>.pt: scores float32 [n_ckpts, n_train, n_test]."""
    path = cfg.scores_path(method, seed)
    atomic_save({
        "scores": scores.detach().to("cpu", torch.float32).contiguous(),
        "ckpt_epochs": torch.tensor(cfg.ckpt_epochs),
        "train_indices": torch.as_tensor(train_indices),
        "test_indices": torch.as_tensor(test_indices),
        "settings": settings,
    }, path)
    return path


def load_scores(cfg: ExperimentConfig, method: str, seed: int, fix: str | None = None) -> dict:
    """One seed's saved scores of an output; `fix` (e.g. "run `python run_loo.py ...`") ends a one-line error."""
    fix = fix or f"compute the {method} scores first (--experiment {cfg.name} --seed_id all)"
    return load_tensor_file(cfg.scores_path(method, seed), f"{method} scores", fix)
