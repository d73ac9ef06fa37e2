"""Per-pair p-values of every TDA method over seeds and K = 1..C checkpoints, the mean p-value table, significance.

Per method, `perpair.write_method` streams the per-K CSVs, the per-pair table and the histogram and returns
its tallies; `write_pvalues` adds the aggregate tables (the paper's mean p-value table, significance.csv) and
the trusted pairs. `pvalues_step` is the thin layer that finds the score files of an experiment, skips
finished outputs and loads the rest. `method_pvalues` is the same in memory (the study's tables).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import stats
from ..config import ExperimentConfig, TDAError
from ..methods import label
from .inventory import Inventory, MethodScores, take_inventory
from ..locking import claim, lock_path
from .outputs import Fingerprint, Outputs, markdown_table
from .pairfile import pairs_name, pvalue_csv_name
from .pairs import ALPHA, KTally, analyse
from .perpair import MethodResult, hist_name, write_method
from .trust import TRUST_CSV, Subsets, trusted_frame, write_trust

PVALUES_MANIFEST = ".pvalues_manifest.json"
AGG_PVALUE_FILES = ("mean_p_values.csv", "mean_p_values.md", "significance.csv", TRUST_CSV)

Log = Callable[[str], None]


@dataclass
class MethodPValues:
    """One method's per-pair p-values {K: [N, M]} under both tests and its significance rows (in memory)."""

    z: dict[int, np.ndarray]
    t: dict[int, np.ndarray]
    rows: list[dict]


def method_pvalues(ms: MethodScores) -> MethodPValues:
    """For K = 1..C: tau averaged over each seed's last K checkpoints, mu/sigma/SNR over seeds, both tests."""
    a = analyse(ms.source)
    return MethodPValues({k: a.arrays["p_z"][k - 1] for k in a.tallies}, {k: a.arrays["p_t"][k - 1] for k in a.tallies},
                         [t.row(ms.label) for t in a.tallies.values()])


def tables(tallies: dict[str, dict[int, KTally]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the paper's mean p-value table [K x methods], significance.csv's rows) of methods' tallies by label."""
    table = pd.DataFrame({lab: {k: t.mean_p("z") for k, t in per_k.items()} for lab, per_k in tallies.items()})
    table.index.name = "K"
    return table, pd.DataFrame([t.row(lab) for lab, per_k in tallies.items() for t in per_k.values()])


def write_pvalues(out: Outputs, scores: Iterable[MethodScores], fp: Callable[[str], Fingerprint],
                  fp_all: Fingerprint, subsets: Subsets | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write each method's per-pair files and histograms (unless finished), then the aggregate tables and the
    trusted pairs (labelled and pictured from `subsets` when given).

    `scores` may be a generator, so only one method's scores are in memory at a time (and a method read from a
    file is never whole in memory); `fp(method)` is the fingerprint of that method's inputs, `fp_all` that of
    all of them. Returns (mean p, significance).
    """
    results: list[MethodResult] = [write_method(out, ms, fp(ms.method)) for ms in scores]
    table, sig = tables({r.ms.label: r.tallies for r in results})
    out.save_manifest(info={r.ms.method: r.info for r in results})  # before the aggregates: a finished table
    out.write("mean_p_values.csv", table.to_csv(), fp_all)          # always has its report info
    out.write("mean_p_values.md", mean_p_markdown(table, sig), fp_all)
    out.write("significance.csv", sig.to_csv(index=False), fp_all)
    write_trust(out, trusted_frame(results, subsets), subsets, fp_all)
    return table, sig


@dataclass
class PValueSummary:
    """What run_pvalues.py prints: the paper's table, the significance fractions, the figures."""

    mean_p: pd.DataFrame
    significance: pd.DataFrame
    figures: list[Path]
    skipped: bool
    notes: list[str]


def expected_outputs(inv: Inventory) -> dict[str, Fingerprint]:
    """Every file the p-value step writes for `inv`, with the fingerprint of its inputs."""
    expected: dict[str, Fingerprint] = {}
    for m in inv.methods:
        fp = inv.fp(m)
        expected.update({pvalue_csv_name(m, k): fp for k in range(1, inv.cfg.n_ckpts + 1)})
        expected[hist_name(m)] = fp
        expected[pairs_name(m)] = fp
    expected.update({n: inv.fp_all() for n in AGG_PVALUE_FILES})
    return expected


def pvalues_step(cfg: ExperimentConfig, methods: list[str] | tuple[str, ...] | None = None,
                 overwrite: bool = False, log: Log = print) -> PValueSummary:
    """run_pvalues.py: per method and K, per-pair p-values, the mean p-value table, significance, histograms."""
    with claim(lock_path(cfg.results_dir, "pvalues")):  # one process at a time per step
        return _pvalues_step(cfg, methods, overwrite, log)


def _pvalues_step(cfg: ExperimentConfig, methods, overwrite: bool, log: Log):
    inv = take_inventory(cfg, methods)
    notes = inv.describe()
    for line in notes:
        log(line)
    out = Outputs(cfg.results_dir, PVALUES_MANIFEST, overwrite)
    figures = [cfg.results_dir / hist_name(m) for m in inv.methods]
    if out.all_finished(expected_outputs(inv)) and set(out.manifest.get("info", {})) == set(inv.methods):
        log(f"p-values of {cfg.name} are up to date (from {', '.join(label(m) for m in inv.methods)}): "
            "nothing recomputed (--overwrite to redo)")
        return PValueSummary(*read_pvalue_tables(cfg), figures=figures, skipped=True, notes=notes)
    loaded = (inv.load(m) for m in tqdm(inv.methods, desc="p-values", leave=False))
    table, sig = write_pvalues(out, loaded, inv.fp, inv.fp_all(), Subsets.of(cfg))
    log(f"wrote {len(out.written)} files to {cfg.results_dir}/ ({len(out.kept)} unchanged)")
    return PValueSummary(table, sig, figures, skipped=False, notes=notes)


def null_reference(significance: pd.DataFrame) -> str:
    """What pure noise would give: the z-test's p-values are not uniform, so its mean is not 0.5."""
    ns = sorted(set(int(n) for n in significance["n_seeds"]))
    refs = ", ".join(f"{stats.null_mean_z_pvalue(n):.3f} with {n} seeds" for n in ns)
    return (f"Pure-noise reference (true mean attribution 0, Gaussian across seeds): mean z-test p-value "
            f"{refs}; mean t-test p-value 0.5.")


def mean_p_markdown(table: pd.DataFrame, significance: pd.DataFrame) -> str:
    """The paper's table: mean p-value over all train-test pairs, rows K checkpoints, columns methods."""
    t = table.copy()
    t.index = [f"{k} ckpt" + ("s" if k > 1 else "") for k in t.index]
    t.index.name = "K"
    return markdown_table(t) + "\n" + null_reference(significance) + "\n"


def read_pvalue_tables(cfg: ExperimentConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The mean p-value table and significance.csv as written by run_pvalues.py."""
    d = cfg.results_dir
    missing = [n for n in ("mean_p_values.csv", "significance.csv") if not (d / n).exists()]
    if missing:
        raise TDAError(f"missing {d / missing[0]}: run `python run_pvalues.py --experiment {cfg.name}` first")
    return pd.read_csv(d / "mean_p_values.csv", index_col=0), pd.read_csv(d / "significance.csv")


def format_pvalue_summary(s: PValueSummary) -> str:
    """The mean p-value table and significance fractions, as printed at the end of a run."""
    sig = s.significance.set_index(["method", "K"])[
        ["n_seeds", "z_frac_p_lt_0.05", "z_frac_bh_lt_0.05", "t_frac_p_lt_0.05", "t_frac_bh_lt_0.05"]]
    return ("Mean p-value over all train-test pairs (paper's z-test on SNR), rows K checkpoints:\n"
            + s.mean_p.to_string(float_format=lambda v: f"{v:.4f}") + "\n"
            + null_reference(s.significance) + "\n\n"
            + f"Fraction of pairs with p < {ALPHA} (z: paper's test, t: t-test on the mean; bh: "
              "after Benjamini-Hochberg):\n"
            + sig.to_string(float_format=lambda v: f"{v:.4f}") + "\n")
