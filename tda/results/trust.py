"""The pairs you can trust: per method, the train-test pairs still significant after Benjamini-Hochberg under the
t-test (q < 0.05) at the largest K, with their images' dataset indices and labels, and the strongest few shown as
images side by side.

`trusted_pairs.csv` holds up to TOP of them per method, strongest first (largest |SNR|, which is the smallest
t-test p-value and q-value); every pair with its q-value is in `pairs_<method>.parquet`. Labels and images come
from the experiment's subset tensors; scores without an experiment get indices only and no figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io, plots
from ..config import ExperimentConfig, TDAError
from .outputs import Fingerprint, Outputs, markdown_table, write_figure
from .pairs import ALPHA, TOP
from .perpair import MethodResult

TRUST_CSV = "trusted_pairs.csv"
TRUST_FIG = "trusted_pairs.png"
IN_REPORT = 5  # rows per method in report.md
IN_FIGURE = 3  # image pairs per method in the figure
COLUMNS = ["method", "K", "train_index", "train_label", "test_index", "test_label", "mu", "sigma", "snr", "p_t", "q_t"]


@dataclass
class Subsets:
    """An experiment's subset images and labels, looked up by dataset index."""

    train: dict
    test: dict

    @classmethod
    def of(cls, cfg: ExperimentConfig | None) -> "Subsets | None":
        """The experiment's subsets, or None when there is no experiment or its subset files are missing."""
        if cfg is None:
            return None
        try:
            train, test = io.load_subsets(cfg)
        except TDAError:
            return None
        return cls(train, test)

    def _find(self, kind: str, index: int) -> int | None:
        d = self.train if kind == "train" else self.test
        pos = np.flatnonzero(np.asarray(d["indices"]) == index)
        return int(pos[0]) if pos.size else None

    def label(self, kind: str, index: int) -> int | None:
        """The class label of a training or test sample, by dataset index (None if it is not in the subset)."""
        pos = self._find(kind, index)
        return None if pos is None else int((self.train if kind == "train" else self.test)["labels"][pos])

    def image(self, kind: str, index: int) -> np.ndarray | None:
        """The model input [C, H, W] of a sample, by dataset index (None if it is not in the subset)."""
        pos = self._find(kind, index)
        return None if pos is None else np.asarray((self.train if kind == "train" else self.test)["images"][pos])


def trusted_frame(results: list[MethodResult], subsets: Subsets | None) -> pd.DataFrame:
    """The strongest pairs significant after BH (t-test) at each method's largest K, with indices and labels."""
    rows = []
    for r in results:
        s, ms = r.strongest, r.ms
        for i in range(s["row"].size):
            train, test = ms.train_indices[int(s["row"][i])], ms.test_indices[int(s["col"][i])]
            rows.append({"method": ms.label, "K": len(ms.ckpt_epochs), "train_index": train,
                         "train_label": subsets.label("train", train) if subsets else None, "test_index": test,
                         "test_label": subsets.label("test", test) if subsets else None,
                         **{c: float(s[c][i]) for c in ("mu", "sigma", "snr", "p_t", "q_t")}})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("train_label", "test_label"):
        frame[c] = frame[c].astype("Int64")
    return frame


def _caption(label: object) -> str:
    return "" if pd.isna(label) else f", label {int(label)}"


def write_trust(out: Outputs, frame: pd.DataFrame, subsets: Subsets | None, fp: Fingerprint) -> None:
    """trusted_pairs.csv, and beside it the figure of the strongest pairs when their images are known.

    The figure is written first: the CSV is what marks this output finished, so a run killed between the two
    redraws the figure when it is run again."""
    rows = []
    if subsets is not None:
        for _, group in frame.groupby("method", sort=False):
            row = []
            for r in group.head(IN_FIGURE).itertuples():
                a, b = subsets.image("train", int(r.train_index)), subsets.image("test", int(r.test_index))
                if a is not None and b is not None:
                    row.append((a, b, f"train {r.train_index}{_caption(r.train_label)}",
                                f"test {r.test_index}{_caption(r.test_label)}",
                                f"{r.method}: mu {r.mu:+.3g}, SNR {r.snr:+.3g}, q {r.q_t:.2g}"))
            if row:
                rows.append(row)
    if rows:
        fig = plots.image_pairs(rows, f"Strongest train-test pairs significant after BH (t-test, q < {ALPHA})")
        write_figure(out, TRUST_FIG.removesuffix(".png"), fig, fp)
    else:
        out.remove(TRUST_FIG)
    out.write(TRUST_CSV, frame.to_csv(index=False, float_format="%.7g"), fp)


def trust_section(directory: Path, significance: pd.DataFrame) -> str:
    """The report's "Pairs you can trust" section from trusted_pairs.csv and significance.csv ("" if absent)."""
    path = Path(directory) / TRUST_CSV
    if not path.exists():
        return ""
    frame = pd.read_csv(path)
    last = significance[significance["K"] == significance.groupby("method")["K"].transform("max")]
    counts = pd.DataFrame({"method": last["method"], "K": last["K"],
                           "significant pairs": (last["t_frac_bh_lt_0.05"] * last["n_pairs"]).round().astype(int),
                           "of": last["n_pairs"]}).set_index("method")
    text = ("\n## Pairs you can trust\n\nTrain-test pairs whose t-test p-value is still below "
            f"{ALPHA} after Benjamini-Hochberg over all of the method's pairs (q < {ALPHA}: at most 5% of them false "
            "discoveries), at each method's largest K:\n\n" + markdown_table(counts))
    if frame.empty:
        return text + "\nNo pair passes: no attribution here stands out from the noise of training.\n"
    shown = frame.groupby("method", sort=False).head(IN_REPORT).set_index("method")
    for c in ("train_label", "test_label"):
        shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else str(int(v)))
    if not (shown["train_label"] + shown["test_label"]).any():  # scores without an experiment: no labels known
        shown = shown.drop(columns=["train_label", "test_label"])
    text += (f"\nThe strongest of them (largest |SNR|, i.e. smallest q), up to {IN_REPORT} per method, identified by "
             f"their dataset indices; `{TRUST_CSV}` holds up to {TOP} per "
             "method, and `pairs_<method>.parquet` every pair (rows with `q_t < 0.05` at that K).\n\n"
             + markdown_table(shown, fmt="{:.3g}"))
    if (Path(directory) / TRUST_FIG).exists():
        text += f"\n![strongest trusted pairs]({TRUST_FIG})\n"
    return text
