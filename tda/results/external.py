"""Significance of attribution scores computed anywhere (another library, another model), as for our own methods.

`run_pvalues.py --scores` (and `significance`, and `tda.significance(...).save`) writes the p-value step's
files for them into a results directory: the per-K CSVs, the per-pair table, histograms, the aggregate tables,
the trusted pairs and report.md (docs/own_data.md). Loading and checking the scores: `external_scores`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from ..config import TDAError, parse_experiment, repo_root
from ..locking import claim, lock_path
from ..methods import label, outputs
from .correlations import CORR_KINDS, corr_csv_name, corr_fig_stem
from .external_scores import ScoresLike, _NAME, index_files, load_external
from .inventory import MethodScores, take_inventory
from .outputs import Fingerprint, Outputs, markdown_table, read_manifest, write_if_changed
from .pairfile import pairs_name
from .pvalues import ALPHA, PVALUES_MANIFEST, PValueSummary, hist_name, mean_p_markdown, write_pvalues
from .report import reading_guide, write_report
from .trust import Subsets, trust_section


@dataclass
class Item:
    """One method's scores to test: how to load them (only when written) and the fingerprint of their inputs."""

    method: str
    load: Callable[[], MethodScores]
    fp: Fingerprint


def external_report(out_dir: Path, name: str) -> Path:
    """report.md of a results directory that holds only externally computed scores (no experiment behind it)."""
    info = read_manifest(out_dir / PVALUES_MANIFEST).get("info", {})
    mean_p, sig = pd.read_csv(out_dir / "mean_p_values.csv", index_col=0), pd.read_csv(out_dir / "significance.csv")
    lines = [f"* {label(m)}: seeds {', '.join(map(str, d['seeds']))}; {len(d['ckpt_epochs'])} checkpoint(s); "
             f"{d['n_train']} training x {d['n_test']} test samples; scores from `{d['settings'].get('scores', '?')}`"
             for m, d in info.items()]
    cols = ["method", "K", "n_seeds", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_frac_p_lt_0.05", "t_frac_bh_lt_0.05"]
    parts = [f"# Bayesian TDA results: {name}\n\nAttribution scores computed elsewhere, tested for significance over "
             "seeds (`run_pvalues.py --scores`, or `tda.significance(scores).save(dir)`).\n\n",
             "\n".join(lines) + "\n\n",
             reading_guide(max((len(d["seeds"]) for d in info.values()), default=2)),
             "\n## Mean p-value (the paper's table)\n\nMean over all train-test pairs of the z-test p-value, rows = "
             "number K of last checkpoints averaged per seed (`mean_p_values.csv`; per-pair z-test p-values in "
             "`pvalues_<method>_across_<K>_ckpts.csv`; every pair's mu, sigma, SNR, both p-values and q-value in "
             f"`{pairs_name('<method>')}`).\n\n", mean_p_markdown(mean_p, sig),
             f"\n## Fraction of pairs with p < {ALPHA}\n\nz = paper's test, t = t-test on the mean, bh = after "
             "Benjamini-Hochberg (`significance.csv`).\n\n", markdown_table(sig[cols].set_index("method")),
             trust_section(out_dir, sig),
             "\n## p-value histograms\n\n"] + [f"![{label(m)} p-values]({hist_name(m)})\n\n" for m in info]
    if (out_dir / corr_csv_name("pearson", "mean")).exists():
        parts.append("## Correlations between methods\n\nEach cell correlates two methods' mu, sigma or SNR over the "
                     "train-test pairs and seeds they share (`run_correlations.py --scores`).\n\n")
        parts += [f"![{kind} correlations]({corr_fig_stem(kind)}.png)\n\n" for kind in CORR_KINDS]
    path = out_dir / "report.md"
    write_if_changed(path, "".join(parts))
    return path


def write_external(out_dir: Path, items: list[Item], overwrite: bool = False,
                   subsets: Subsets | None = None) -> PValueSummary:
    """The p-value step's files for `items` in `out_dir` (one method loaded at a time)."""
    fps = {it.method: it.fp for it in items}
    with claim(lock_path(out_dir, "pvalues")):  # one writer at a time, as for the experiments' own step
        out = Outputs(out_dir, PVALUES_MANIFEST, overwrite)
        table, sig = write_pvalues(out, (it.load() for it in items), fps.__getitem__, fps, subsets)
    return PValueSummary(table, sig, [out_dir / hist_name(it.method) for it in items], skipped=False, notes=[])


def significance(scores: ScoresLike, method_name: str, out_dir: Path | str, train_indices: list[int] | None = None,
                 test_indices: list[int] | None = None, seeds: list[int] | None = None,
                 ckpt_epochs: list[int] | None = None, overwrite: bool = False) -> PValueSummary:
    """Test scores [seeds, checkpoints, N, M] (array, tensor, file or per-seed directory) pair by pair; write the
    tables, histograms and report.md into `out_dir` and return the mean p-value table and significance fractions."""
    ext = load_external(scores, method_name, train_indices, test_indices, seeds, ckpt_epochs)
    out_dir = Path(out_dir)
    summary = write_external(out_dir, [Item(ext.ms.method, lambda: ext.ms, ext.fingerprint())], overwrite)
    external_report(out_dir, out_dir.name)
    return summary


def results_name(name: str) -> Path:
    """results/NAME/ of --experiment NAME with --scores (NAME need not be an experiment); a one-line error if bad."""
    if not _NAME.match(name) or name in (".", ".."):
        raise TDAError(f"bad results name {name!r}: use letters, digits, '_', '-' and '.' (it names results/{name}/)")
    return repo_root() / "results" / name


def experiment_or_none(name: str):
    """The experiment called NAME, or None when NAME only names a results directory."""
    try:
        return parse_experiment(name)
    except TDAError:
        return None


def refresh_report(name: str) -> Path | None:
    """Rewrite results/NAME/report.md after a step: the experiment's report when its own methods are in the tables,
    the report of external scores otherwise; None before the p-value step has run."""
    out_dir, cfg = results_name(name), experiment_or_none(name)
    if not (out_dir / "mean_p_values.csv").exists():
        return None
    info = read_manifest(out_dir / PVALUES_MANIFEST).get("info", {})
    if cfg is not None and any(m in outputs() for m in info):
        return write_report(cfg)
    return external_report(out_dir, name)


def pvalues_with_scores(name: str, scores: list[str], method_names: list[str], train_file: str | None = None,
                        test_file: str | None = None, methods: list[str] | None = None, overwrite: bool = False,
                        log: Callable[[str], None] = print) -> tuple[PValueSummary, Path]:
    """run_pvalues.py --scores: external scores into results/NAME/, with the experiment NAME's own methods if it has
    any scores; returns the summary and the report's path."""
    if len(scores) != len(method_names):
        raise TDAError(f"--scores lists {len(scores)} source(s) and --method_name {len(method_names)}: "
                       "give one name each")
    out_dir = results_name(name)
    train, test = index_files(train_file, test_file)
    items, cfg = [], experiment_or_none(name)
    if cfg is not None:
        inv = take_inventory(cfg, methods, need=0)
        items += [Item(m, lambda m=m: inv.load(m), inv.fp(m)) for m in inv.methods]
        if items:
            log(f"with {name}'s own scores: {', '.join(label(m) for m in inv.methods)}")
    for path, method in zip(scores, method_names):
        ext = load_external(path, method, train, test)  # checked now: a bad file fails before anything is written
        items.append(Item(method, lambda ms=ext.ms: ms, ext.fingerprint()))
    summary = write_external(out_dir, items, overwrite, Subsets.of(cfg))
    if cfg is not None and len(items) > len(scores):
        return summary, write_report(cfg)
    return summary, external_report(out_dir, name)
