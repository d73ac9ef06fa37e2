"""Seeds in parallel worker processes: same outputs as one process, failures isolated, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO, artefacts, make_tiny_root, pipeline, run_script, script
from tda import io
from tda.config import TDAError, get_task, parse_experiment
from tda.data import generate_subsets
from tda.seeds import load_seeds
from tda.workers import default_workers, run_jobs, shared_workers

EXP = "cnn_digits3_2pc"


@pytest.fixture()
def root(tmp_path, monkeypatch):
    """A tiny experiment: 6 training images, 20 test images, three seeds."""
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    torch.save(torch.tensor([446, 724, 571]), tmp_path / "random_seeds.pt")
    data_dir = tmp_path / "data" / "digits3"
    generate_subsets(get_task("digits3"), [2], data_dir, "")
    io.write_index_list(io.read_index_list(data_dir / "test_subset.txt")[::15], data_dir / "test_subset.txt")
    generate_subsets(get_task("digits3"), [2], data_dir, "")
    return tmp_path


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each: the in-process reference does too
    yield
    torch.set_num_threads(n)


def test_default_workers(monkeypatch):
    monkeypatch.delenv("TDA_WORKERS", raising=False)
    assert default_workers(torch.device("cpu")) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("TDA_WORKERS", "3")
    assert default_workers(torch.device("cpu")) == 3
    monkeypatch.setenv("TDA_WORKERS", "x")
    with pytest.raises(TDAError, match="TDA_WORKERS"):
        default_workers(torch.device("cpu"))


def test_parallel_seeds_equal_one_process(root, one_thread, tmp_path_factory, capsys):
    cfg = parse_experiment(EXP)
    seeds = load_seeds(root)
    train, gdgc = script("run_cnn_training").main, script("run_gd_and_gc").main
    train(["--experiment", EXP, "--seed_id", "all", "--workers", "2"])
    gdgc(["--experiment", EXP, "--seed_id", "all", "--workers", "2"])
    par_ck = {s: io.load_checkpoint(cfg, s, 14)["state_dict"] for s in seeds}
    par_gd = {s: io.load_scores(cfg, "gd", s)["scores"] for s in seeds}
    assert "2 workers" in capsys.readouterr().err  # one aggregated bar over the seeds
    # the same in this process
    train(["--experiment", EXP, "--seed_id", "all", "--workers", "1", "--overwrite"])
    gdgc(["--experiment", EXP, "--seed_id", "all", "--workers", "1", "--overwrite"])
    for s in seeds:
        ck = io.load_checkpoint(cfg, s, 14)["state_dict"]
        assert all(torch.equal(ck[k], par_ck[s][k]) for k in ck)
        assert torch.equal(io.load_scores(cfg, "gd", s)["scores"], par_gd[s])
    assert not torch.equal(par_gd[seeds[0]], par_gd[seeds[1]])  # the seeds really differ


def test_a_failing_seed_does_not_stop_the_others(root):
    cfg = parse_experiment(EXP)
    r = run_script("run_cnn_training.py", "--experiment", EXP, "--seed_id", "all", "--workers", "1", root=root)
    assert r.returncode == 0, r.stderr
    bad = load_seeds(root)[1]
    cfg.ckpt_path(bad, 12).write_bytes(b"truncated")
    r = run_script("run_ats.py", "--experiment", EXP, "--seed_id", "all", "--workers", "2", root=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"seed {bad}: error: corrupt checkpoint" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: 1 of 3 failed (seed {bad})")
    assert [cfg.scores_path("ats", s).exists() for s in load_seeds(root)] == [True, False, True]
    assert f"seed {bad}: failed: corrupt checkpoint" in r.stdout
    r = run_script("run_ats.py", "--experiment", EXP, "--seed_id", "all", "--workers", "0", root=root)
    assert r.returncode == 2 and "--workers: must be >= 1" in r.stderr


def test_shared_workers_keep_their_processes_between_steps():
    jobs = [(f"job {k}", ()) for k in range(4)]
    cpu = torch.device("cpu")

    def pids():
        return {o.value for o in run_jobs(os.getpid, jobs, 2, cpu, "pids", progress=False)}

    with shared_workers():
        first, second = pids(), pids()
    assert second <= first and len(first) <= 2 and os.getpid() not in first  # no new process for the second step
    assert not pids() & first  # outside the block every call starts its own


def test_pipeline_in_one_interpreter_equals_the_scripts_one_by_one(tmp_path):
    """run_experiment.sh's path (one interpreter, two workers kept across steps) against each script alone."""
    env = {"OMP_NUM_THREADS": "1"}
    one, alone = make_tiny_root(tmp_path / "one"), make_tiny_root(tmp_path / "alone")
    r = subprocess.run([sys.executable, "-m", "tda.pipeline", EXP], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, TDA_ROOT=str(one), TDA_WORKERS="2", **env), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    heads = [line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("== ")]
    assert heads[:-1] == ["== subsets", "== training", "== LOO", "== ATS", "== IF", "== GD and GC", "== p-values",
                          "== correlations"] and heads[-1].startswith(f"== summary of {EXP}")
    assert "(2 workers)" in r.stderr
    for step in pipeline(EXP):
        done = run_script(*step, root=alone, env={"TDA_WORKERS": "1", **env})
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = artefacts(one), artefacts(alone)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
