"""The results files of one step and their manifest: what is finished, and writes that change only differing bytes.

Resume rule. Every output is a deterministic function of the score files it is computed from. A hidden
manifest in results/<experiment>/ records, per output, a digest of those files' contents. An
output whose file exists and whose recorded digest equals the current one is finished and is not
recomputed. Everything else is written atomically, but only where the bytes differ from the file on
disk, so a rerun after a kill at any point rewrites no finished file and ends identical to an
uninterrupted run.
"""
from __future__ import annotations

import filecmp
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .. import io, plots, provenance

#: what an output depends on, as recorded in the manifest (JSON-serialisable)
Fingerprint = Any
#: an output's content: bytes, text, or a function that writes the file at the path it is given (large outputs,
#: written as they are computed)
Content = Union[bytes, str, Callable[[str], None]]


_digests: dict[tuple, str] = {}


def fingerprint(files: dict[int, Path]) -> list[list]:
    """What an output depends on: (seed, content digest) of each score file it reads."""
    out = []
    for s, p in files.items():
        st = Path(p).stat()
        key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)  # hash each file once per process
        if key not in _digests:
            _digests[key] = provenance.file_digest(p)
        out.append([int(s), _digests[key]])
    return out


def digest(fp: Fingerprint) -> str:
    """A short stable hash of a fingerprint, as stored in the manifest."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:20]


def read_manifest(path: Path) -> dict:
    """A manifest's content, or {} when it is missing or unreadable (then every output counts as unfinished)."""
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _writer(raw: bytes) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        Path(tmp).write_bytes(raw)
    return write


class _Unchanged(Exception):
    """The freshly written temp file equals the file on disk: keep the old one (and its mtime)."""


def write_if_changed(path: Path, data: Content) -> bool:
    """Write `data` to `path` atomically unless the file already holds exactly these bytes; True if written.

    A callable writes a temp file that is compared with the existing file chunk by chunk, so an output of
    gigabytes is never held in memory.
    """
    path = Path(path)
    if callable(data):
        def write(tmp: str) -> None:
            data(tmp)
            if path.exists() and filecmp.cmp(tmp, path, shallow=False):
                raise _Unchanged
        try:
            io.atomic_write_with(path, write)
        except _Unchanged:
            return False
        return True
    raw = data.encode() if isinstance(data, str) else data
    if path.exists() and path.read_bytes() == raw:
        return False
    io.atomic_write_with(path, _writer(raw))
    return True


class Outputs:
    """The outputs of one step and their manifest: finished-ness, byte-compared atomic writes."""

    def __init__(self, directory: Path, manifest_name: str, overwrite: bool):
        self.dir = Path(directory)
        if self.dir.is_dir():
            io.sweep(self.dir)  # temp files of a killed run
        self.manifest_path = self.dir / manifest_name
        self.manifest = read_manifest(self.manifest_path)
        self.recorded: dict = dict(self.manifest.get("outputs", {}))
        self.overwrite = overwrite
        self.written: list[Path] = []
        self.kept: list[Path] = []

    def finished(self, name: str, fp: Fingerprint) -> bool:
        """True when `name` exists and was computed from inputs with fingerprint `fp` (and no --overwrite)."""
        return (not self.overwrite and (self.dir / name).exists()
                and self.recorded.get(name) == digest(fp))

    def all_finished(self, expected: dict[str, Fingerprint]) -> bool:
        """True when every expected output {name: fingerprint} is finished."""
        return all(self.finished(n, fp) for n, fp in expected.items())

    def write(self, name: str, data: Content, fp: Fingerprint) -> Path:
        """Write `data` atomically unless the file already holds exactly these bytes; record its inputs."""
        path = self.dir / name
        (self.written if write_if_changed(path, data) else self.kept).append(path)
        self.recorded[name] = digest(fp)
        self.save_manifest()
        return path

    def remove(self, name: str) -> None:
        """Delete an output that no longer applies (e.g. a figure with nothing left to show)."""
        (self.dir / name).unlink(missing_ok=True)
        if self.recorded.pop(name, None) is not None:
            self.save_manifest()

    def save_manifest(self, **extra: Any) -> None:
        """Store the manifest (plus `extra` top-level entries), atomically and only when it changed."""
        self.manifest.update(extra)
        self.manifest["outputs"] = self.recorded
        write_if_changed(self.manifest_path, json.dumps(self.manifest, indent=1, sort_keys=True, default=str) + "\n")


def write_figure(outputs: Outputs, stem: str, fig: Figure, fp: Fingerprint,
                 formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Render a figure deterministically to `stem.<fmt>` for each format, then free it."""
    paths = [outputs.write(f"{stem}.{fmt}", plots.figure_bytes(fig, fmt), fp) for fmt in formats]
    plots.close(fig)
    return paths


def markdown_table(df: pd.DataFrame, fmt: str = "{:.4f}") -> str:
    """A DataFrame as a GitHub markdown table (floats formatted with `fmt`)."""
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else fmt.format(v)
        return str(v)
    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in zip(df.index, df.itertuples(index=False)):  # itertuples keeps int columns int
        lines.append("| " + " | ".join([str(idx)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"
