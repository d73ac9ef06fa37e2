"""The prepared GPU check runs on the CPU and its ensemble agrees with its plain loop (so it is ready for a GPU)."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_gpu_check_script_runs_on_the_cpu_and_agrees_with_its_loop():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--device", "cpu", "--small",
                        "--loop_members", "2"], capture_output=True, text=True, timeout=600,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n_train"] == 20 and out["fast_s"] > 0 and out["loop_s_scaled"] > 0
    assert out["max_rel_diff"] < 1e-4  # float32: the ensemble and torch.optim.Adam round differently
