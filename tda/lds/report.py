"""The LDS results in reports: the section of results/<experiment>/report.md, the table the script prints, and the
LDS table across experiments of `run_summary.py` (from each experiment's results/<experiment>/lds.csv)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import provenance
from ..config import ExperimentConfig
from ..results.outputs import markdown_table

#: the score variants in words, in the tables' order
VARIANT_NAMES = {"checkpoint": "one checkpoint", "checkpoints": "K checkpoints", "posterior_mean": "posterior mean"}


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
