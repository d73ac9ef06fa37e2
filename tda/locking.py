"""Claims on artefacts across processes: two shells, seed workers or Slurm tasks never compute the same thing twice.

A claim is an exclusive `flock` on a lock file beside the artefact's directory. The kernel releases it
when its process ends, however it ends, so a killed run never leaves a stale claim behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .config import TDAError

LOCK_DIR = ".locks"


def lock_path(directory: Path, name: str) -> Path:
    """The lock file of artefact `name` in `directory` (kept in a hidden sub-directory)."""
    return Path(directory) / LOCK_DIR / f"{name}.lock"


@contextlib.contextmanager
def claim(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive claim on `path` for the `with` block; yields False at once if busy and not `wait`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise TDAError(f"cannot create the lock file {path}: {e.strerror or e} (check the directory's permissions)")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
