"""Seaborn figures: p-value histograms, method-correlation heatmaps and train-test image pairs.

Figures are rendered to bytes with the timestamp/version metadata removed, so the same numbers
always give byte-identical PNG and PDF files (a rerun reproduces an uninterrupted run).
"""
from __future__ import annotations

import io as _io
import warnings

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Keys matplotlib would otherwise fill with its version or the current time.
_NO_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """Render a figure to PNG or PDF bytes deterministically (no software or date metadata)."""
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight", metadata=_NO_METADATA[fmt])
    return buf.getvalue()


def close(fig: Figure) -> None:
    """Free a figure's memory."""
    plt.close(fig)


def pvalue_histogram(counts: dict[str, dict[int, np.ndarray]], label: str, n_seeds: int) -> Figure:
    """Histogram of one method's per-pair p-values, one panel per test, one line per K checkpoints.

    `counts` maps a test name ('z-test (paper)', 't-test') to {K: counts of the p-values in equal bins over
    [0, 1]}, so that no figure needs every pair's p-value. Under the null (attribution pure noise) p-values
    are uniform: density 1, the dashed line.
    """
    sns.set_theme(style="whitegrid")
    tests = list(counts)
    n_bins = len(next(iter(counts[tests[0]].values())))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, axes = plt.subplots(1, len(tests), figsize=(5.2 * len(tests), 3.8), squeeze=False, sharey=True)
    for ax, test in zip(axes[0], tests):
        frame = pd.concat([pd.DataFrame({"p-value": centres, "count": np.asarray(c, dtype=np.float64), "K": f"K={k}"})
                           for k, c in sorted(counts[test].items())], ignore_index=True)
        sns.histplot(frame, x="p-value", weights="count", hue="K", bins=edges.tolist(), stat="density",
                     common_norm=False, element="step", fill=False, palette="viridis", ax=ax)
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{label}: {test}")
    fig.suptitle(f"{label}: per-pair p-values over {n_seeds} seeds, K = last checkpoints averaged")
    fig.tight_layout()
    return fig


def image_pairs(rows: list[list[tuple[np.ndarray, np.ndarray, str, str, str]]], title: str) -> Figure:
    """Train-test image pairs side by side, one row per method: each pair is (train image, test image, train
    caption, test caption, pair caption). Images are [C, H, W] model inputs, each scaled to its own range for
    display (grey for one channel)."""
    sns.set_theme(style="white")
    per_row = max(len(r) for r in rows)
    ratios = sum(([1, 1, 0.35] for _ in range(per_row)), [])[:-1]  # a gap between pairs, none within one
    fig, axes = plt.subplots(len(rows), len(ratios), figsize=(1.9 * sum(ratios), 2.5 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": ratios, "wspace": 0.05})
    for ax in axes.ravel():
        ax.axis("off")
    for r, pairs in enumerate(rows):
        for c, (a, b, cap_a, cap_b, cap) in enumerate(pairs):
            for ax, img, cap_img in ((axes[r, 3 * c], a, cap_a), (axes[r, 3 * c + 1], b, cap_b)):
                x = np.asarray(img, dtype=np.float64)
                x = (x - x.min()) / (np.ptp(x) or 1.0)
                ax.imshow(x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1),
                          cmap="gray" if x.shape[0] == 1 else None, vmin=0, vmax=1)
                ax.set_title(cap_img, fontsize=8)
            axes[r, 3 * c].text(1.0, -0.08, cap, transform=axes[r, 3 * c].transAxes, ha="center", va="top", fontsize=8)
    fig.suptitle(title)
    return fig


def correlation_heatmaps(mats: dict[str, pd.DataFrame], title: str) -> Figure:
    """Annotated 5x5 heatmaps of correlations between methods, one panel per statistic (mean, std, SNR)."""
    sns.set_theme(style="white")
    fig, axes = plt.subplots(1, len(mats), figsize=(4.6 * len(mats), 4.2), squeeze=False)
    for ax, (name, mat) in zip(axes[0], mats.items()):
        with warnings.catch_warnings():  # seaborn 0.13 calls a colormap method matplotlib is deprecating
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(mat, vmin=-1, vmax=1, center=0, cmap="vlag", annot=True, fmt=".2f", square=True,
                        cbar=False, linewidths=0.5, ax=ax, annot_kws={"size": 9})
        ax.set_title(name)
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
