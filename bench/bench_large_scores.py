"""Peak memory and time of run_pvalues.py --scores and run_correlations.py --scores on a TRAK-sized array.

Builds 10 seeds x 5 checkpoints x 20,000 training x 1,000 test float32 scores on disk (4 GB, `scores.npy`,
memory-mapped by the scripts) and a second method of the same size as a directory of one `.npy` per seed,
runs both scripts on them, each in its own process under `/usr/bin/time -v` (peak resident set size,
"Maximum resident set size"; `resource.getrusage` where that tool is missing), checks the p-values of a slice
of training samples against the in-memory path (`tda.significance` on that slice: equal), prints a table and
one JSON line, and deletes everything it wrote.

    OMP_NUM_THREADS=1 python bench/bench_large_scores.py [--n 20000] [--m 1000] [--dir /tmp] [--keep]

Needs about 3.2 times the array's size free in --dir (both arrays, the per-pair table, the CSVs).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

S, C = 10, 5
SLICE = 40  # training samples checked against the in-memory path


def build(work: Path, n: int, m: int) -> None:
    """scores.npy [S, C, n, m] float32 (noise, a signal on the first 5% of training samples) and b/<seed>.npy,
    a second method: the first one plus as much noise again, one [C, n, m] file per seed."""
    a = np.lib.format.open_memmap(work / "scores.npy", mode="w+", dtype=np.float32, shape=(S, C, n, m))
    (work / "b").mkdir()
    rng = np.random.default_rng(0)
    signal = np.zeros((n, m), np.float32)
    signal[: n // 20] = rng.uniform(0.5, 3.0, size=(n // 20, m)).astype(np.float32)
    for s in range(S):
        b = np.lib.format.open_memmap(work / "b" / f"{s}.npy", mode="w+", dtype=np.float32, shape=(C, n, m))
        for c in range(C):
            a[s, c] = rng.standard_normal((n, m), dtype=np.float32) + signal
            b[c] = a[s, c] + rng.standard_normal((n, m), dtype=np.float32)
        b.flush()
        del b
    a.flush()
    del a


def measured(cmd: list[str], root: Path) -> dict:
    """Run `cmd` in its own process with TDA_ROOT=root: wall seconds and peak resident memory (MiB)."""
    env = dict(os.environ, TDA_ROOT=str(root), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    t = time.perf_counter()
    r = subprocess.run(timer + cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    if timer:
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    else:
        import resource
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    return {"wall_s": wall, "peak_mib": peak_kb / 1024, "stdout": r.stdout}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--m", type=int, default=1000)
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--keep", action="store_true", help="keep the files (default: delete them at the end)")
    args = p.parse_args()
    size = S * C * args.n * args.m * 4
    free = shutil.disk_usage(args.dir).free
    if free < 3.2 * size:
        raise SystemExit(f"{args.dir} has {free / 2**30:.1f} GiB free, this needs {3.2 * size / 2**30:.1f} GiB")
    work = Path(tempfile.mkdtemp(prefix="tda-bench-large-", dir=args.dir))
    try:
        t = time.perf_counter()
        build(work, args.n, args.m)
        print(f"built {size / 1e9:.1f} GB x 2 in {work} in {time.perf_counter() - t:.0f} s")
        py = sys.executable
        pv = measured([py, str(REPO / "run_pvalues.py"), "--experiment", "big", "--scores", "scores.npy",
                       "--method_name", "trak"], work)
        co = measured([py, str(REPO / "run_correlations.py"), "--experiment", "big", "--scores", "scores.npy", "b",
                       "--method_name", "trak", "other"], work)
        out = work / "results" / "big"
        # the slice against the in-memory path: every statistic but q (which depends on all pairs) equal
        sys.path.insert(0, str(REPO))
        import tda
        sliced = tda.significance(np.load(work / "scores.npy", mmap_mode="r")[:, :, :SLICE], name="trak")
        table = pq.read_table(out / "pairs_trak.parquet", filters=[("train_index", "<", SLICE)]).to_pandas()
        ref = sliced.to_frame()
        equal = all(np.array_equal(table[c].to_numpy(), ref[c].to_numpy())
                    for c in ("train_index", "test_index", "K", "mu", "sigma", "snr", "p_z", "p_t"))
        corr = {line.split()[0]: line for line in co["stdout"].splitlines() if line.startswith("TRAK")}
        rows = [("run_pvalues.py --scores", pv), ("run_correlations.py --scores", co)]
        print(f"\n{args.n} x {args.m} pairs, {S} seeds x {C} checkpoints, float32 ({size / 1e9:.1f} GB per method); "
              f"load average {os.getloadavg()[0]:.1f}")
        for name, r in rows:
            print(f"{name:32s} peak resident {r['peak_mib']:7.0f} MiB   wall {r['wall_s']:6.0f} s")
        print(f"p-values of training samples 0..{SLICE - 1} equal the in-memory path's: {equal}")
        print(f"per-pair table {(out / 'pairs_trak.parquet').stat().st_size / 1e9:.2f} GB; correlations: "
              f"{'; '.join(corr.values())[:200]}")
        print(json.dumps({"n": args.n, "m": args.m, "pvalues_peak_mib": pv["peak_mib"], "pvalues_wall_s": pv["wall_s"],
                          "correlations_peak_mib": co["peak_mib"], "correlations_wall_s": co["wall_s"],
                          "slice_equal": equal}))
        if not equal:
            raise SystemExit("the slice differs from the in-memory path")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
