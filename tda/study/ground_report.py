"""The study report's LDS and advice parts: their figures and sections 7 and 8 of results/study/report.md."""
from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .. import plots  # noqa: F401 - the headless backend before pyplot
from ..lds.report import posterior_view
from ..results.outputs import markdown_table
from .advice import GROUPS, TESTS
from .ground_truth import TRUTHS, headline
from .plan import StudyPlan

import matplotlib.pyplot as plt  # noqa: E402,I001

#: the advice analysis's statistic per truth, in words
STATISTIC = {TRUTHS[0]: "sign-aligned Spearman r of mu with LOO (scratch) mu",
             TRUTHS[1]: "sign-aligned Spearman r of mu with the subsets' per-pair effect",
             TRUTHS[2]: "mean per-pair contribution to the LDS (x N)"}


def setting(t: pd.DataFrame) -> pd.Series:
    return t["task"] + " " + t["n"].astype(str) + "pc"


def advice_figure(advice: pd.DataFrame) -> Figure:
    """Per setting and test (rows) and truth (columns): each method's statistic on significant, non-significant and
    top-|mu| pairs, with 95% intervals."""
    a = advice[advice["group"].isin(GROUPS)].assign(setting=setting(advice))
    rows = [(s, t) for s in dict.fromkeys(a["setting"]) for t in TESTS if ((a["setting"] == s) & (a["test"] == t)).any()]
    truths = [t for t in TRUTHS if t in set(a["truth"])]
    fig, axes = plt.subplots(len(rows), len(truths), figsize=(5.2 * len(truths), 2.9 * len(rows)), squeeze=False)
    for r, (s, test) in enumerate(rows):
        for c, truth in enumerate(truths):
            ax, g = axes[r][c], a[(a["setting"] == s) & (a["test"] == test) & (a["truth"] == truth)]
            methods = list(dict.fromkeys(g["method"]))
            for k, group in enumerate(GROUPS):
                h = g[g["group"] == group].set_index("method").reindex(methods)
                x = np.arange(len(methods)) + (k - 1) * 0.22
                err = np.abs(np.stack([h["value"] - h["lo"], h["hi"] - h["value"]]))
                ax.errorbar(x, h["value"], yerr=np.nan_to_num(err), fmt="o", capsize=2, color=f"C{k}", label=group)
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xticks(np.arange(len(methods)), methods, rotation=25, ha="right", fontsize=8)
            ax.set_title(f"{s} | {TESTS[test]}\n{STATISTIC[truth]}", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("The paper's advice: are significant pairs closer to the ground truth? (K = 5, 95% intervals)")
    fig.tight_layout()
    return fig


def trend_figure(trend: pd.DataFrame) -> Figure:
    """The share of significant pairs against K and against the number of seeds: one row per test, one line per
    method, one line style per setting."""
    sns.set_theme(style="whitegrid")
    t = trend.assign(setting=setting(trend))
    fig, axes = plt.subplots(len(TESTS), 2, figsize=(11, 3.3 * len(TESTS)), squeeze=False)
    for r, test in enumerate(TESTS):
        for c, (against, x) in enumerate((("K", "K"), ("seeds", "n_seeds"))):
            g = t[(t["against"] == against) & (t["test"] == test)]
            sns.lineplot(g, x=x, y="share", hue="method", style="setting", marker="o", ax=axes[r][c],
                         legend=(r == 0 and c == 1))
            axes[r][c].set_title(f"{TESTS[test]}: against {'K (seeds all)' if against == 'K' else 'seeds (K all)'}")
            axes[r][c].set_ylabel("share of significant pairs")
    if axes[0][1].get_legend() is not None:
        sns.move_legend(axes[0][1], "upper left", bbox_to_anchor=(1, 1), fontsize=7)
    fig.tight_layout()
    return fig


def _ci(v: float, lo: float, hi: float, fmt: str = "{:+.3f}") -> str:
    return "nan" if pd.isna(v) else f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def lds_section(plan: StudyPlan, table: pd.DataFrame, gain: pd.DataFrame) -> str:
    """Section 7: every method's LDS, and whether the posterior mean beats one checkpoint."""
    if table.empty:
        return ""
    parts = [f"\n## 7. LDS: the field's ground truth beside LOO\n\nEach seed is retrained on {plan.lds_subsets} random "
             "half-size subsets of its training set (from its own initialisation, on its own batches, as one ensemble); "
             "a method's LDS is the Spearman correlation over the subsets between its summed attributions and the "
             "test loss (or margin) after retraining, per test sample, averaged ([90% interval over test samples]). "
             "Rows: the method; columns: its scores at one checkpoint (the last), averaged over each seed's last K, "
             "or their posterior mean over seeds; the outcome is the seeds' mean (`lds.csv` holds every variant, "
             "both outcomes and the seed-by-seed targets).\n\n"]
    for (task, n), g in table.groupby(["task", "n"], sort=False):
        parts.append(f"**{task} {n}pc** (loss):\n\n" + markdown_table(posterior_view(g, "loss")) + "\n")
    if not gain.empty:
        g = gain[(gain["outcome"] == "loss") & (gain["versus"] == "checkpoint")]
        up, down = int((g["gain_lo"] > 0).sum()), int((g["gain_hi"] < 0).sum())
        best = table[(table["target"] == "posterior") & (table["outcome"] == "loss") & (table["scores"] == "posterior_mean")]
        best = best.loc[best.groupby(["task", "n"], sort=False)["lds"].idxmax()]
        parts.append("**Does averaging over the posterior help?** The posterior mean against one checkpoint, per test "
                     f"sample (loss): higher LDS with a 90% interval above 0 for {up} of {len(g)} setting x method, "
                     f"lower for {down}, no resolved difference for {len(g) - up - down} (`lds_gain.csv`). Highest LDS "
                     "of the posterior mean: " + "; ".join(f"{r.task} {r.n}pc {r.method} {r.lds:+.3f}"
                                                           for r in best.itertuples()) + ".\n\n")
    e = plan.experiment(plan.tasks[0], plan.lds_ns[0])
    parts.append(f"![LDS](lds.png)\n\n(`lds.csv`, `lds_per_test.csv`. Reproduce one setting: `TDA_ROOT={plan.root} "
                 f"python run_lds.py --experiment {e} --seed_id all --subsets {plan.lds_subsets}`.)\n")
    return "".join(parts)


def advice_section(plan: StudyPlan, advice: pd.DataFrame, trend: pd.DataFrame, command: str) -> str:
    """Section 8: the advice as a hypothesis, its answer as the data give it, and the share of significant pairs
    against K and seeds."""
    if advice.empty:
        return ""
    counts = headline(advice)
    d = advice[advice["group"] == "significant - not significant"]
    answer = "; ".join(f"against {t}: " + ", ".join(f"{v} {counts[t].get(v, 0)}" for v in
                                                    ("supports", "no difference", "contradicts"))
                       + (f" (undetermined {counts[t]['undetermined']}: a group too small)"
                          if counts[t].get("undetermined") else "") for t in counts)
    m = advice[advice["group"] == "significant - top |mu|"]
    beyond = int((m["verdict"] == "supports").sum())
    table = d.assign(row=setting(d) + " / " + d["method"] + " / " + d["test"].map(lambda t: t.replace("_", " ")),
                     cell=[_ci(r.value, r.lo, r.hi, "{:+.2f}") + f" {r.verdict}" for r in d.itertuples()])
    view = table.pivot(index="row", columns="truth", values="cell")
    view = view[[t for t in TRUTHS if t in view.columns]].loc[list(dict.fromkeys(table["row"]))]
    view.index.name = "setting / method / test"
    parts = ["\n## 8. The paper's advice as a hypothesis: are significant pairs closer to the ground truth?\n\n"
             "Per method, the pairs are split by significance over the seeds at K = 5 (t-test with Benjamini-Hochberg "
             "at 0.05, `t bh`; the paper's z-test at p < 0.05, `z`), and each group is compared with three ground "
             "truths: LOO (`scratch`)'s mu, the LDS subsets' own per-pair effect (the slope of the outcome on "
             "\"j is in the subset\"), and each pair's contribution to the LDS (they add up to the Pearson form of "
             "LDS per test sample); docs/study.md defines each. The cells give significant minus not significant "
             "with a 95% interval from resampling test and training samples, and the verdict: `supports` (the "
             "significant pairs are closer to the truth), `contradicts`, or `no difference`.\n\n"
             f"**The answer, as the data give it** (counts over setting x method x test): {answer}. Significant "
             f"pairs beat the same number of pairs of largest |mu| (what a large attribution alone gives) in {beyond} "
             f"of {len(m)} cases.\n\n", markdown_table(view),
             "\n![advice](advice.png)\n\n(`advice.csv` also holds each group's value, the top-|mu| control and the "
             f"share of significant pairs. Reproduce: `{command}`.)\n"]
    if not trend.empty:
        t = trend[trend["test"] == "t_bh"]
        k = t[t["against"] == "K"].pivot_table(index=["task", "n", "method"], columns="K", values="share", sort=False)
        s = t[t["against"] == "seeds"].pivot_table(index=["task", "n", "method"], columns="n_seeds", values="share",
                                                   sort=False)
        both = pd.concat({"K": k, "seeds": s}, axis=1)
        both.columns = [f"K={c}" if a == "K" else f"{c} seeds" for a, c in both.columns]
        both.index = [f"{a} {b}pc / {c}" for a, b, c in both.index]
        both.index.name = "share significant (t bh)"
        parts.append("\n**The share of significant pairs against K and the number of seeds** (t-test with BH; with "
                     "fewer seeds, the mean over random draws of them; `significance_trend.csv` has the z-test "
                     "too):\n\n" + markdown_table(both, "{:.3f}") + "\n![significance trend](significance_trend.png)\n")
    return "".join(parts)
