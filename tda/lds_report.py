"""The LDS results of an experiment: results/<experiment>/lds.csv, lds_per_test.csv and lds.png, the section of its
report.md, and the LDS table across experiments of `run_summary.py`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import plots, provenance
from .config import ExperimentConfig, TDAError
from .lds_eval import REPS, Attributions, external_method, lds_table, load_truth, our_methods
from .results.outputs import Outputs, markdown_table, write_figure

import matplotlib.pyplot as plt  # noqa: E402,I001 - after tda.plots chose the headless backend

LDS_MANIFEST = ".lds_manifest.json"
FILES = ("lds.csv", "lds_per_test.csv", "lds.png")
#: the score variants in words, in the tables' order
VARIANT_NAMES = {"checkpoint": "one checkpoint", "checkpoints": "K checkpoints", "posterior_mean": "posterior mean"}


def evaluate(cfg: ExperimentConfig, external: list[tuple[str, str, int]] = (), overwrite: bool = False,
             methods: list[str] | None = None, reps: int = REPS, log: Callable[[str], None] = print,
             need_scores: bool = True) -> Path | None:
    """Write the LDS of every method with scores (and of each external (path, name, sign)) into
    results/<experiment>/; returns lds.csv. Finished files are kept unless their inputs changed. Without any
    scores: a one-line error, or with `need_scores` False a note and None."""
    truth = load_truth(cfg)
    found: list[Attributions] = our_methods(cfg, truth, methods)
    found += [external_method(cfg, truth, p, n, s) for p, n, s in external]
    if not found:
        why = (f"no attribution scores of {cfg.name} on the seeds with LDS outcomes ({', '.join(map(str, truth.seeds))})"
               f": run the methods first (e.g. `python run_gd_and_gc.py --experiment {cfg.name} --seed_id all`)")
        if need_scores:
            raise TDAError(why)
        log(f"no LDS table yet: {why}, then `python run_lds.py --experiment {cfg.name} --evaluate`")
        return None
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise TDAError(f"two score sets are named alike ({', '.join(names)}): give --method_name another name")
    fp = {"truth": [provenance.file_digest(f) for f in truth.files], "reps": reps,
          "methods": {a.name: [a.sign, a.seeds, [provenance.file_digest(f) if isinstance(f, Path) else f
                                                 for f in a.files]] for a in found}}
    out = Outputs(cfg.results_dir, LDS_MANIFEST, overwrite)
    if out.all_finished({n: fp for n in FILES}):
        log(f"LDS of {cfg.name} in {cfg.results_dir}/lds.csv is up to date (--overwrite to redo)")
        return cfg.results_dir / "lds.csv"
    table, per_test = lds_table(truth, found, reps)
    out.write("lds.csv", table.to_csv(index=False, float_format="%.6g"), fp)
    out.write("lds_per_test.csv", per_test.to_csv(index=False, float_format="%.6g"), fp)
    write_figure(out, "lds", lds_figure(table, f"LDS on {cfg.name}: {len(truth.masks)} subsets of "
                                               f"{truth.settings.get('subset_size')} samples, {len(truth.seeds)} seeds"), fp)
    log(format_table(table))
    return cfg.results_dir / "lds.csv"


def _cell(r) -> str:
    return "nan" if pd.isna(r.lds) else f"{r.lds:+.3f} [{r.lds_lo:+.2f}, {r.lds_hi:+.2f}]"


def posterior_view(table: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """Methods x score variants, against the posterior target: 'LDS [90% interval]'."""
    t = table[(table["target"] == "posterior") & (table["outcome"] == outcome)]
    show = t.assign(cell=[_cell(r) for r in t.itertuples()], variant=t["scores"].map(VARIANT_NAMES))
    view = show.pivot(index="method", columns="variant", values="cell")
    view = view.loc[list(dict.fromkeys(t["method"])), [v for v in VARIANT_NAMES.values() if v in view.columns]]
    view.index.name = f"method ({outcome})"
    return view


def format_table(table: pd.DataFrame) -> str:
    """The LDS against the posterior target, as the script prints it."""
    return "\n".join(f"LDS ({o}, against the seeds' mean outcome; 90% interval over test samples):\n"
                     + posterior_view(table, o).to_string() for o in ("loss", "margin"))


def lds_figure(table: pd.DataFrame, title: str, row: str | None = None) -> Figure:
    """LDS against the posterior target: one panel per outcome (and per `row` value), bars per method and score
    variant, with their 90% intervals over test samples."""
    t = table[table["target"] == "posterior"]
    rows = list(dict.fromkeys(t[row])) if row else [None]
    outcomes = list(dict.fromkeys(t["outcome"]))
    fig, axes = plt.subplots(len(rows), len(outcomes), figsize=(5.5 * len(outcomes), 3.4 * len(rows)),
                             squeeze=False, sharey=True)
    variants = [v for v in VARIANT_NAMES if v in set(t["scores"])]
    for r, rv in enumerate(rows):
        for c, outcome in enumerate(outcomes):
            ax, sub = axes[r][c], t[(t["outcome"] == outcome) & ((t[row] == rv) if row else True)]
            methods = list(dict.fromkeys(sub["method"]))
            for v_i, v in enumerate(variants):
                g = sub[sub["scores"] == v].set_index("method").reindex(methods)
                x = np.arange(len(methods)) + (v_i - (len(variants) - 1) / 2) * 0.8 / len(variants)
                err = np.abs(np.stack([g["lds"] - g["lds_lo"], g["lds_hi"] - g["lds"]]))
                ax.bar(x, g["lds"], width=0.8 / len(variants), yerr=err, capsize=2, label=VARIANT_NAMES[v],
                       color=f"C{v_i}")
            ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
            ax.axhline(0, color="black", lw=0.8)
            ax.set_title(f"{rv} | {outcome}" if row else outcome)
            ax.set_ylabel("LDS (Spearman)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def report_section(cfg: ExperimentConfig) -> str:
    """The LDS section of results/<experiment>/report.md; empty without results/<experiment>/lds.csv."""
    path = cfg.results_dir / "lds.csv"
    if not path.exists():
        return ""
    table = pd.read_csv(path)
    if table.empty:
        return ""
    r = table.iloc[0]
    return (f"\n## Linear datamodeling score (LDS)\n\nHow well each method's summed attributions rank the outcomes of "
            f"retraining on {int(r.n_subsets)} random half-size subsets of the training set (Spearman over subsets, "
            "per test sample, averaged; 1 = perfect, 0 = no better than chance; [90% bootstrap interval over test "
            "samples]). Scores of one checkpoint (the last) or of each seed's last K averaged, or their posterior "
            "mean, each against the outcome averaged over the seeds' retrainings (`lds.csv` also holds the LDS "
            "against each seed's own retrainings; `docs/study.md` defines every variant). Reproduce: "
            f"`python run_lds.py --experiment {cfg.name} --seed_id all`.\n\n"
            + "".join(markdown_table(posterior_view(table, o)) + "\n" for o in ("loss", "margin"))
            + "![LDS](lds.png)\n")


# ---------------------------------------------------------------- across experiments (run_summary.py)
def lds_inputs(root: Path, experiment: str) -> list[str]:
    """Digest of an experiment's lds.csv (empty when it has none): part of the summary's fingerprint."""
    path = Path(root) / "results" / experiment / "lds.csv"
    return [provenance.file_digest(path)] if path.exists() else []


def summary_table(experiments: list[str], root: Path) -> pd.DataFrame:
    """Every experiment's LDS rows against the posterior target, with the experiment; empty when none has LDS."""
    frames = [pd.read_csv(p).assign(experiment=e) for e in experiments
              if (p := Path(root) / "results" / e / "lds.csv").exists()]
    if not frames:
        return pd.DataFrame()
    t = pd.concat(frames, ignore_index=True)
    return t[t["target"] == "posterior"][["experiment", *[c for c in t.columns if c != "experiment"]]]


def summary_section(table: pd.DataFrame) -> str:
    """The summary report's LDS section: posterior-mean scores, loss outcome, methods x experiments."""
    if table.empty:
        return ""
    t = table[(table["scores"] == "posterior_mean") & (table["outcome"] == "loss")]
    view = t.pivot(index="method", columns="experiment", values="lds").loc[list(dict.fromkeys(t["method"]))]
    return ("\n## Linear datamodeling score\n\nLDS of each method's posterior mean against the loss after retraining "
            "on random subsets, averaged over the seeds' retrainings (`lds.csv`: every variant and outcome, with "
            "90% intervals; per experiment `results/<experiment>/lds.csv`).\n\n" + markdown_table(view, "{:+.3f}"))
