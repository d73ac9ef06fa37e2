"""The Slurm launcher: plan, job scripts, sbatch lines and parsing without Slurm; then end to end on a real
single-node Slurm started by the `slurm` fixture (skipped with a reason where Slurm is not installed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import slurm_cluster
from helpers import REPO, make_tiny_root
from tda.config import TDAError
from tda.launch import wait
from tda.launch.__main__ import main, parse_args
from tda.launch.plan import SEED, plan
from tda.launch.sbatch import SlurmOptions, job_script, resource_values, sbatch_argv

EXP = "cnn_digits3_2pc"
METHODS = ("loo", "ats", "if", "gd_gc")
BASH = shutil.which("bash") or "/bin/bash"


def by_key(jobs):
    return {j.key: j for j in jobs}


# ------------------------------------------------------------------ without Slurm
def test_plan_shares_subsets_per_task_and_chains_the_steps(tmp_path):
    jobs = by_key(plan(["cnn_digits3_10pc", "cnn_fmnist3_10pc", "cnn_digits3_20pc", "cnn_digits3_10pc"], 10, tmp_path,
                       data_roots={"fmnist3": "/data/fmnist"}))
    assert [k for k in jobs if k.startswith("subsets")] == ["subsets_digits3", "subsets_fmnist3"]
    assert jobs["subsets_digits3"].argv[-3:] == ("--num_per_class", "10", "20")
    assert jobs["subsets_fmnist3"].argv[-3:] == ("10", "--data_root", "/data/fmnist")
    assert len(jobs) == 2 + 3 * 8 + 1  # the repeated experiment is planned once; then the grid's summary
    train = jobs["train_cnn_digits3_20pc"]
    assert (train.argv, train.n_tasks, train.after, train.gpu) == (
        ("run_cnn_training.py", "--experiment", "cnn_digits3_20pc", "--seed_id", SEED), 10, ("subsets_digits3",), True)
    for m in METHODS:
        j = jobs[f"{m}_cnn_fmnist3_10pc"]
        assert (j.n_tasks, j.after, j.gpu, j.argv[-1]) == (10, ("train_cnn_fmnist3_10pc",), True, SEED)
    assert jobs["gd_gc_cnn_digits3_10pc"].argv[0] == "run_gd_and_gc.py"
    assert jobs["pvalues_cnn_digits3_10pc"].after == tuple(f"{m}_cnn_digits3_10pc" for m in METHODS)
    assert jobs["correlations_cnn_digits3_10pc"].after == ("pvalues_cnn_digits3_10pc",)
    summary = jobs["summary_cnn_digits3_10pc"]
    assert (summary.argv[:2], summary.after, summary.n_tasks, summary.gpu) == (
        ("-m", "tda.results.report"), ("correlations_cnn_digits3_10pc",), None, False)
    assert summary.log(tmp_path, "out") == tmp_path / "logs/cnn_digits3_10pc/summary.out"
    assert train.log(tmp_path, "err", 3) == tmp_path / "logs/cnn_digits3_20pc/train_3.err"


def test_vit_trains_with_its_script_and_gets_the_training_args(tmp_path):
    jobs = by_key(plan(["vit_digits3_10pc"], 3, tmp_path, ("--model_name_or_path", "/m")))
    assert jobs["train_vit_digits3_10pc"].argv == (
        "run_vit_finetuning.py", "--experiment", "vit_digits3_10pc", "--seed_id", SEED, "--model_name_or_path", "/m")
    assert "--model_name_or_path" not in jobs["loo_vit_digits3_10pc"].argv
    with pytest.raises(TDAError, match="unknown task 'nosuch'"):
        plan(["cnn_nosuch_10pc"], 3, tmp_path)


def test_job_script_runs_the_entry_script_for_its_array_task(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "cwd=$PWD root=$TDA_ROOT omp=$OMP_NUM_THREADS args=$*"\n')
    fake_python.chmod(0o755)
    job = by_key(plan([EXP], 3, tmp_path))[f"loo_{EXP}"]
    text = job_script(job, str(fake_python), REPO, tmp_path / "my root")
    assert '--seed_id "$SLURM_ARRAY_TASK_ID"' in text
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2", SLURM_JOB_ID="77", SLURM_CPUS_PER_TASK="3")
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, cwd=tmp_path).stdout
    assert f"== loo of {EXP}, seed id 2: Slurm job 77 on " in out
    assert f"cwd={REPO} root={tmp_path}/my root omp=3 args=run_loo.py --experiment {EXP} --seed_id 2" in out


def test_sbatch_lines_carry_resources_overrides_throttle_and_passthrough(tmp_path):
    steps = ("subsets", "train", *METHODS, "pvalues", "correlations", "summary")
    opts = SlurmOptions("gpu", "lab", {"time": resource_values("--time", ["1:00:00", "loo=8:00:00"], steps),
                                       "gpus_per_task": resource_values("--gpus-per-task", ["1"], steps),
                                       "mem": resource_values("--mem", ["pvalues=32G"], steps)},
                        throttle=4, extra=("--qos=long", "--constraint=a100"))
    jobs = by_key(plan([EXP], 3, tmp_path))
    loo = sbatch_argv(jobs[f"loo_{EXP}"], opts, tmp_path, ["12"])
    assert loo[:2] == ["sbatch", "--parsable"] and loo[-3:-1] == ["--qos=long", "--constraint=a100"]
    for a in ("--array=0-2%4", "--dependency=afterok:12", "--kill-on-invalid-dep=yes", "--partition=gpu",
              "--account=lab", "--time=8:00:00", "--gres=gpu:1", f"--output={tmp_path}/logs/{EXP}/loo_%a.out"):
        assert a in loo
    pv = sbatch_argv(jobs[f"pvalues_{EXP}"], opts, tmp_path, ["1", "2"])
    assert "--time=1:00:00" in pv and "--mem=32G" in pv and "--dependency=afterok:1:2" in pv
    assert not any(a.startswith(("--gres", "--array")) for a in pv)  # no GPU for the results steps
    assert not any(a.startswith("--dependency") for a in sbatch_argv(jobs["subsets_digits3"], opts, tmp_path, []))
    for bad, msg in ((["nosuch=1"], "unknown step 'nosuch'"), (["loo="], "non-empty VALUE")):
        with pytest.raises(TDAError, match=msg):
            resource_values("--time", bad, steps)


@pytest.mark.parametrize("argv,msg", [
    ([EXP, "--dry-run", "--wait"], "nothing to --wait for"),
    ([EXP, "--slurm-args", "--qos='x"], "--slurm-args"),
    ([EXP, "--mem", "gpu=4G"], "unknown step 'gpu'"),
    ([EXP, "--data-root", "svhn=/d"], "unknown task 'svhn'"),
])
def test_bad_options_are_one_line_errors(argv, msg):
    with pytest.raises(TDAError, match=re.escape(msg)):
        parse_args(argv)


def test_training_args_follow_a_double_dash():
    args, opts, train = parse_args([EXP, "cnn_digits3_10pc", "--partition", "p", "--", "--device", "cpu"])
    assert (args.experiments, opts.partition, train) == ([EXP, "cnn_digits3_10pc"], "p", ("--device", "cpu"))


def test_dry_run_prints_a_runnable_sbatch_script(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    torch.save(torch.tensor([1, 2, 3, 4], dtype=torch.int64), tmp_path / "random_seeds.pt")
    assert main([EXP, "cnn_digits3_4pc", "--dry-run", "--throttle", "2", "--time", "loo=9:00:00",
                 "--slurm-args", "--qos=high --exclude='n1,n2'"]) == 0
    lines = [s for s in capsys.readouterr().out.splitlines() if not s.startswith("#")]
    cmds = {s.split("=", 1)[0]: s for s in lines}
    assert len(lines) == 1 + 2 * 8 + 1 and list(cmds)[0] == "subsets_digits3"  # + the grid's summary
    log = f"{tmp_path}/logs/{EXP}"
    assert cmds[f"loo_{EXP}"] == (
        f"loo_{EXP}=$(sbatch --parsable --job-name=loo-{EXP} --output={log}/loo_%a.out --error={log}/loo_%a.err "
        f"--array=0-3%2 --dependency=afterok:${{train_{EXP}}} --kill-on-invalid-dep=yes --time=9:00:00 "
        f"--qos=high --exclude=n1,n2 {log}/loo.sbatch)")
    assert "--dependency=afterok:${subsets_digits3} " in cmds["train_cnn_digits3_4pc"]
    deps = "".join(f"${{{m}_{EXP}}}:" for m in METHODS).rstrip(":")
    assert f"--dependency=afterok:{deps} " in cmds[f"pvalues_{EXP}"]
    assert f"--output={tmp_path}/logs/digits3/subsets.out" in cmds["subsets_digits3"]
    assert (Path(log) / "loo.sbatch").exists()
    fake = tmp_path / "bin" / "sbatch"  # run the printed script against an sbatch that numbers the jobs 1, 2, ...
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\nwc -l < {tmp_path}/calls\n')
    fake.chmod(0o755)
    subprocess.run(["bash", "-ec", "\n".join(lines)], env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"},
                   check=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 18 and "--dependency=afterok:1 " in calls[1] and "--dependency=afterok:3:4:5:6 " in calls[6]


def _launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(REPO / "run_experiment.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})}, timeout=300)


def test_bad_input_exits_2_with_one_line(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with no Slurm on it
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    for args, env, msg in [((EXP, "--launcher", "slurm", "--nosuch"), None, "unrecognized arguments: --nosuch"),
                           (("cnn_nosuch_2pc", "--launcher=slurm"), None, "unknown task 'nosuch'"),
                           ((EXP, "--launcher", "slurm"), {"PATH": str(bin_dir), "TDA_ROOT": str(tmp_path)},
                            "needs Slurm's sbatch on PATH"),
                           ((EXP, "--launcher", "pbs"), None, "unknown launcher 'pbs'"),
                           (("--launcher", "local"), None, "usage: bash run_experiment.sh")]:
        r = _launch(*args, env=env)
        assert (r.returncode, r.stdout) == (2, ""), (args, r.stderr)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_error_line_finds_what_went_wrong(tmp_path):
    job = by_key(plan([EXP], 3, tmp_path))[f"loo_{EXP}"]
    task = wait.Task(job, "5_1", 1, "FAILED")
    err = job.log(tmp_path, "err", 1)
    err.parent.mkdir(parents=True)
    assert wait.error_line(task, tmp_path) == "(its log is empty or missing)"
    err.write_text("loo:  0%|   | 0/1\rloo: 100%|###| 1/1\nerror: missing checkpoint x: run training\n")
    assert wait.error_line(task, tmp_path) == "error: missing checkpoint x: run training"
    err.write_text("Traceback (most recent call last):\n  File x\nRuntimeError: boom\nloo: 50%|# | 1/2\n")
    assert wait.error_line(task, tmp_path) == "RuntimeError: boom"
    failed = wait.Task(job, "5_1", 1, "FAILED")
    not_run = wait.Task(by_key(plan([EXP], 3, tmp_path))[f"pvalues_{EXP}"], "9", None, "CANCELLED",
                        "DependencyNeverSatisfied")
    lines = wait.report([failed, not_run, wait.Task(job, "5_0", 0, "COMPLETED")], tmp_path)
    assert lines[0] == "1 of 3 Slurm tasks failed, 1 did not run"
    assert lines[1].startswith(f"  FAILED  job 5_1: loo of {EXP}, seed_id 1: RuntimeError: boom  [")
    assert lines[2] == f"  not run (a job they depend on failed): pvalues of {EXP}"


def test_wait_polls_until_every_task_ended(tmp_path, monkeypatch):
    jobs = [j for j in plan([EXP], 2, tmp_path) if j.step in ("subsets", "train")]
    polls = iter([{"1": ("RUNNING", "None"), "2_0": ("PENDING", "Dependency"), "2_1": ("PENDING", "Dependency")},
                  None,  # a failed squeue call is retried
                  {"1": ("COMPLETED", "None"), "2_0": ("FAILED", "NonZeroExitCode"), "2_1": ("RUNNING", "None")},
                  {"2_0": ("FAILED", "NonZeroExitCode")}])  # 1 and 2_1 left the controller unseen
    monkeypatch.setattr(wait, "squeue_states", lambda ids: next(polls))
    monkeypatch.setattr(wait, "sacct_states", lambda ids: {"2_1": ("COMPLETED", "")})
    said: list[str] = []
    tasks = wait.wait_for(jobs, {"subsets_digits3": "1", f"train_{EXP}": "2"}, tmp_path, 0, said.append, lambda s: None)
    assert {t.slurm_id: t.state for t in tasks} == {"1": "COMPLETED", "2_0": "FAILED", "2_1": "COMPLETED"}
    assert any(s.endswith(f"FAILED: job 2_0: train of {EXP}, seed_id 0: (its log is empty or missing)") for s in said)


# ------------------------------------------------------------------ on a real Slurm
@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = slurm_cluster.unavailable()
    if reason:
        if os.environ.get("TDA_REQUIRE_SLURM"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def reduced_root(tmp_path_factory):
    """3 seeds, 6 training and 20 test images of digits3: a TDA_ROOT to copy for each run."""
    return make_tiny_root(tmp_path_factory.mktemp("reduced") / "root")


def _env(slurm, root: Path) -> dict:
    return dict(slurm.env, TDA_ROOT=str(root), PYTHON=sys.executable, OMP_NUM_THREADS="1", TDA_WORKERS="1")


def _copy(reduced_root: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(reduced_root, tmp_path / name))


SLURM = (EXP, "--launcher", "slurm", "--wait", "--poll", "1", "--cpus-per-task", "1")


@pytest.mark.xdist_group("slurm")  # one cluster: its tests on one worker
def test_a_refused_sbatch_takes_back_the_submission(slurm, reduced_root, tmp_path):
    root = _copy(reduced_root, tmp_path, "root")
    r = _launch(EXP, "--launcher", "slurm", "--mem", "pvalues=100000000", env=_env(slurm, root))
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.startswith(f"error: sbatch refused pvalues-{EXP}: sbatch: error: ") and len(r.stderr.splitlines()) == 1
    assert r.stderr.rstrip().endswith("; cancelled the 6 jobs submitted before it")
    left = slurm.run("squeue", "--noheader", "--format=%j %T").stdout.splitlines()
    assert not [s for s in left if s.endswith(("PENDING", "RUNNING")) and EXP in s], left


def _outputs(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for d in ("models", "tda_scores") for p in (root / d).rglob("*.pt")}


@pytest.mark.xdist_group("slurm")  # one cluster: its tests on one worker
def test_slurm_run_survives_a_scancel_and_matches_the_local_run(slurm, reduced_root, tmp_path, request):
    """Submit with --wait, scancel the first LOO task mid-run, submit again: only that task and the results
    steps run the second time, and the p-value table is byte for byte the local run's (the reference run, which
    tests/test_workers.py finds equal to run_experiment.sh's local pipeline)."""
    root = _copy(reduced_root, tmp_path, "root")
    first = subprocess.Popen([BASH, str(REPO / "run_experiment.sh"), *SLURM], env=_env(slurm, root),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.monotonic() + 600
    while killed is None and first.poll() is None and time.monotonic() < deadline:
        rows = slurm.run("squeue", "--noheader", "--array", "--format=%i %j %T").stdout.split("\n")
        killed = next((r.split()[0] for r in rows if r.endswith(f"loo-{EXP} RUNNING") and "_0 " in r), None)
        time.sleep(0.1)
    assert killed, f"the first LOO task was never seen running: {first.poll()} {first.stderr.read() if first.poll() else ''}"
    slurm.run("scancel", killed)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 1, out[-2000:] + err[-2000:]
    assert f"CANCELLED  job {killed}: loo of {EXP}, seed_id 0: slurmstepd" in err and "CANCELLED AT" in err
    assert f"not run (a job they depend on failed): correlations of {EXP}, pvalues of {EXP}, summary of {EXP}" in err
    assert f"== train of {EXP}, seed id 2: Slurm job" in (root / f"logs/{EXP}/train_2.out").read_text()
    assert "== subsets of digits3: Slurm job" in (root / "logs/digits3/subsets.out").read_text()
    loo0 = root / "tda_scores" / EXP / "loo" / "446.pt"
    before = _outputs(root)
    assert not loo0.exists() and len(before) == 15 + 2 + 3 * 4  # checkpoints, LOO of seeds 1-2, ATS, IF, GD, GC

    again = _launch(*SLURM, env=_env(slurm, root))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "all 19 Slurm tasks succeeded" in again.stdout and f"== summary of {EXP}" in again.stdout
    assert loo0.exists() and {p: t for p, t in _outputs(root).items() if p in before} == before
    local = request.getfixturevalue("tiny_reference").root  # asked for only now: built meanwhile elsewhere
    for f in ("mean_p_values.csv", "significance.csv"):
        assert (root / "results" / EXP / f).read_bytes() == (local / "results" / EXP / f).read_bytes()
