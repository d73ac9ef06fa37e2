"""The paper's comparison across settings: mean p-values and significant fractions of every method in several
experiments, from each experiment's results/<experiment>/{mean_p_values,significance}.csv.

`python run_summary.py [--experiments E ...]` writes results/summary/: `mean_p_k.csv` (mean z-test
p-value at the largest K, method x experiment), `significance.csv` (all fractions at that K, long
format), `mean_p_vs_k.csv/.png` (mean p-value against K, one panel per method, one line per
experiment), `significance.csv/.png` beside its figure, `external_methods.csv` (the methods computed
elsewhere, `run_pvalues.py --scores`, with their source and their correlation with LOO where
`run_correlations.py --scores` computed it), and `report.md`. Finished files are kept (a
hidden manifest records the digests of the input CSVs) and every write is atomic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import plots  # noqa: F401 - sets the headless backend before seaborn loads pyplot
from .. import provenance, stats
from ..config import TDAError, repo_root
from ..methods import outputs
from .outputs import Outputs, markdown_table, read_manifest, write_figure

import seaborn as sns  # noqa: E402,I001

SUMMARY_MANIFEST = ".summary_manifest.json"
FRACTIONS = {"z_frac_p_lt_0.05": "z, raw", "z_frac_bh_lt_0.05": "z, BH", "t_frac_p_lt_0.05": "t, raw",
             "t_frac_bh_lt_0.05": "t, BH"}
TABLES = ("mean_p_values.csv", "significance.csv")
FILES = ("mean_p_k.csv", "significance.csv", "mean_p_vs_k.csv", "mean_p_vs_k.png", "significance.png",
         "external_methods.csv", "report.md")
#: what the summary lists of a method computed elsewhere
EXTERNAL_COLUMNS = ["experiment", "method", "scores", "n_seeds", "n_train", "n_test", "K", "z_mean_p",
                    "t_frac_bh_lt_0.05", "pearson_mean_vs_LOO", "spearman_mean_vs_LOO"]


def results_dir(root: Path, experiment: str) -> Path:
    """Where an experiment's results live (also results of external scores, named by run_pvalues.py)."""
    return Path(root) / "results" / experiment


def discover(root: Path) -> list[str]:
    """Every directory under root/results/ that holds both tables of the p-value step, by name."""
    base = Path(root) / "results"
    return [d.name for d in sorted(base.iterdir()) if base.is_dir()
            and all((d / n).exists() for n in TABLES)] if base.is_dir() else []


@dataclass
class Tables:
    """The inputs of the summary: per experiment its mean p-value table [K x methods] and significance rows."""

    mean_p: dict[str, pd.DataFrame]
    significance: dict[str, pd.DataFrame]


def load_tables(experiments: list[str], root: Path) -> Tables:
    """Read each experiment's tables; a missing one is a one-line error naming the step that writes it."""
    mean_p, sig = {}, {}
    for e in experiments:
        d = results_dir(root, e)
        missing = [n for n in TABLES if not (d / n).exists()]
        if missing:
            raise TDAError(f"no results for {e}: {d / missing[0]} is missing; run `bash run_experiment.sh {e}` "
                           f"(or `python run_pvalues.py --experiment {e}`) first")
        try:
            mean_p[e], sig[e] = pd.read_csv(d / TABLES[0], index_col=0), pd.read_csv(d / TABLES[1])
        except (OSError, ValueError) as err:
            raise TDAError(f"cannot read the results of {e} in {d}/ ({type(err).__name__}): rerun "
                           f"`python run_pvalues.py --experiment {e} --overwrite`")
    return Tables(mean_p, sig)


def long_mean_p(t: Tables) -> pd.DataFrame:
    """Mean z-test p-value per experiment, method and K, one row each."""
    frames = []
    for e, table in t.mean_p.items():
        f = table.reset_index().melt(id_vars="K", var_name="method", value_name="mean_p")
        frames.append(f.assign(experiment=e))
    return pd.concat(frames, ignore_index=True)[["experiment", "method", "K", "mean_p"]]


def at_largest_k(t: Tables) -> pd.DataFrame:
    """significance.csv rows at each experiment's largest K (K = 5 in the paper's setting), with the experiment."""
    frames = [s[s["K"] == s["K"].max()].assign(experiment=e) for e, s in t.significance.items()]
    cols = ["experiment", "method", "K", "n_seeds", "n_pairs", "z_mean_p", *FRACTIONS, "t_mean_p"]
    return pd.concat(frames, ignore_index=True)[cols]


def mean_p_matrix(sig: pd.DataFrame) -> pd.DataFrame:
    """Mean z-test p-value at the largest K: methods (rows) x experiments (columns)."""
    m = sig.pivot(index="method", columns="experiment", values="z_mean_p")
    order = list(dict.fromkeys(sig["method"]))
    return m.loc[order, list(dict.fromkeys(sig["experiment"]))]


def mean_p_figure(frame: pd.DataFrame):
    """Mean p-value against K, one panel per method, one line per experiment."""
    sns.set_theme(style="whitegrid")
    g = sns.relplot(frame, x="K", y="mean_p", hue="experiment", col="method", kind="line", marker="o",
                    col_wrap=min(5, frame["method"].nunique()), height=3.0, aspect=1.0, facet_kws={"sharey": True})
    g.set_axis_labels("K (last checkpoints averaged)", "mean z-test p-value")
    g.figure.suptitle("Mean p-value over all train-test pairs against K", y=1.03)
    return g.figure


def significance_figure(sig: pd.DataFrame):
    """Fraction of pairs with p < 0.05 at the largest K: one panel per test, bars per method and experiment."""
    sns.set_theme(style="whitegrid")
    long = sig.melt(id_vars=["experiment", "method"], value_vars=list(FRACTIONS), var_name="test",
                    value_name="fraction")
    long["test"] = long["test"].map(FRACTIONS)
    g = sns.catplot(long, x="method", y="fraction", hue="experiment", col="test", kind="bar", height=3.0,
                    aspect=1.2, col_wrap=2)
    g.set_axis_labels("", "fraction of pairs with p < 0.05")
    g.figure.suptitle("Significant train-test pairs at the largest K", y=1.03)
    return g.figure


def _corr(d: Path, kind: str, a: str, b: str) -> float:
    path = d / f"correlation_{kind}_mean.csv"
    if not path.exists():
        return float("nan")
    m = pd.read_csv(path, index_col=0)
    return float(m.loc[a, b]) if a in m.index and b in m.columns else float("nan")


def external_methods(experiments: list[str], root: Path, sig: pd.DataFrame) -> pd.DataFrame:
    """The methods of each experiment's tables that were computed elsewhere: where their scores came from, their
    significance at the largest K and the correlation of their mu with LOO's (NaN where not computed)."""
    rows = []
    for e in experiments:
        d = results_dir(root, e)
        info = read_manifest(d / ".pvalues_manifest.json").get("info", {})
        for m, i in info.items():
            if m in outputs():
                continue
            lab = m.upper()
            at_k = sig[(sig["experiment"] == e) & (sig["method"] == lab)]
            rows.append({"experiment": e, "method": lab, "scores": i.get("settings", {}).get("scores", "?"),
                         "n_seeds": len(i.get("seeds", [])), "n_train": i.get("n_train"), "n_test": i.get("n_test"),
                         "K": int(at_k["K"].iloc[0]) if len(at_k) else None,
                         "z_mean_p": float(at_k["z_mean_p"].iloc[0]) if len(at_k) else float("nan"),
                         "t_frac_bh_lt_0.05": float(at_k["t_frac_bh_lt_0.05"].iloc[0]) if len(at_k) else float("nan"),
                         "pearson_mean_vs_LOO": _corr(d, "pearson", lab, "LOO"),
                         "spearman_mean_vs_LOO": _corr(d, "spearman", lab, "LOO")})
    return pd.DataFrame(rows, columns=EXTERNAL_COLUMNS)


def external_section(ext: pd.DataFrame) -> str:
    """The report's list of methods computed elsewhere ("" when there is none)."""
    if ext.empty:
        return ""
    t = ext.set_index("experiment")[["method", "scores", "n_seeds", "K", "z_mean_p", "t_frac_bh_lt_0.05",
                                     "pearson_mean_vs_LOO", "spearman_mean_vs_LOO"]]
    return ("\n## Methods computed elsewhere\n\nScores brought in with `run_pvalues.py --scores` and tested like ours; "
            "their correlation with LOO's mu is that of `run_correlations.py --scores` (nan where not run, or where "
            "the experiment has no LOO) (`external_methods.csv`).\n\n" + markdown_table(t))


def summary_report(sig: pd.DataFrame, matrix: pd.DataFrame, experiments: list[str]) -> str:
    """report.md of the summary: the mean p-value matrix, the significant fractions, the figures."""
    ns = sorted(set(int(n) for n in sig["n_seeds"]))
    null = ", ".join(f"{stats.null_mean_z_pvalue(n):.3f} with {n} seeds" for n in ns)
    frac = sig.set_index(["experiment", "method"])[list(FRACTIONS)].rename(columns=FRACTIONS)
    frac.index = [f"{e} / {m}" for e, m in frac.index]
    frac.index.name = "experiment / method"
    return (f"# Summary across experiments\n\nExperiments: {', '.join(experiments)}. Regenerate with "
            f"`python run_summary.py --experiments {' '.join(experiments)}`.\n\n"
            f"## Mean p-value at K = {int(sig['K'].max())} (the paper's table, z-test)\n\n"
            f"Rows methods, columns experiments (`mean_p_k.csv`). Pure-noise reference: {null}.\n\n"
            + markdown_table(matrix) +
            "\n![mean p-value against K](mean_p_vs_k.png)\n\n(`mean_p_vs_k.csv`)\n\n"
            "## Fraction of pairs with p < 0.05\n\nz = the paper's test on the SNR, t = t-test on the mean; "
            "BH = after Benjamini-Hochberg (`significance.csv`).\n\n"
            + markdown_table(frac) + "\n![significant fractions](significance.png)\n")


def write_summary(experiments: list[str] | None = None, root: Path | None = None, out_dir: Path | None = None,
                  overwrite: bool = False, log=print) -> Path:
    """Write the summary of `experiments` (default: all with results) into out_dir; returns its report.md."""
    root = Path(root) if root is not None else repo_root()
    experiments = list(dict.fromkeys(experiments or discover(root)))
    if not experiments:
        raise TDAError(f"no experiment results under {root / 'results'}/: run `bash run_experiment.sh <experiment>` "
                       "first, or name them with --experiments")
    tables = load_tables(experiments, root)
    out = Outputs(Path(out_dir) if out_dir is not None else root / "results" / "summary", SUMMARY_MANIFEST, overwrite)
    fp = {e: [provenance.file_digest(p) for n in (*TABLES, ".pvalues_manifest.json", "correlation_pearson_mean.csv",
                                                  "correlation_spearman_mean.csv")
              if (p := results_dir(root, e) / n).exists()] for e in experiments}
    if out.all_finished({n: fp for n in FILES}):
        log(f"summary of {len(experiments)} experiments in {out.dir}/ is up to date (--overwrite to redo)")
        return out.dir / "report.md"
    sig = at_largest_k(tables)
    matrix = mean_p_matrix(sig)
    frame = long_mean_p(tables)
    out.write("mean_p_k.csv", matrix.to_csv(float_format="%.6g"), fp)
    out.write("significance.csv", sig.to_csv(index=False, float_format="%.6g"), fp)
    out.write("mean_p_vs_k.csv", frame.to_csv(index=False, float_format="%.6g"), fp)
    write_figure(out, "mean_p_vs_k", mean_p_figure(frame), fp)
    write_figure(out, "significance", significance_figure(sig), fp)
    ext = external_methods(experiments, root, sig)
    out.write("external_methods.csv", ext.to_csv(index=False, float_format="%.6g"), fp)
    out.write("report.md", summary_report(sig, matrix, experiments) + external_section(ext), fp)
    log(f"wrote {len(out.written)} files to {out.dir}/ ({len(out.kept)} unchanged)")
    return out.dir / "report.md"
