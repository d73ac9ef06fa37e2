"""Per-pair p-values of every TDA method over seeds and K = 1..C checkpoints, the mean p-value table, significance.

The maths (`method_pvalues`) and the writing (`write_pvalues`) take loaded `MethodScores`; `pvalues_step`
is the thin layer that finds the score files of an experiment, skips finished outputs and loads the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import plots, stats
from ..config import ExperimentConfig, TDAError
from ..methods import label
from .inventory import Inventory, MethodScores, take_inventory
from ..locking import claim, lock_path
from .outputs import Fingerprint, Outputs, markdown_table, write_figure

ALPHA = 0.05
TEST_NAMES = {"z": "z-test on SNR (paper)", "t": "t-test on the mean"}
PVALUES_MANIFEST = ".pvalues_manifest.json"
AGG_PVALUE_FILES = ("mean_p_values.csv", "mean_p_values.md", "significance.csv")

Log = Callable[[str], None]


def pvalue_csv_name(method: str, k: int) -> str:
    """File of one method's per-pair p-values with tau averaged over the last K checkpoints."""
    return f"pvalues_{method}_across_{k}_ckpts.csv"


def hist_name(method: str) -> str:
    """File of one method's p-value histograms."""
    return f"pvalue_hist_{method}.png"


@dataclass
class MethodPValues:
    """One method's per-pair p-values {K: [N, M]} under both tests, its significance rows and report facts."""

    z: dict[int, np.ndarray]
    t: dict[int, np.ndarray]
    rows: list[dict]
    info: dict


def significance_row(label: str, k: int, st: stats.SeedStats, pz: np.ndarray, pt: np.ndarray) -> dict:
    """One row of significance.csv: fractions of pairs with p < 0.05, raw and after Benjamini-Hochberg."""
    return {
        "method": label, "K": k, "n_seeds": st.n, "n_pairs": int(pz.size),
        "n_zero_sigma": int((st.sigma == 0).sum()),
        "z_mean_p": float(pz.mean()),
        "z_frac_p_lt_0.05": stats.fraction_below(pz, ALPHA),
        "z_frac_bh_lt_0.05": stats.fraction_below(stats.benjamini_hochberg(pz), ALPHA),
        "t_mean_p": float(pt.mean()),
        "t_frac_p_lt_0.05": stats.fraction_below(pt, ALPHA),
        "t_frac_bh_lt_0.05": stats.fraction_below(stats.benjamini_hochberg(pt), ALPHA),
    }


def method_pvalues(ms: MethodScores) -> MethodPValues:
    """For K = 1..C: tau averaged over each seed's last K checkpoints, mu/sigma/SNR over seeds, both tests."""
    n_ckpts = ms.scores.shape[1]
    info = {"seeds": ms.seeds, "n_train": len(ms.train_indices), "n_test": len(ms.test_indices),
            "ckpt_epochs": ms.ckpt_epochs, "settings": ms.settings,
            "shared_share": stats.shared_variance_share(stats.average_last_k(ms.scores, n_ckpts))}
    z, t, rows = {}, {}, []
    for k in range(1, n_ckpts + 1):
        st = stats.stats_across_k(ms.scores, k)
        z[k], t[k] = stats.z_pvalues(st.snr), stats.t_pvalues(st)
        rows.append(significance_row(ms.label, k, st, z[k], t[k]))
    return MethodPValues(z, t, rows, info)


def pvalue_frame(p: np.ndarray, ms: MethodScores) -> pd.DataFrame:
    """Per-pair p-values labelled by dataset indices: rows train samples j, columns test samples i."""
    return pd.DataFrame(p, index=pd.Index(ms.train_indices, name="train_index"),
                        columns=pd.Index(ms.test_indices, name="test_index"))


def write_pvalues(out: Outputs, scores: Iterable[MethodScores], fp: Callable[[str], Fingerprint],
                  fp_all: Fingerprint) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write per-pair CSVs and histograms of each method (unless finished), then the aggregate tables.

    `scores` may be a generator, so only one method's scores are in memory at a time; `fp(method)` is
    the fingerprint of that method's inputs, `fp_all` that of all of them. Returns (mean p, significance).
    """
    mean_p, rows, info = {}, [], {}
    for ms in scores:
        res, f = method_pvalues(ms), fp(ms.method)
        for k, pz in res.z.items():
            name = pvalue_csv_name(ms.method, k)
            if not out.finished(name, f):
                # float32 scores carry ~7 significant digits: more would only be noise
                out.write(name, pvalue_frame(pz, ms).to_csv(float_format="%.7g"), f)
        if not out.finished(hist_name(ms.method), f):
            fig = plots.pvalue_histogram({TEST_NAMES["z"]: res.z, TEST_NAMES["t"]: res.t}, ms.label, len(ms.seeds))
            write_figure(out, hist_name(ms.method).removesuffix(".png"), fig, f)
        mean_p[ms.label] = {k: float(pz.mean()) for k, pz in res.z.items()}
        rows += res.rows
        info[ms.method] = res.info
    table = pd.DataFrame(mean_p)
    table.index.name = "K"
    sig = pd.DataFrame(rows)
    out.save_manifest(info=info)  # before the aggregates: a finished table always has its report info
    out.write("mean_p_values.csv", table.to_csv(), fp_all)
    out.write("mean_p_values.md", mean_p_markdown(table, sig), fp_all)
    out.write("significance.csv", sig.to_csv(index=False), fp_all)
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
    table, sig = write_pvalues(out, loaded, inv.fp, inv.fp_all())
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
