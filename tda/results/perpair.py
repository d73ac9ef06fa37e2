"""One method's per-pair outputs, written as they are computed: the per-K p-value CSVs, the tidy per-pair table
and the histogram, plus the tallies the aggregate tables need.

Per K, a first pass over the score blocks writes the K's CSV rows and folds the tallies; its t-test p-values
are kept (they are all needed for Benjamini-Hochberg: 8 bytes a pair, in memory or, when large, in an
anonymous temp file). Then, for the table, each K's q-values are computed and a second pass writes the
K's rows. Memory is a few blocks plus one [N, M] float64 array (two at K = C) and BH's temporaries (two
more), whatever N and M: about 0.8 GB for 20,000 x 1,000 pairs.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .. import plots, stats
from .inventory import MethodScores
from .outputs import Fingerprint, Outputs, write_figure
from .pairfile import PairsWriter, csv_header, csv_rows, pairs_name, pvalue_csv_name, tidy
from .pairs import KTally, SharedShare, Strongest, pair_blocks

TEST_NAMES = {"z": "z-test on SNR (paper)", "t": "t-test on the mean"}
STASH_IN_MEMORY = 256 << 20  # bytes of kept p-values above which they go to an anonymous temp file


def hist_name(method: str) -> str:
    """File of one method's p-value histograms."""
    return f"pvalue_hist_{method}.png"


def hist_counts(tallies: dict[int, KTally]) -> dict[str, dict[int, np.ndarray]]:
    """{test name: {K: p-value counts}}, what plots.pvalue_histogram draws."""
    return {TEST_NAMES[t]: {k: tl.hist[t] for k, tl in tallies.items()} for t in ("z", "t")}


class Stash:
    """Each K's [N, M] float64 t-test p-values, kept until BH needs them: in memory, or in a temp file without a
    name (gone with the process, even when it is killed) when they are large."""

    def __init__(self, n_ckpts: int, shape: tuple[int, int]):
        self.shape = shape
        nbytes = n_ckpts * shape[0] * shape[1] * 8
        self.file = tempfile.TemporaryFile() if nbytes > STASH_IN_MEMORY else None
        self.kept: dict[int, np.ndarray] = {}
        self.offsets: dict[int, int] = {}

    def put(self, k: int, p: np.ndarray) -> None:
        """Keep K's p-values."""
        if self.file is None:
            self.kept[k] = p
            return
        self.file.seek(0, 2)
        self.offsets[k] = self.file.tell()
        p.tofile(self.file)

    def get(self, k: int) -> np.ndarray:
        """A copy of K's p-values."""
        return self.rows(k, 0, self.shape[0]).copy()

    def rows(self, k: int, a: int, b: int) -> np.ndarray:
        """K's p-values of training rows a:b (a view of what is kept in memory, or read from the file)."""
        if self.file is None:
            return self.kept[k][a:b]
        self.file.seek(self.offsets[k] + a * self.shape[1] * 8)
        return np.fromfile(self.file, np.float64, (b - a) * self.shape[1]).reshape(b - a, self.shape[1])

    def close(self) -> None:
        """Free the kept p-values."""
        self.kept.clear()
        if self.file is not None:
            self.file.close()


@dataclass
class MethodResult:
    """What the aggregate tables and the report need of one method."""

    ms: MethodScores
    tallies: dict[int, KTally]
    strongest: dict[str, np.ndarray]
    shared_share: float

    @property
    def info(self) -> dict:
        """The method's entry in the p-value manifest (read by report.md)."""
        ms = self.ms
        return {"seeds": ms.seeds, "n_train": len(ms.train_indices), "n_test": len(ms.test_indices),
                "ckpt_epochs": ms.ckpt_epochs, "settings": ms.settings, "shared_share": self.shared_share}


def _first_pass(ms: MethodScores, k: int, top: Strongest, share: SharedShare,
                write: Callable[[str], None] | None) -> tuple[KTally, np.ndarray]:
    """K's tally and t-test p-values [N, M]; the CSV rows of K's z-test p-values go to `write` when given."""
    src, train = ms.source, np.asarray(ms.train_indices)
    n_seeds, n_ckpts, n, m = src.shape
    tally, p_t = KTally(k, n_seeds), np.empty((n, m))
    for blk in tqdm(pair_blocks(src, k), desc=f"{ms.label} K={k}", leave=False, disable=n * m < 1 << 20):
        tally.add(blk)
        p_t[blk.start:blk.stop] = blk.p_t
        if k == n_ckpts:
            top.add(blk)
            share.add(blk)
        if write is not None:
            write(csv_rows(train[blk.start:blk.stop], blk.p_z))
    return tally, p_t


def write_method(out: Outputs, ms: MethodScores, fp: Fingerprint) -> MethodResult:
    """Write one method's per-K CSVs, histogram and per-pair table (each unless finished); return its tallies."""
    src = ms.source
    n_seeds, n_ckpts, n, m = src.shape
    train, test = np.asarray(ms.train_indices), np.asarray(ms.test_indices)
    top, share, stash, tallies = Strongest(), SharedShare(n_seeds, m), Stash(n_ckpts, (n, m)), {}
    try:
        for k in range(1, n_ckpts + 1):
            name = pvalue_csv_name(ms.method, k)
            if out.finished(name, fp):
                tallies[k], p_t = _first_pass(ms, k, top, share, None)
            else:
                got = []

                def csv(tmp: str, k: int = k) -> None:
                    with open(tmp, "w") as fh:
                        fh.write(csv_header(test))
                        got.append(_first_pass(ms, k, top, share, fh.write))
                out.write(name, csv, fp)
                tallies[k], p_t = got[0]
            stash.put(k, p_t)
            del p_t
        if not out.finished(hist_name(ms.method), fp):
            write_figure(out, hist_name(ms.method).removesuffix(".png"),
                         plots.pvalue_histogram(hist_counts(tallies), ms.label, n_seeds), fp)
        q_last: list[np.ndarray] = []

        def table(tmp: str) -> None:
            writer = PairsWriter(tmp)
            try:
                for k in range(1, n_ckpts + 1):
                    q_t = stats.benjamini_hochberg(stash.get(k), overwrite=True)
                    for blk in tqdm(pair_blocks(src, k, t_test=False), desc=f"{ms.label} table K={k}", leave=False,
                                    disable=n * m < 1 << 20):
                        rows = slice(blk.start, blk.stop)
                        writer.write(tidy(k, train[rows], test, mu=blk.st.mu, sigma=blk.st.sigma, snr=blk.st.snr,
                                          p_z=blk.p_z, p_t=stash.rows(k, blk.start, blk.stop), q_t=q_t[rows]))
                    if k == n_ckpts:
                        q_last.append(q_t)
                    del q_t
            finally:
                writer.close()
        if out.finished(pairs_name(ms.method), fp):
            q_last.append(stats.benjamini_hochberg(stash.get(n_ckpts), overwrite=True))
        else:
            out.write(pairs_name(ms.method), table, fp)
        return MethodResult(ms, tallies, top.significant(q_last[0]), share.value())
    finally:
        stash.close()
