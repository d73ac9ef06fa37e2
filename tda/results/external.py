"""Significance of attribution scores computed anywhere (another library, another model), as for our own methods.

Scores are tau [seeds, checkpoints, N train, M test]: one `.pt` (a tensor, or a dict with `scores`, loaded
with `weights_only=True`) or `.npy` file, or a directory with one file per seed, each [checkpoints, N, M]
(or [N, M]: one checkpoint), sorted by name. `significance` (and `run_pvalues.py --scores`) writes the
p-value tables, histograms and report.md of the p-value step into a results directory (docs/own_data.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
import pandas as pd
import torch

from .. import io, provenance
from ..config import TDAError, parse_experiment, repo_root
from ..locking import claim, lock_path
from ..methods import label, outputs
from .inventory import AXES, MethodScores, take_inventory
from .outputs import Fingerprint, Outputs, markdown_table, read_manifest, write_if_changed
from .pvalues import ALPHA, PVALUES_MANIFEST, PValueSummary, hist_name, mean_p_markdown, write_pvalues
from .report import reading_guide, write_report

ScoresLike = Union[np.ndarray, torch.Tensor, str, Path]
SUFFIXES = (".pt", ".npy")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class External:
    """One method's scores to test: how to load them (only when written) and the fingerprint of their inputs."""

    method: str
    load: Callable[[], MethodScores]
    fp: Fingerprint


def _read_file(path: Path) -> tuple[np.ndarray, dict]:
    """A file's scores as float64 and what else it records (our score files: indices and checkpoint epochs)."""
    if path.suffix not in SUFFIXES:
        raise TDAError(f"{path}: scores must be a .pt or .npy file (or a directory of them), "
                       f"not {path.suffix or 'a file without suffix'}")
    try:
        obj = np.load(path, allow_pickle=False) if path.suffix == ".npy" else torch.load(
            path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise TDAError(f"cannot read scores {path} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}): "
                       "save a tensor or {'scores': tensor} with torch.save, or an array with numpy.save")
    meta = {}
    if isinstance(obj, dict):
        if "scores" not in obj:
            raise TDAError(f"{path} holds a dict without 'scores' (keys: {', '.join(map(str, obj))[:100]})")
        meta = {k: [int(v) for v in torch.as_tensor(obj[k]).flatten()] for k in ("train_indices", "test_indices",
                                                                                 "ckpt_epochs") if k in obj}
        obj = obj["scores"]
    if not isinstance(obj, (torch.Tensor, np.ndarray)):
        raise TDAError(f"{path} holds a {type(obj).__name__}, not a tensor or array of scores")
    arr = obj.detach().double().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj, dtype=np.float64)
    return arr, meta


def read_scores(path: Path) -> tuple[np.ndarray, dict, list[int] | None, list[Path]]:
    """(scores [S, C, N, M], metadata, seeds named by the files or None, files read) of a file or a per-seed directory."""
    path = Path(path)
    if path.is_file():
        arr, meta = _read_file(path)
        return arr, meta, None, [path]
    if not path.is_dir():
        raise TDAError(f"scores {path} not found: pass a .pt or .npy file, or a directory with one file per seed")
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise TDAError(f"{path} holds no .pt or .npy files: put one file of scores [checkpoints, N, M] per seed there")
    arrays, metas = [], []
    for f in files:
        arr, meta = _read_file(f)
        arr = arr[None] if arr.ndim == 2 else arr
        if arr.ndim != 3:
            raise TDAError(f"{f} has shape {arr.shape}: one seed's file must be [checkpoints, N, M] (or [N, M])")
        if arrays and arr.shape != arrays[0].shape:
            axis = next(i for i, (a, b) in enumerate(zip(arr.shape, arrays[0].shape)) if a != b) + 1
            raise TDAError(f"{f} has shape {arr.shape}, {files[0].name} has {arrays[0].shape}: axis {axis} "
                           f"({AXES[axis]}) differs between the seeds' files")
        if metas and meta != metas[0]:
            raise TDAError(f"{f} records other indices or checkpoints than {files[0].name}: the seeds must score the "
                           "same pairs")
        arrays.append(arr)
        metas.append(meta)
    stems = [f.stem for f in files]
    seeds = [int(s) for s in stems] if all(s.isdigit() for s in stems) and len(set(stems)) == len(stems) else None
    return np.stack(arrays), metas[0], seeds, files


def method_scores(scores: ScoresLike, method_name: str, train_indices: list[int] | None = None,
                  test_indices: list[int] | None = None, seeds: list[int] | None = None,
                  ckpt_epochs: list[int] | None = None) -> tuple[MethodScores, Fingerprint]:
    """Scores from an array [S, C, N, M] or a path, checked axis by axis, as `MethodScores`, with their fingerprint."""
    if not _NAME.match(method_name) or method_name in outputs():
        why = "is one of this pipeline's methods" if method_name in outputs() else "has characters a file name should not"
        raise TDAError(f"method name {method_name!r} {why}: use letters, digits, '_', '-', '.' (e.g. trak or "
                       f"{method_name.lower()}_ext)")
    meta, named, where = {}, None, "the scores array"
    if isinstance(scores, (str, Path)):
        arr, meta, named, files = read_scores(Path(scores))
        where = f"scores {scores}"
        fp: list = [[f.name, provenance.file_digest(f)] for f in files]
    else:
        arr = scores.detach().double().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, np.float64)
        fp = [["array", provenance.digest(arr)]]
    if arr.ndim != 4:
        raise TDAError(f"{where}: shape {arr.shape}, expected 4 axes [seeds, checkpoints, N train, M test] "
                       "(one checkpoint per seed: add an axis, scores[:, None]; a directory holds one seed per file)")
    if arr.shape[0] < 2:
        raise TDAError(f"{where}: shape {arr.shape}, axis 0 (seeds) has {arr.shape[0]} entry, the test needs "
                       "scores from >= 2 independently trained models")
    if 0 in arr.shape:
        raise TDAError(f"{where}: shape {arr.shape}, axis {arr.shape.index(0)} ({AXES[arr.shape.index(0)]}) is empty")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise TDAError(f"{where}: {bad} NaN or infinite values: only finite scores can be tested")
    train = list(train_indices) if train_indices is not None else meta.get("train_indices", list(range(arr.shape[2])))
    test = list(test_indices) if test_indices is not None else meta.get("test_indices", list(range(arr.shape[3])))
    for axis, idx, what in ((2, train, "training"), (3, test, "test")):
        if len(set(idx)) != len(idx):
            raise TDAError(f"the {what} indices of {method_name} repeat an index: each sample must be listed once")
    seeds = list(seeds) if seeds is not None else named or list(range(arr.shape[0]))
    epochs = list(ckpt_epochs) if ckpt_epochs is not None else meta.get("ckpt_epochs", list(range(arr.shape[1])))
    ms = MethodScores(method_name, [int(s) for s in seeds], arr, [int(i) for i in train], [int(i) for i in test],
                      [int(e) for e in epochs], {"scores": str(scores) if isinstance(scores, (str, Path)) else "array"},
                      label=method_name.upper())
    return ms, fp + [["indices", provenance.digest([ms.train_indices, ms.test_indices, ms.seeds, ms.ckpt_epochs])]]


def external_report(out_dir: Path, name: str) -> Path:
    """report.md of a results directory that holds only externally computed scores (no experiment behind it)."""
    info = read_manifest(out_dir / PVALUES_MANIFEST).get("info", {})
    mean_p, sig = pd.read_csv(out_dir / "mean_p_values.csv", index_col=0), pd.read_csv(out_dir / "significance.csv")
    lines = [f"* {label(m)}: seeds {', '.join(map(str, d['seeds']))}; {len(d['ckpt_epochs'])} checkpoint(s); "
             f"{d['n_train']} training x {d['n_test']} test samples; scores from `{d['settings'].get('scores', '?')}`"
             for m, d in info.items()]
    cols = ["method", "K", "n_seeds", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_frac_p_lt_0.05", "t_frac_bh_lt_0.05"]
    parts = [f"# Bayesian TDA results: {name}\n\nAttribution scores computed elsewhere, tested for significance over "
             "seeds (`run_pvalues.py --scores`, or `tda.results.external.significance`).\n\n", "\n".join(lines) + "\n\n",
             reading_guide(max((len(d["seeds"]) for d in info.values()), default=2)),
             "\n## Mean p-value (the paper's table)\n\nMean over all train-test pairs of the z-test p-value, rows = "
             "number K of last checkpoints averaged per seed (`mean_p_values.csv`; per-pair values in "
             "`pvalues_<method>_across_<K>_ckpts.csv`).\n\n", mean_p_markdown(mean_p, sig),
             f"\n## Fraction of pairs with p < {ALPHA}\n\nz = paper's test, t = t-test on the mean, bh = after "
             "Benjamini-Hochberg (`significance.csv`).\n\n", markdown_table(sig[cols].set_index("method")),
             "\n## p-value histograms\n\n"] + [f"![{label(m)} p-values]({hist_name(m)})\n\n" for m in info]
    path = out_dir / "report.md"
    write_if_changed(path, "".join(parts))
    return path


def write_external(out_dir: Path, items: list[External], overwrite: bool = False) -> PValueSummary:
    """The p-value step's tables and histograms of `items` in `out_dir` (one method loaded at a time)."""
    fps = {it.method: it.fp for it in items}
    with claim(lock_path(out_dir, "pvalues")):  # one writer at a time, as for the experiments' own step
        out = Outputs(out_dir, PVALUES_MANIFEST, overwrite)
        table, sig = write_pvalues(out, (it.load() for it in items), fps.__getitem__, fps)
    return PValueSummary(table, sig, [out_dir / hist_name(it.method) for it in items], skipped=False, notes=[])


def significance(scores: ScoresLike, method_name: str, out_dir: Path | str, train_indices: list[int] | None = None,
                 test_indices: list[int] | None = None, seeds: list[int] | None = None,
                 ckpt_epochs: list[int] | None = None, overwrite: bool = False) -> PValueSummary:
    """Test scores [seeds, checkpoints, N, M] (array, tensor, file or per-seed directory) pair by pair; write the
    tables, histograms and report.md into `out_dir` and return the mean p-value table and significance fractions."""
    ms, fp = method_scores(scores, method_name, train_indices, test_indices, seeds, ckpt_epochs)
    out_dir = Path(out_dir)
    summary = write_external(out_dir, [External(ms.method, lambda: ms, fp)], overwrite)
    external_report(out_dir, out_dir.name)
    return summary


def pvalues_with_scores(name: str, scores: list[str], method_names: list[str], train_file: str | None = None,
                        test_file: str | None = None, methods: list[str] | None = None, overwrite: bool = False,
                        log: Callable[[str], None] = print) -> tuple[PValueSummary, Path]:
    """run_pvalues.py --scores: external scores into results/NAME/, with the experiment NAME's own methods if it has
    any scores; returns the summary and the report's path."""
    if len(scores) != len(method_names):
        raise TDAError(f"--scores lists {len(scores)} source(s) and --method_name {len(method_names)}: give one name each")
    if not _NAME.match(name) or name in (".", ".."):
        raise TDAError(f"bad results name {name!r}: use letters, digits, '_', '-' and '.' (it names results/{name}/)")
    train = io.read_index_list(Path(train_file)) if train_file else None
    test = io.read_index_list(Path(test_file)) if test_file else None
    items, cfg = [], None
    try:
        cfg = parse_experiment(name)
    except TDAError:
        pass
    if cfg is not None:
        inv = take_inventory(cfg, methods, need=0)
        items += [External(m, lambda m=m: inv.load(m), inv.fp(m)) for m in inv.methods]
        if items:
            log(f"with {name}'s own scores: {', '.join(label(m) for m in inv.methods)}")
    for path, method in zip(scores, method_names):
        ms, fp = method_scores(path, method, train, test)  # checked now: a bad file fails before anything is written
        items.append(External(method, lambda ms=ms: ms, fp))
    out_dir = repo_root() / "results" / name
    summary = write_external(out_dir, items, overwrite)
    if cfg is not None and len(items) > len(scores):
        return summary, write_report(cfg)
    return summary, external_report(out_dir, name)
