"""Wall and CPU time of the whole pipeline (run_experiment.sh) on a fresh root: seeds in parallel vs one process.

    python bench/bench_pipeline.py                          # cnn_digits3_10pc, --workers default vs 1
    python bench/bench_pipeline.py --load                   # the same while a CPU-bound process runs beside it
    python bench/bench_pipeline.py --load --no_single       # only the default configuration
    python bench/bench_pipeline.py --old ../old-checkout --old_python ../old-checkout/.venv/bin/python
                                                            # also time another checkout (e.g. an older main)

Each configuration runs `bash run_experiment.sh EXPERIMENT` from scratch in its own temporary TDA_ROOT
(subsets, training, the five methods, p-values, correlations, summary), one after the other on the same
machine. CPU time is that of all child processes. The last line is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_pipeline(checkout: Path, python: str, experiment: str, env: dict) -> tuple[float, float, dict]:
    """(wall s, CPU s, wall s of each step) of one complete pipeline run of `checkout` in a fresh TDA_ROOT."""
    root = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        shutil.copy(checkout / "random_seeds.pt", root / "random_seeds.pt")
        full = dict(os.environ, TDA_ROOT=str(root), PYTHON=python, **env)
        cpu0, t0 = _children_cpu(), time.perf_counter()
        r = subprocess.run(["bash", str(checkout / "run_experiment.sh"), experiment], cwd=root, env=full,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        if r.returncode != 0:
            sys.exit(f"error: the pipeline of {checkout} failed: {r.stderr.strip().splitlines()[-1:]}")
        steps = {m[1]: int(m[2]) for m in re.finditer(r"^ {3}(.+) done in (\d+) s$", r.stdout, re.M)}
        return wall, cpu, steps
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="cnn_digits3_10pc")
    p.add_argument("--load", action="store_true", help="run a CPU-bound process beside the pipeline")
    p.add_argument("--old", type=Path, default=None, help="another checkout to time the same way")
    p.add_argument("--old_python", default=None, help="the interpreter for --old (default: this one)")
    p.add_argument("--no_single", action="store_true",
                   help="skip the --workers 1 configuration (under --load it can take many times longer)")
    args = p.parse_args(argv)
    configs = [("this checkout, default workers", REPO, sys.executable, {})]
    if not args.no_single:
        configs.append(("this checkout, --workers 1", REPO, sys.executable, {"TDA_WORKERS": "1"}))
    if args.old is not None:
        configs.append((f"{args.old}", args.old.resolve(), args.old_python or sys.executable, {}))
    hog = None
    if args.load:  # one busy core: a pipeline using both should slow down by at most about 2x
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    figures = {}
    try:
        for name, checkout, python, env in configs:
            wall, cpu, steps = run_pipeline(checkout, python, args.experiment, env)
            figures[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "steps_s": steps}
            print(f"{name:40s} wall {wall:7.1f} s   CPU {cpu:7.1f} s   steps (wall s): "
                  + ", ".join(f"{k} {v}" for k, v in steps.items()), flush=True)
    finally:
        if hog is not None:
            hog.kill()
    base = figures["this checkout, default workers"]["wall_s"]
    for name, f in figures.items():
        print(f"{name:40s} {f['wall_s'] / base:5.2f}x the default's wall time")
    print(json.dumps({"experiment": args.experiment, "load": args.load, **figures}))


if __name__ == "__main__":
    main()
