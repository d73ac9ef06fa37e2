"""The per-pair files: the tidy table of every pair and K (Parquet), and the paper's per-K p-value matrices (CSV).

`pairs_<method>.parquet` has one row per training sample, test sample and K: train_index, test_index (dataset
indices), K, mu, sigma, snr, p_z (the paper's z-test), p_t (t-test), q_t (Benjamini-Hochberg over all pairs of
that method and K). Parquet because the table has N x M x C rows (100 million for 20,000 x 1,000 x 5): it keeps
the dtypes, is written row group by row group (a block of pairs at a time) and read back in seconds, where a CSV
would be several times larger and slower. pyarrow, which writes it, is a dependency of `datasets`.
`to_frame` and the file are built by the same `tidy` function, so a DataFrame from the API equals the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("train_index", "test_index", "K", "mu", "sigma", "snr", "p_z", "p_t", "q_t")
SCHEMA = pa.schema([("train_index", pa.int64()), ("test_index", pa.int64()), ("K", pa.int16())]
                   + [(c, pa.float64()) for c in COLUMNS[3:]])


def pairs_name(method: str) -> str:
    """File of one method's per-pair table (every pair and K)."""
    return f"pairs_{method}.parquet"


def pvalue_csv_name(method: str, k: int) -> str:
    """File of one method's per-pair z-test p-values with tau averaged over the last K checkpoints."""
    return f"pvalues_{method}_across_{k}_ckpts.csv"


def tidy(k: int, train_ids: np.ndarray, test_ids: np.ndarray, **values: np.ndarray) -> dict[str, np.ndarray]:
    """Long-format columns of a block of pairs [rows, M] at K: one row per pair, rows (training samples) outer."""
    rows, cols = np.asarray(values["mu"]).shape
    out = {"train_index": np.repeat(np.asarray(train_ids, np.int64), cols),
           "test_index": np.tile(np.asarray(test_ids, np.int64), rows), "K": np.full(rows * cols, k, np.int16)}
    out.update({c: np.asarray(values[c], np.float64).ravel() for c in COLUMNS[3:]})
    return out


def to_frame(blocks: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """The tidy DataFrame of some blocks of `tidy` columns, in order."""
    return pd.DataFrame({c: np.concatenate([b[c] for b in blocks]) if blocks else np.empty(0) for c in COLUMNS})


class PairsWriter:
    """Writes a Parquet file of tidy blocks, one row group each (the file is finished on close)."""

    def __init__(self, path: Path | str):
        # dictionary encoding only where values repeat: on random floats it costs 5x the time and saves nothing
        self.writer = pq.ParquetWriter(str(path), SCHEMA, compression="snappy", use_dictionary=list(COLUMNS[:3]))

    def write(self, block: dict[str, np.ndarray]) -> None:
        """Append one block of `tidy` columns."""
        self.writer.write_table(pa.Table.from_pydict(block, schema=SCHEMA))

    def close(self) -> None:
        """Finish the file."""
        self.writer.close()


def read_pairs(path: Path | str) -> pd.DataFrame:
    """A per-pair table as written (pandas, through pyarrow)."""
    return pd.read_parquet(path)


def csv_header(test_ids: Sequence[int]) -> str:
    """The first line of a per-K p-value CSV: rows are training samples, columns test samples, by dataset index."""
    return "train_index," + ",".join(str(int(i)) for i in test_ids) + "\n"


def csv_rows(train_ids: Sequence[int], p: np.ndarray) -> str:
    """Rows of a per-K p-value CSV, 7 significant digits (float32 scores carry no more): the bytes pandas'
    `DataFrame.to_csv(float_format='%.7g')` writes, formatted several times faster."""
    fmt = "%d" + ",%.7g" * p.shape[1] + "\n"
    return "".join(fmt % (int(i), *row) for i, row in zip(train_ids, p.tolist()))
