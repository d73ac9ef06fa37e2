"""File I/O at the edges: durable atomic writes, checkpoints, subsets and score files.

Every file is written to a temp file beside it, fsynced, renamed over the target, and the directory
is fsynced, so a kill or a power cut leaves either the old file or the new one, never half of one.
Temp files carry the writer's host and PID; ones left by a killed process are swept on the next
write to that directory. Tensor files are serialised in memory first, so identical content gives
identical bytes (their digests then say "unchanged"). Any OSError becomes a one-line TDAError naming
the path and what to do.
"""
from __future__ import annotations

import errno
import io as _io
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .config import ExperimentConfig, TDAError

_HOST = socket.gethostname().split(".")[0] or "host"
_TMP = ".tmp"
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)-(?P<pid>\d+)-[0-9a-f]+\.tmp(\.[^.]*)?$")
_swept: set[Path] = set()
_HINTS = {errno.ENOSPC: "the disk is full: free space and rerun",
          errno.EDQUOT: "the disk quota is exceeded: free space and rerun",
          errno.EROFS: "the file system is read-only: point TDA_ROOT at a writable directory",
          errno.EACCES: "permission denied: check the directory's permissions or point TDA_ROOT elsewhere",
          errno.EPERM: "permission denied: check the directory's permissions or point TDA_ROOT elsewhere"}


def os_error(path: Path, e: OSError, doing: str = "write") -> TDAError:
    """A one-line TDAError for an OSError on `path`."""
    hint = _HINTS.get(e.errno, "check that the directory exists and is writable")
    return TDAError(f"cannot {doing} {path}: {e.strerror or type(e).__name__}; {hint}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(directory: Path, max_age_s: float = 86400.0) -> list[Path]:
    """Delete temp files left in `directory` by writers that died (this host: PID gone; other hosts: a day old)."""
    removed = []
    for f in Path(directory).glob(f".*{_TMP}*"):
        m = _TMP_NAME.match(f.name)
        if m is None:
            continue
        mine = m["host"] == _HOST
        if (mine and not _pid_alive(int(m["pid"]))) or (not mine and time.time() - f.stat().st_mtime > max_age_s):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_with(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then fsync it, rename it over `path` and fsync the directory."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(3)}{_TMP}{path.suffix}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent not in _swept:
            sweep(path.parent)
            _swept.add(path.parent)
        try:
            write(str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise os_error(path, e) from None


def atomic_write_bytes(raw: bytes, path: Path) -> None:
    """Write bytes atomically and durably."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(raw))


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save atomically; serialised in memory so that equal content always gives equal bytes."""
    buf = _io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)


def atomic_write_text(text: str, path: Path) -> None:
    """Write text atomically and durably."""
    atomic_write_bytes(text.encode(), path)


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
    except OSError as e:
        raise os_error(path, e, "read") from None


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


# ---- TDA scores ----
def save_scores(cfg: ExperimentConfig, method: str, seed: int, scores: torch.Tensor,
                train_indices, test_indices, settings: dict, provenance: dict | None = None) -> Path:
    """Write tda_scores/<experiment>/<method>/<seed>.pt: scores float32 [n_ckpts, n_train, n_test]."""
    path = cfg.scores_path(method, seed)
    atomic_save({
        "scores": scores.detach().to("cpu", torch.float32).contiguous(),
        "ckpt_epochs": torch.tensor(cfg.ckpt_epochs),
        "train_indices": torch.as_tensor(train_indices),
        "test_indices": torch.as_tensor(test_indices),
        "settings": settings,
        "provenance": provenance or {},
    }, path)
    return path


def load_scores(cfg: ExperimentConfig, method: str, seed: int, fix: str | None = None) -> dict:
    """One seed's saved scores of an output; `fix` (e.g. "run `python run_loo.py ...`") ends a one-line error."""
    fix = fix or f"compute the {method} scores first (--experiment {cfg.name} --seed_id all)"
    return load_tensor_file(cfg.scores_path(method, seed), f"{method} scores", fix)
