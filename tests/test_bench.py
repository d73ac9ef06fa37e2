"""The prepared GPU check runs on the CPU: every method at the CIFAR shape's code path, the vmapped LOO against its
plain loop, the seeds spread over worker processes (so it is ready for a GPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


def test_gpu_check_script_runs_on_the_cpu_and_agrees_with_its_loop():
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "TDA_WORKERS": "2"}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--device", "cpu", "--small",
                        "--loop_members", "2"], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # 1. each method ran in its own interpreter through tda.attribute and gave finite [1, 1, N, M] scores
    rows = {row["method"]: row for row in out["methods"]}
    assert list(rows) == ["LOO (paper)", "ATS", "IF (LiSSA)", "IF (CG)", "GD+GC"]
    for row in rows.values():
        assert row["finite"] and row["shape"] == [1, 1, 20, 20], row
        assert row["peak_rss_mb"] >= row["base_rss_mb"] > 0 and row["cpu_s"] > 0
    loo, cg = rows["LOO (paper)"], rows["IF (CG)"]
    assert loo["ran"] == "3 of 3 epochs" and loo["cpu_s_checkpoint"] == loo["cpu_s"]  # --small: LOO unshortened
    assert cg["ran"] == "2 of 100 iterations" and cg["cpu_s_checkpoint"] == pytest.approx(cg["cpu_s"] * 101 / 3)
    # 2. the vmapped ensemble agrees with torch.optim.Adam retraining one member at a time
    assert out["loo"]["n_train"] == 20 and out["loo"]["fast_s"] > 0 and out["loo"]["loop_s_scaled"] > 0
    assert out["loo"]["max_rel_diff"] < 1e-4  # float32: the ensemble and torch.optim.Adam round differently
    # 3. four seeds on two worker processes, every seed done
    w = out["workers"]
    assert w["workers"] == 2 and w["seeds"] == 4 and w["processes"] == 2 and w["devices"] == ["cpu"]
    assert sorted(s["seed"] for s in w["per_seed"]) == [446, 447, 448, 449]
