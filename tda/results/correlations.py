"""Pearson and Spearman correlations between TDA methods of mu, sigma and SNR at K = C checkpoints.

Our methods and scores computed elsewhere alike (`run_correlations.py --scores`): each method is a `Member`,
their shared pairs and seeds are matched by dataset index and seed (`matching`), and the matrices are
computed block by block (`corrmaths`). `correlations_step` and `correlations_with_scores` are the thin layers
that find the score files, skip finished outputs and write the CSVs and heatmaps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from .. import plots
from ..config import ExperimentConfig, TDAError
from ..locking import claim, lock_path
from ..seeds import load_seeds
from .corrmaths import CORR_KINDS, CORR_STATS, correlation_matrices
from .external_scores import External, index_files, load_external
from .inventory import Inventory, MethodScores, take_inventory
from .matching import Member, share
from .outputs import Fingerprint, Outputs, write_figure

CORR_MANIFEST = ".correlations_manifest.json"
FIG_FORMATS = ("png", "pdf")

Log = Callable[[str], None]


def corr_csv_name(kind: str, stat: str) -> str:
    """File of one correlation matrix (kind pearson/spearman, statistic mean/std/snr)."""
    return f"correlation_{kind}_{stat}.csv"


def corr_fig_stem(kind: str) -> str:
    """File stem of the heatmaps of one kind of correlation."""
    return f"correlations_{kind}"


def member(ms: MethodScores, k: int | None = None) -> Member:
    """A method's scores as a member of a correlation, at K = k (at most its checkpoints; default all of them)."""
    n_ckpts = ms.scores.shape[1]
    return Member(ms.label, ms.source, list(ms.seeds), list(ms.train_indices), list(ms.test_indices),
                  n_ckpts if k is None else min(k, n_ckpts))


def write_correlations(out: Outputs, members: list[Member], fp_all: Fingerprint, name: str,
                       log: Log = print) -> dict[tuple[str, str], pd.DataFrame]:
    """Compute and write the correlation CSVs and heatmaps (titled with `name`) of `members`."""
    shared = share(members)
    ks = sorted({m.k for m in members})
    log(f"correlations over {len(shared.train)} training x {len(shared.test)} test samples and "
        f"{len(shared.seeds)} seeds shared by {', '.join(m.label for m in members)}")
    mats = correlation_matrices(members, shared)
    for kind in CORR_KINDS:
        for s in CORR_STATS:
            out.write(corr_csv_name(kind, s), mats[(kind, s)].to_csv(), fp_all)
        fig = plots.correlation_heatmaps({CORR_STATS[s]: mats[(kind, s)] for s in CORR_STATS},
                                         f"{name}: {kind.capitalize()} correlation between methods, "
                                         f"K = {'/'.join(map(str, ks))} checkpoints, {len(shared.seeds)} seeds")
        write_figure(out, corr_fig_stem(kind), fig, fp_all, formats=FIG_FORMATS)
    return mats


@dataclass
class CorrelationSummary:
    """The matrices {(kind, stat): DataFrame} at K = C, and the figure paths."""

    matrices: dict[tuple[str, str], pd.DataFrame]
    figures: list[Path]
    skipped: bool
    notes: list[str]


def output_names() -> list[str]:
    """Every file the correlation step writes."""
    return ([corr_csv_name(k, s) for k in CORR_KINDS for s in CORR_STATS]
            + [f"{corr_fig_stem(k)}.{ext}" for k in CORR_KINDS for ext in FIG_FORMATS])


def expected_outputs(inv: Inventory) -> dict[str, Fingerprint]:
    """Every file the correlation step writes, with the fingerprint of its inputs (all methods' files)."""
    fp = inv.fp_all()
    return {n: fp for n in output_names()}


def _ours(cfg: ExperimentConfig, methods, need: int, notes: list[str]) -> Inventory | None:
    """Our methods' inventory restricted to the seeds they all have (None when there is none to include)."""
    inv = take_inventory(cfg, methods, need=need)
    notes += inv.describe()
    if not inv.methods:
        return None
    shared = inv.shared()
    n_shared = len(next(iter(shared.files.values())))
    if any(len(f) != n_shared for f in inv.files.values()):
        notes.append(f"correlations use the {n_shared} seeds all of {', '.join(inv.methods)} have")
    if n_shared < 2:
        raise TDAError(f"the outputs {', '.join(inv.methods)} of {cfg.name} share {n_shared} seed(s), correlations "
                       f"need >= 2: run `{inv.fix(inv.methods)}`")
    return shared


def correlations_step(cfg: ExperimentConfig, methods: list[str] | tuple[str, ...] | None = None,
                      overwrite: bool = False, log: Log = print) -> CorrelationSummary:
    """run_correlations.py: correlation matrices between methods of mu, sigma and SNR, CSVs and heatmaps."""
    with claim(lock_path(cfg.results_dir, "correlations")):  # one process at a time per step
        notes: list[str] = []
        inv = _ours(cfg, methods, 2, notes)
        for line in notes:
            log(line)
        out = Outputs(cfg.results_dir, CORR_MANIFEST, overwrite)
        figures = [cfg.results_dir / f"{corr_fig_stem(k)}.{e}" for k in CORR_KINDS for e in FIG_FORMATS]
        if out.all_finished(expected_outputs(inv)):
            log(f"correlations of {cfg.name} are up to date: nothing recomputed (--overwrite to redo)")
            return CorrelationSummary(read_correlations(cfg.results_dir), figures, skipped=True, notes=notes)
        mats = write_correlations(out, [member(inv.open(m), cfg.n_ckpts) for m in inv.methods], inv.fp_all(),
                                  cfg.name, log=lambda s: None)
        out.save_manifest(methods={m: list(inv.files[m]) for m in inv.methods})
        log(f"wrote {len(out.written)} files to {cfg.results_dir}/ ({len(out.kept)} unchanged)")
        return CorrelationSummary(mats, figures, skipped=False, notes=notes)


def _with_seed_names(ext: External, experiment_seeds: list[int] | None, log: Log) -> MethodScores:
    """External scores whose seeds are only numbered take the experiment's seeds in random_seeds.pt order."""
    ms = ext.ms
    if ext.seeds_named or not experiment_seeds or len(ms.seeds) > len(experiment_seeds):
        return ms
    seeds = experiment_seeds[:len(ms.seeds)]
    log(f"{ms.label}: seeds not named by its files, taken as the experiment's first {len(seeds)} "
        f"({', '.join(map(str, seeds))})")
    return MethodScores(ms.method, seeds, ms.scores, ms.train_indices, ms.test_indices, ms.ckpt_epochs, ms.settings,
                        ms.label)


def correlations_with_scores(cfg: ExperimentConfig | None, out_dir: Path, scores: list[str], method_names: list[str],
                             train_file: str | None = None, test_file: str | None = None,
                             methods: list[str] | None = None, overwrite: bool = False,
                             log: Log = print) -> CorrelationSummary:
    """run_correlations.py --scores: external methods correlated with each other and, when `cfg` is an experiment
    with scores, with its own methods (LOO included), over the pairs and seeds they share, into `out_dir`."""
    if len(scores) != len(method_names):
        raise TDAError(f"--scores lists {len(scores)} source(s) and --method_name {len(method_names)}: "
                       "give one name each")
    train, test = index_files(train_file, test_file)
    externals = [load_external(path, name, train, test) for path, name in zip(scores, method_names)]
    notes: list[str] = []
    inv = _ours(cfg, methods, 0, notes) if cfg is not None else None
    for line in notes:
        log(line)
    own = list(inv.methods) if inv is not None else []
    if len(own) + len(externals) < 2:
        raise TDAError(f"correlations need >= 2 methods, got {', '.join(method_names)} only: give another --scores, "
                       "or an --experiment with scores of its own")
    with claim(lock_path(out_dir, "correlations")):
        out = Outputs(out_dir, CORR_MANIFEST, overwrite)
        fp_all = {**(inv.fp_all() if inv is not None else {}), **{e.ms.method: e.fingerprint() for e in externals}}
        figures = [out_dir / f"{corr_fig_stem(k)}.{e}" for k in CORR_KINDS for e in FIG_FORMATS]
        if out.all_finished({n: fp_all for n in output_names()}):
            log(f"correlations in {out_dir}/ are up to date: nothing recomputed (--overwrite to redo)")
            return CorrelationSummary(read_correlations(out_dir), figures, skipped=True, notes=notes)
        k = cfg.n_ckpts if cfg is not None else None
        seeds = load_seeds(cfg.root) if cfg is not None else None
        members = [member(inv.open(m), k) for m in own]
        members += [member(_with_seed_names(e, seeds, log), k) for e in externals]
        for m in members[len(own):]:
            if k is not None and m.k < k:
                log(f"{m.label}: {m.k} checkpoint(s) per seed, averaged over those (ours over {k})")
        mats = write_correlations(out, members, fp_all, out_dir.name, log)
        out.save_manifest(methods={m.label: m.seeds for m in members})
        log(f"wrote {len(out.written)} files to {out_dir}/ ({len(out.kept)} unchanged)")
        return CorrelationSummary(mats, figures, skipped=False, notes=notes)


def read_correlations(directory: Path | ExperimentConfig) -> dict[tuple[str, str], pd.DataFrame]:
    """The correlation CSVs written by run_correlations.py (those that exist) in a results directory."""
    d = directory.results_dir if isinstance(directory, ExperimentConfig) else Path(directory)
    out = {}
    for kind in CORR_KINDS:
        for s in CORR_STATS:
            p = d / corr_csv_name(kind, s)
            if p.exists():
                out[(kind, s)] = pd.read_csv(p, index_col=0)
    return out


def format_correlations(mats: dict[tuple[str, str], pd.DataFrame], k: int = 5) -> str:
    """The matrices as printed by run_correlations.py."""
    parts = []
    for (kind, s), m in mats.items():
        parts.append(f"{kind.capitalize()} correlation of {CORR_STATS[s]} between methods (K = {k}):\n"
                     + m.to_string(float_format=lambda v: f"{v:+.3f}"))
    return "\n\n".join(parts) + "\n"

