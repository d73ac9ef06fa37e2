"""Per-pair statistics block by block: mu, sigma, SNR and both tests' p-values of every train-test pair at one K,
and what the tables need of them (sums, counts, histogram counts, the tails BH needs, the strongest pairs),
gathered without holding every pair's scores.

One implementation for the scripts and the in-memory API: `k_blocks` reads a `ScoreSource` block of
training rows by block, averages each seed's last K checkpoints in float64 (summed from the last one back,
so every K and every path does the same additions) and yields the statistics of `tda.stats`; `KTally`
and `Strongest` fold blocks into the p-value step's numbers; `analyse` keeps every pair in memory (the
API's object, the study).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .. import stats
from .sources import ScoreSource

ALPHA = 0.05
BLOCK_BYTES = 32 << 20  # float64 bytes of one block [S, C, rows, M]: small next to the 160 MB per K that BH needs
EDGES = np.linspace(0.0, 1.0, 21)  # p-value histogram bins
TOP = 20  # strongest significant pairs kept per method


def rows_per_block(n_seeds: int, n_ckpts: int, n_rows: int, n_cols: int) -> int:
    """Training rows per block: a function of the shape only, so every path folds the same blocks."""
    return max(1, min(n_rows, BLOCK_BYTES // (8 * n_seeds * n_ckpts * max(n_cols, 1))))


@dataclass
class Selection:
    """Which seeds, training rows and test columns of a source are read, in that order (None: all, as stored)."""

    seeds: list[int]
    rows: np.ndarray | None
    cols: np.ndarray | None
    n_rows: int
    n_cols: int

    @classmethod
    def everything(cls, shape: Sequence[int]) -> "Selection":
        """Every seed, row and column of a source of `shape`."""
        return cls(list(range(shape[0])), None, None, shape[2], shape[3])


@dataclass
class PairBlock:
    """The statistics of output rows start:stop at one K (arrays [rows, M]); per_seed [S, rows, M]."""

    start: int
    stop: int
    per_seed: np.ndarray
    st: stats.SeedStats
    p_z: np.ndarray
    p_t: np.ndarray | None


def k_blocks(src: ScoreSource, ks: Sequence[int], sel: Selection | None = None,
             t_test: bool = True) -> Iterator[dict[int, PairBlock]]:
    """Every pair's statistics at each K in `ks` (tau averaged over each seed's last K checkpoints), block by block
    of rows: the last max(ks) checkpoints are read once and summed from the last one back, in float64."""
    n_ckpts, kmax = src.shape[1], max(ks)
    sel = sel or Selection.everything(src.shape)
    step = rows_per_block(len(sel.seeds), n_ckpts, sel.n_rows, sel.n_cols)
    for a in range(0, sel.n_rows, step):
        b = min(a + step, sel.n_rows)
        x = src.read(sel.seeds, slice(n_ckpts - kmax, n_ckpts), slice(a, b) if sel.rows is None else sel.rows[a:b])
        if sel.cols is not None:
            x = x[..., sel.cols]
        total, out = x[:, -1].astype(np.float64), {}
        for k in range(1, kmax + 1):
            if k > 1:
                total += x[:, -k]  # the same additions in the same order whichever K are asked for
            if k in ks:
                per_seed = total / k
                st = stats.seed_statistics(per_seed)
                out[k] = PairBlock(a, b, per_seed, st, stats.z_pvalues(st.snr), stats.t_pvalues(st) if t_test else None)
        del x
        yield out


def pair_blocks(src: ScoreSource, k: int, sel: Selection | None = None, t_test: bool = True) -> Iterator[PairBlock]:
    """Every pair's statistics at one K, block by block of rows (the numbers `k_blocks` gives for that K)."""
    for blocks in k_blocks(src, [k], sel, t_test):
        yield blocks[k]


@dataclass
class KTally:
    """One method's numbers at one K, folded block by block: one row of significance.csv and the histograms."""

    k: int
    n_seeds: int
    n_pairs: int = 0
    n_zero_sigma: int = 0
    sums: dict = field(default_factory=lambda: {"z": 0.0, "t": 0.0})
    below: dict = field(default_factory=lambda: {"z": 0, "t": 0})
    tails: dict = field(default_factory=lambda: {"z": [], "t": []})  # every p < alpha, for the BH count
    hist: dict = field(default_factory=lambda: {"z": np.zeros(len(EDGES) - 1, np.int64),
                                                "t": np.zeros(len(EDGES) - 1, np.int64)})

    def add(self, blk: PairBlock) -> None:
        """Fold in one block."""
        self.n_pairs += blk.p_z.size
        self.n_zero_sigma += int((blk.st.sigma == 0).sum())
        for test, p in (("z", blk.p_z), ("t", blk.p_t)):
            self.sums[test] += float(p.sum())
            low = p[p < ALPHA]
            self.below[test] += low.size
            self.tails[test].append(low)
            self.hist[test] += np.histogram(p, bins=EDGES)[0]

    def mean_p(self, test: str = "z") -> float:
        """Mean p-value over all pairs (the paper's table uses the z-test's)."""
        return self.sums[test] / self.n_pairs

    def row(self, label: str) -> dict:
        """This K's row of significance.csv: fractions of pairs with p < 0.05, raw and after Benjamini-Hochberg."""
        out = {"method": label, "K": self.k, "n_seeds": self.n_seeds, "n_pairs": self.n_pairs,
               "n_zero_sigma": self.n_zero_sigma}
        for test in ("z", "t"):
            tail = np.concatenate(self.tails[test]) if self.tails[test] else np.empty(0)
            out[f"{test}_mean_p"] = self.mean_p(test)
            out[f"{test}_frac_p_lt_0.05"] = self.below[test] / self.n_pairs
            out[f"{test}_frac_bh_lt_0.05"] = stats.bh_count_below(tail, self.n_pairs, ALPHA) / self.n_pairs
        return out


class Strongest:
    """The TOP pairs with the largest |SNR| (equivalently the smallest t-test p-value and BH q-value) at one K."""

    COLUMNS = ("row", "col", "mu", "sigma", "snr", "p_z", "p_t")

    def __init__(self, top: int = TOP):
        self.top = top
        self.kept = {c: np.empty(0, np.int64 if c in ("row", "col") else np.float64) for c in self.COLUMNS}

    def add(self, blk: PairBlock) -> None:
        """Fold in one block: keep the TOP strongest of what was kept and this block."""
        strength = np.abs(blk.st.snr).ravel()
        cand = np.arange(strength.size)
        if strength.size > self.top:
            cand = np.argpartition(-strength, self.top)[: self.top]
        m = blk.st.snr.shape[1]
        new = {"row": blk.start + cand // m, "col": cand % m, "mu": blk.st.mu.ravel()[cand],
               "sigma": blk.st.sigma.ravel()[cand], "snr": blk.st.snr.ravel()[cand], "p_z": blk.p_z.ravel()[cand],
               "p_t": blk.p_t.ravel()[cand]}
        both = {c: np.concatenate([self.kept[c], new[c]]) for c in self.COLUMNS}
        keep = np.lexsort((both["col"], both["row"], -np.abs(both["snr"])))[: self.top]
        self.kept = {c: v[keep] for c, v in both.items()}

    def significant(self, q_t: np.ndarray) -> dict[str, np.ndarray]:
        """The kept pairs whose BH q-value (t-test, from the full [N, M] array `q_t`) is below alpha, with q."""
        q = q_t[self.kept["row"], self.kept["col"]]
        ok = q < ALPHA
        return {**{c: v[ok] for c, v in self.kept.items()}, "q_t": q[ok]}


class SharedShare:
    """stats.shared_variance_share folded block by block: per seed, the variance of tau over all pairs and of its
    per-test-sample mean over training samples."""

    def __init__(self, n_seeds: int, n_cols: int):
        self.total = [stats.Comoments() for _ in range(n_seeds)]
        self.col_sums = np.zeros((n_seeds, n_cols))
        self.n_rows = 0

    def add(self, blk: PairBlock) -> None:
        """Fold in one block's per-seed tau."""
        for s, x in enumerate(blk.per_seed):
            self.total[s].add(x, x)
        self.col_sums += blk.per_seed.sum(axis=1)
        self.n_rows += blk.per_seed.shape[1]

    def value(self) -> float:
        """The share, averaged over seeds."""
        shares = []
        for tot, cols in zip(self.total, self.col_sums):
            var = tot.cxx / tot.n
            shares.append((cols / self.n_rows).var() / var if var > 0 else 0.0)
        return float(np.mean(shares))


STATS = ("mu", "sigma", "snr", "p_z", "p_t", "q_t")


@dataclass
class Analysis:
    """One method at every K = 1..C, all pairs in memory: arrays [C, N, M] (index K - 1: tau averaged over each
    seed's last K checkpoints), each K's tally, and the strongest pairs and shared-variance share at K = C."""

    arrays: dict[str, np.ndarray]
    tallies: dict[int, KTally]
    strongest: dict[str, np.ndarray]
    shared_share: float


def analyse(src: ScoreSource) -> Analysis:
    """All pairs' statistics and BH q-values at K = 1..C, in memory (the blocks are those of the p-value step)."""
    n_seeds, n_ckpts, n, m = src.shape
    arrays = {name: np.empty((n_ckpts, n, m)) for name in STATS}
    tallies, top, share = {}, Strongest(), SharedShare(n_seeds, m)
    for k in range(1, n_ckpts + 1):
        tallies[k] = KTally(k, n_seeds)
    for blocks in k_blocks(src, range(1, n_ckpts + 1)):
        for k, blk in blocks.items():
            rows = slice(blk.start, blk.stop)
            for name, v in (("mu", blk.st.mu), ("sigma", blk.st.sigma), ("snr", blk.st.snr), ("p_z", blk.p_z),
                            ("p_t", blk.p_t)):
                arrays[name][k - 1, rows] = v
            tallies[k].add(blk)
        top.add(blocks[n_ckpts])
        share.add(blocks[n_ckpts])
    for k in tallies:
        arrays["q_t"][k - 1] = stats.benjamini_hochberg(arrays["p_t"][k - 1])
    return Analysis(arrays, tallies, top.significant(arrays["q_t"][-1]), share.value())
