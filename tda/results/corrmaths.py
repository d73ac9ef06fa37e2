"""Pearson and Spearman correlations between methods of mu, sigma and SNR over their shared pairs, in blocks.

Each method's statistics over the shared pairs are computed once, block by block (`pairs.pair_blocks`), and
kept as vectors: in memory when small, otherwise in a temporary directory, read back a block at a time.
Pearson's r is merged block by block (`stats.Comoments`). Spearman's needs ranks, which need a whole vector:
one method's vector at a time is ranked (`stats.average_ranks`, float64: ranks above 2**24 are not exact in
float32), the ranks are stored like the vectors, and their Pearson r is merged block by block. Non-finite
entries (an SNR of +-inf where sigma = 0) are left out pairwise, and a pair of methods with any is then ranked
on the entries both have, as pandas' `DataFrame.corr` does.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import stats
from .matching import Member, Shared
from .pairs import pair_blocks

CORR_KINDS = ("pearson", "spearman")
CORR_STATS = {"mean": "mean (mu)", "std": "std (sigma)", "snr": "SNR (mu/sigma)"}
IN_MEMORY = 256 << 20  # bytes of vectors kept in memory; above, they go to a temporary directory
READ = 1 << 20  # entries per block when merging


class Vectors:
    """Named float64 vectors of one length, filled block by block, read back in blocks or whole."""

    def __init__(self, length: int, n_vectors: int):
        self.length = length
        self.dir = tempfile.TemporaryDirectory(prefix="tda-corr-") if length * n_vectors * 8 > IN_MEMORY else None
        self.mem: dict[str, list[np.ndarray] | np.ndarray] = {}

    def _path(self, key: str) -> Path:
        return Path(self.dir.name) / f"{key}.f64"

    def append(self, key: str, block: np.ndarray) -> None:
        """Add the next entries of vector `key`."""
        block = np.ascontiguousarray(block, dtype=np.float64).ravel()
        if self.dir is None:
            self.mem.setdefault(key, []).append(block)
        else:
            with open(self._path(key), "ab") as f:
                block.tofile(f)

    def put(self, key: str, whole: np.ndarray) -> None:
        """Store a whole vector."""
        if self.dir is None:
            self.mem[key] = np.asarray(whole, dtype=np.float64)
        else:
            self._path(key).unlink(missing_ok=True)
            self.append(key, whole)

    def whole(self, key: str) -> np.ndarray:
        """Vector `key`, whole."""
        if self.dir is None:
            if isinstance(self.mem[key], list):
                self.mem[key] = np.concatenate(self.mem[key])
            return self.mem[key]
        return np.fromfile(self._path(key), dtype=np.float64)

    def blocks(self, key: str):
        """Vector `key`, READ entries at a time."""
        if self.dir is None:
            v = self.whole(key)
            yield from (v[a:a + READ] for a in range(0, self.length, READ))
            return
        with open(self._path(key), "rb") as f:
            for a in range(0, self.length, READ):
                yield np.fromfile(f, dtype=np.float64, count=min(READ, self.length - a))

    def close(self) -> None:
        """Delete the vectors."""
        self.mem.clear()
        if self.dir is not None:
            self.dir.cleanup()


def _pearson(vec: Vectors, a: str, b: str) -> float:
    c = stats.Comoments()
    for x, y in zip(vec.blocks(a), vec.blocks(b)):
        c.add(x, y)
    return c.r


def _spearman_subset(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    c = stats.Comoments()
    c.add(stats.average_ranks(x[keep]), stats.average_ranks(y[keep]))
    return c.r


def _matrix(labels: list[str], value) -> pd.DataFrame:
    out = pd.DataFrame(np.nan, index=labels, columns=labels)
    for i, a in enumerate(labels):
        for b in labels[i:]:
            out.loc[a, b] = out.loc[b, a] = value(a, b)
    return out


def correlation_matrices(members: list[Member], shared: Shared) -> dict[tuple[str, str], pd.DataFrame]:
    """{(kind, stat): methods x methods} over the shared pairs, each member's statistics over the shared seeds."""
    labels = [m.label for m in members]
    vec = Vectors(shared.n_pairs, len(members) * (len(CORR_STATS) + 1))
    finite: dict[tuple[str, str], bool] = {}
    try:
        for i, (m, sel) in enumerate(zip(members, shared.selections)):
            for blk in tqdm(pair_blocks(m.source, m.k, sel, t_test=False), desc=f"{m.label} statistics", leave=False,
                            disable=shared.n_pairs < 1 << 20):
                for s, v in (("mean", blk.st.mu), ("std", blk.st.sigma), ("snr", blk.st.snr)):
                    vec.append(f"{i}.{s}", v)
                    finite[(labels[i], s)] = finite.get((labels[i], s), True) and bool(np.isfinite(v).all())
        keys = {lab: str(i) for i, lab in enumerate(labels)}
        mats = {}
        for s in CORR_STATS:
            mats[("pearson", s)] = _matrix(labels, lambda a, b: _self(vec, f"{keys[a]}.{s}") if a == b
                                           else _pearson(vec, f"{keys[a]}.{s}", f"{keys[b]}.{s}"))
            for lab in labels:
                if finite[(lab, s)]:
                    vec.put(f"{keys[lab]}.rank", stats.average_ranks(vec.whole(f"{keys[lab]}.{s}")))

            def spearman(a: str, b: str, s: str = s) -> float:
                if a == b:  # ranks are constant exactly where the values are
                    return _self(vec, f"{keys[a]}.{s}")
                if finite[(a, s)] and finite[(b, s)]:
                    return _pearson(vec, f"{keys[a]}.rank", f"{keys[b]}.rank")
                return _spearman_subset(vec.whole(f"{keys[a]}.{s}"), vec.whole(f"{keys[b]}.{s}"))
            mats[("spearman", s)] = _matrix(labels, spearman)
        return mats
    finally:
        vec.close()


def _self(vec: Vectors, key: str) -> float:
    """The diagonal: 1 for a vector with >= 2 finite entries that is not constant, else NaN (as pandas)."""
    c = stats.Comoments()
    for x in vec.blocks(key):
        c.add(x, x)
    return 1.0 if c.n >= 2 and c.cxx > 0 else float("nan")
