"""tda.significance on 10 seeds x 5 checkpoints x 1,000 x 1,000 float32 scores in memory, on one thread.

Against the straightforward computation with scipy in the same run (per K: per-seed means in float64,
scipy.stats.ttest_1samp, the z-test on mu / sigma, scipy.stats.false_discovery_control), alternating the two
so that both see the same background load; prints the medians, their ratio and one JSON line.

    OMP_NUM_THREADS=1 python bench/bench_significance.py [--repeats 3] [--n 1000] [--m 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats as sps  # noqa: E402

import tda  # noqa: E402


def with_scipy(scores: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{K: (p_z, p_t, q_t)} computed the obvious way with scipy."""
    out = {}
    c = scores.shape[1]
    for k in range(1, c + 1):
        per_seed = scores[:, c - k:].astype(np.float64).mean(axis=1)
        t = sps.ttest_1samp(per_seed, 0.0, axis=0)
        snr = per_seed.mean(0) / per_seed.std(0, ddof=1)
        p_z = 2 * sps.norm.sf(np.abs(snr))
        out[k] = (p_z, t.pvalue, sps.false_discovery_control(t.pvalue.ravel()).reshape(t.pvalue.shape))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--m", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((10, 5, args.n, args.m), dtype=np.float32)
    scores[:, :, : args.n // 10] += 0.5  # some signal
    ours, ref, ours_cpu, ref_cpu = [], [], [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        sig = tda.significance(scores)
        ours.append(time.perf_counter() - t)
        ours_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        r = with_scipy(scores)
        ref.append(time.perf_counter() - t)
        ref_cpu.append(time.process_time() - c)
    diff = max(float(np.max(np.abs(sig.p_t[k - 1] - r[k][1]))) for k in r)
    diff_q = max(float(np.max(np.abs(sig.q_t[k - 1] - r[k][2]))) for k in r)
    med, med_ref = statistics.median(ours), statistics.median(ref)
    cpu, cpu_ref = statistics.median(ours_cpu), statistics.median(ref_cpu)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (a shared machine stretches wall time, not CPU time)")
    print(f"tda.significance, 10 x 5 x {args.n} x {args.m} float32, one thread: median {med:.2f} s wall, {cpu:.2f} s CPU "
          f"(runs {', '.join(f'{v:.2f}' for v in ours)} s wall)")
    print(f"scipy, the same p- and q-values:                       median {med_ref:.2f} s wall, {cpu_ref:.2f} s CPU "
          f"(runs {', '.join(f'{v:.2f}' for v in ref)} s wall); ratio scipy / ours {cpu_ref / cpu:.2f} (CPU)")
    print(f"largest difference to scipy: p_t {diff:.1e}, q_t {diff_q:.1e}")
    print(json.dumps({"significance_s": med, "significance_cpu_s": cpu, "scipy_s": med_ref, "scipy_cpu_s": cpu_ref,
                      "ratio_cpu": cpu_ref / cpu, "runs_wall_s": ours, "max_abs_diff_p_t": diff,
                      "max_abs_diff_q_t": diff_q}))


if __name__ == "__main__":
    main()
