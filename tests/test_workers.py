"""Seeds in parallel worker processes: same outputs as one process, failures isolated, one-line errors."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest
import torch

from helpers import EXP, REPO, artefacts, fake_venv, make_tiny_root, readme_section, script
from tda import io
from tda.config import TDAError, parse_experiment
from tda.seeds import load_seeds
from tda.workers import default_workers, run_jobs, shared_workers


def test_default_workers(monkeypatch):
    monkeypatch.delenv("TDA_WORKERS", raising=False)
    assert default_workers(torch.device("cpu")) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("TDA_WORKERS", "3")
    assert default_workers(torch.device("cpu")) == 3
    monkeypatch.setenv("TDA_WORKERS", "x")
    with pytest.raises(TDAError, match="TDA_WORKERS"):
        default_workers(torch.device("cpu"))


def test_parallel_seeds_equal_one_process(tmp_path, monkeypatch, tiny_reference, capsys):
    """Training and GD/GC with two worker processes (started by the scripts' main, in this process) against the
    reference run, whose every seed ran in one process."""
    root = make_tiny_root(tmp_path / "root")
    monkeypatch.setenv("TDA_ROOT", str(root))
    cfg, ref = parse_experiment(EXP), parse_experiment(EXP, root=tiny_reference.root)
    seeds = load_seeds(root)
    script("run_cnn_training").main(["--experiment", EXP, "--seed_id", "all", "--workers", "2"])
    script("run_gd_and_gc").main(["--experiment", EXP, "--seed_id", "all", "--workers", "2"])
    assert "2 workers" in capsys.readouterr().err  # one aggregated bar over the seeds
    for s in seeds:
        for e in cfg.ckpt_epochs:
            ck, ck_ref = io.load_checkpoint(cfg, s, e)["state_dict"], io.load_checkpoint(ref, s, e)["state_dict"]
            assert ck.keys() == ck_ref.keys() and all(torch.equal(ck[k], ck_ref[k]) for k in ck)
        for o in ("gd", "gc"):
            assert torch.equal(io.load_scores(cfg, o, s)["scores"], io.load_scores(ref, o, s)["scores"])
    assert not torch.equal(io.load_scores(cfg, "gd", seeds[0])["scores"], io.load_scores(cfg, "gd", seeds[1])["scores"])


def test_a_failing_seed_does_not_stop_the_others(tiny_reference, prewarmed, tmp_path):
    root = tiny_reference.copy(tmp_path / "root", ("data", "models"))  # three trained seeds, no scores
    cfg = parse_experiment(EXP, root=root)
    bad = load_seeds(root)[1]
    cfg.ckpt_path(bad, 12).write_bytes(b"truncated")
    argv = ["run_ats.py", "--experiment", EXP, "--seed_id", "all"]
    r = prewarmed.run([*argv, "--workers", "2"], env={"TDA_ROOT": str(root)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"seed {bad}: error: corrupt checkpoint" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: 1 of 3 failed (seed {bad})")
    assert [cfg.scores_path("ats", s).exists() for s in load_seeds(root)] == [True, False, True]
    assert f"seed {bad}: failed: corrupt checkpoint" in r.stdout
    r = prewarmed.run([*argv, "--workers", "0"], env={"TDA_ROOT": str(root)})
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


def test_pipeline_in_one_interpreter_equals_the_scripts_one_by_one(tiny_reference, tmp_path):
    """README's `make run` (run_experiment.sh: one interpreter, two workers kept across steps) against README's
    scripts in order, each alone with one worker (the reference run). The command is the README's; the test adds
    EXPERIMENT=cnn_digits3_2pc and TDA_ROOT (the tiny experiment) and VENV (no install)."""
    (cmd,) = [c for c in readme_section("Two commands") if c.startswith("make run")]
    root = make_tiny_root(tmp_path / "one")
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    venv = os.path.relpath(fake_venv(tmp_path / "venv"), REPO)
    r = subprocess.run([*shlex.split(cmd), f"EXPERIMENT={EXP}", f"VENV={venv}"], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env=dict(env, TDA_ROOT=str(root), TDA_WORKERS="2", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    heads = [line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("== ")]
    assert heads[:-1] == ["== subsets", "== training", "== LOO", "== ATS", "== IF", "== GD and GC", "== p-values",
                          "== correlations"] and heads[-1].startswith(f"== summary of {EXP}")
    assert "(2 workers)" in r.stderr
    a, b = artefacts(root), artefacts(tiny_reference.root)
    # README's subsets command makes the 10, 20 and 50 per class subsets too; make run only the experiment's
    assert sorted(set(b) - set(a)) == sorted(f"data/digits3/train_subset_{n}pc.{x}" for n in (10, 20, 50)
                                             for x in ("pt", "txt"))
    assert set(a) <= set(b) and [k for k in a if a[k] != b[k]] == []
