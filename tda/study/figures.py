"""Seaborn figures of the study, one per table (each saved next to its CSV)."""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from .. import plots  # noqa: F401 - sets the headless backend before seaborn loads pyplot
from .decompose import COMPONENTS

import seaborn as sns  # noqa: E402,I001

SIG_METRICS = {"z_mean_p": "mean p (z-test)", "z_frac_p_lt_0.05": "frac. p < 0.05 (z)",
               "t_frac_bh_lt_0.05": "frac. BH q < 0.05 (t)"}


def _setting(frame: pd.DataFrame) -> pd.Series:
    return frame["task"] + " " + frame["n"].astype(str) + "pc"


def _rotate(g: sns.FacetGrid) -> None:
    """Method names under every panel, slanted."""
    for ax in g.axes.flat:
        ax.tick_params(axis="x", labelbottom=True, rotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def decomposition_figure(table: pd.DataFrame) -> Figure:
    """Share of tau's across-seed variance due to initialisation, batch order and their interaction, per method."""
    sns.set_theme(style="whitegrid")
    long = table.assign(setting=_setting(table)).melt(
        id_vars=["setting", "method"], value_vars=[f"share_{c}" for c in COMPONENTS], var_name="source",
        value_name="share of V_both")
    long["source"] = long["source"].str.removeprefix("share_").map(COMPONENTS)
    g = sns.catplot(long, x="method", y="share of V_both", hue="source", col="setting", kind="bar", height=3.4,
                    aspect=1.4, palette="Set2")
    _rotate(g)
    for ax in g.axes.flat:
        ax.axhline(0, color="black", lw=0.8)
    g.figure.suptitle("What the seed noise of tau is made of (K = 5 checkpoints averaged)", y=1.04)
    return g.figure


def significance_figure(table: pd.DataFrame, x: str, hue: str | None, title: str) -> Figure:
    """Mean p-value and significant fractions at K = 5: one row of panels per metric, one column per setting."""
    sns.set_theme(style="whitegrid")
    long = table.assign(setting=_setting(table)).melt(
        id_vars=["setting", x] + ([hue] if hue else []), value_vars=list(SIG_METRICS), var_name="metric",
        value_name="value")
    long["metric"] = long["metric"].map(SIG_METRICS)
    g = sns.catplot(long, x=x, y="value", hue=hue, row="metric", col="setting", kind="bar", height=2.6, aspect=1.6,
                    sharey="row", palette="Set2" if hue else None, color=None if hue else "C0")
    g.set_titles("{row_name} | {col_name}")
    g.set_axis_labels("", "")
    _rotate(g)
    g.figure.suptitle(title, y=1.02)
    return g.figure


def agreement_figure(table: pd.DataFrame) -> Figure:
    """Sign-aligned Pearson correlation of mu of each method with each LOO protocol (1: perfect agreement)."""
    sns.set_theme(style="whitegrid")
    t = table.assign(setting=_setting(table))
    g = sns.catplot(t, x="method", y="aligned_pearson_mu", hue="reference", col="setting", kind="bar", height=3.4,
                    aspect=1.5, palette="Set1")
    g.set_axis_labels("", "sign-aligned Pearson r of mu")
    _rotate(g)
    for ax in g.axes.flat:
        ax.axhline(0, color="black", lw=0.8)
    g.figure.suptitle("Agreement of each method with each LOO ground truth (K = 5)", y=1.04)
    return g.figure
