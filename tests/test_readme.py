"""Every command the README shows is run by a test, or listed here with the reason it is not.

The README's ```bash blocks are parsed (lines ending in a backslash joined, comments stripped): each
command must be run by a named test, which takes the command's text from the README itself (so that
breaking the command there breaks the test), or be skipped for a stated reason (a download, or the
command that runs this suite). A command added to the README without an entry here fails
`test_every_readme_command_is_run_by_a_test_or_skipped_with_a_reason`. The tests substitute only what
makes a command tiny or keeps it inside the test's directories (a TDA_ROOT with few seeds and test
images, a smaller experiment name, the tiny ViT's directory, this interpreter for `python`); each says
which. Commands the README names in its text (`run_tda.py`, the benchmark's `--quick`) are run here too.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import EXP, REPO, fake_venv, make_tiny_root, readme_commands, readme_section
from tda import io
from tda.config import parse_experiment
from tda.seeds import load_seeds

PIPELINE_TEST = "test_workers.py::test_pipeline_in_one_interpreter_equals_the_scripts_one_by_one"
CLUSTER = ("PYTHON=.venv/bin/python bash run_experiment.sh cnn_{mnist3,fmnist3,cifar10}_{10,20,50}pc --launcher slurm "
           "--partition gpu --gpus-per-task 1 --time 1:00:00 --time loo=8:00:00 --wait")

#: sections whose every command one test runs, iterating over the section as the README has it
BY_SECTION = {
    # conftest.tiny_reference runs them in order (helpers.readme_pipeline_steps); that test compares `make run` with it
    "The scripts, in order": PIPELINE_TEST,
    "Your own data, model or scores": "test_own_data.py::test_readme_commands_run_end_to_end",
}
#: single commands and the test that runs each
BY_COMMAND = {
    "make run": PIPELINE_TEST,
    "python -m tda.vit --make_tiny /tmp/tiny-vit": "test_readme.py::test_vit_commands_with_the_tiny_model",
    "TDA_VIT_MODEL=/tmp/tiny-vit bash run_experiment.sh vit_digits3_10pc":
        "test_readme.py::test_vit_commands_with_the_tiny_model",
    "python run_subset_generation.py --task mnist3": "test_readme.py::test_mnist_subsets_from_its_files",
    CLUSTER: "test_readme.py::test_cluster_command_as_a_dry_run",
    "make study ARGS=--quick": "test_readme.py::test_make_study_quick",
    "python run_summary.py": "test_readme.py::test_summary_across_experiments",
}
#: commands no test runs, and why
SKIPPED = {
    "make test": "it is the command that runs this suite",
    "bash run_experiment.sh cnn_mnist3_10pc": "needs MNIST, a download; the same pipeline runs on digits3 in "
                                              f"{PIPELINE_TEST}, and MNIST's subsets from its files in "
                                              "test_mnist_subsets_from_its_files",
    "make study": "the full study, about 45 minutes on 2 cores; every part of it runs in `make study ARGS=--quick` "
                  "(test_make_study_quick)",
}


def unaccounted(readme: Path | None = None) -> list[str]:
    """The README's commands that neither a test runs nor SKIPPED lists."""
    return [c for s, c in readme_commands(readme) if s not in BY_SECTION and c not in BY_COMMAND and c not in SKIPPED]


def test_every_readme_command_is_run_by_a_test_or_skipped_with_a_reason():
    commands = readme_commands()
    assert len(commands) >= 20
    assert unaccounted() == []
    shown = {c for _, c in commands}
    assert [c for c in [*BY_COMMAND, *SKIPPED] if c not in shown] == [], "entries for commands the README no longer has"
    assert {s for s, _ in commands} >= set(BY_SECTION)
    for target in {*BY_COMMAND.values(), *BY_SECTION.values()}:  # each named test exists and reads the README
        file, name = target.split("::")
        tree = ast.parse((REPO / "tests" / file).read_text())
        (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name] or [None]
        assert fn is not None, f"{target} does not exist"
        assert "readme" in ast.unparse(fn).lower(), f"{target} does not take its commands from the README"


def test_a_command_added_to_the_readme_needs_an_entry(tmp_path):
    text = (REPO / "README.md").read_text()
    added = "python run_loo.py --experiment cnn_digits3_10pc --seed_id 0 --protocol paired"
    copy = tmp_path / "README.md"
    copy.write_text(text.replace("```bash\nmake run", f"```bash\n{added}  # a new command\nmake run", 1))
    assert unaccounted(copy) == [added]
    continued = text.replace("```bash\nmake run", "```bash\npython run_summary.py \\\n    --experiments x\nmake run", 1)
    copy.write_text(continued)
    assert unaccounted(copy) == ["python run_summary.py --experiments x"]  # continuation lines are one command


def _env(root: Path, bin_dir: Path | None = None, **extra: str) -> dict:
    """The environment of a README command: TDA_ROOT, one thread, `python` this interpreter (no $PYTHON)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return dict(env, TDA_ROOT=str(root), OMP_NUM_THREADS="1", **extra)


def _bash(cmd: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_vit_commands_with_the_tiny_model(tmp_path):
    """The ViT section's two commands as shown, with the tiny ViT in this test's directory instead of /tmp/tiny-vit
    and vit_digits3_2pc (6 training, 20 test images, 2 seeds) instead of vit_digits3_10pc."""
    make_tiny, run = readme_section("ViT experiments")
    tiny = tmp_path / "tiny-vit"
    root = make_tiny_root(tmp_path / "root", seeds=(446, 724))
    env = _env(root, fake_venv(tmp_path / "venv") / "bin", TDA_WORKERS="1")
    _bash(make_tiny.replace("/tmp/tiny-vit", str(tiny)), env)
    assert json.loads((tiny / "config.json").read_text())["hidden_size"] == 32
    exp = "vit_digits3_2pc"
    r = _bash(run.replace("/tmp/tiny-vit", str(tiny)).replace("vit_digits3_10pc", exp), env)
    assert f"== summary of {exp}" in r.stdout
    cfg = parse_experiment(exp, root=root)
    for s in load_seeds(root):
        assert io.load_checkpoint(cfg, s, cfg.ckpt_epochs[-1])["model_name_or_path"] == str(tiny.resolve())
    assert io.load_scores(cfg, "loo", 446)["settings"]["protocol"] == "scratch"  # the ViT's default
    mean_p = pd.read_csv(cfg.results_dir / "mean_p_values.csv", index_col=0)
    assert list(mean_p.columns) == ["LOO", "ATS", "IF", "GD", "GC"] and list(mean_p.index) == [1, 2, 3, 4, 5]
    assert (cfg.results_dir / "report.md").exists()


def test_mnist_subsets_from_its_files(tmp_path, prewarmed):
    """The paper's subsets command for MNIST, offline: MNIST's IDX files (random pixels, 600 training and 1000 test
    images) where the README says they may be placed, under data/raw/MNIST/raw/ of TDA_ROOT."""
    from test_foundation import fake_mnist, write_idx
    (cmd,) = [c for c in readme_section("Reproducing the paper") if "run_subset_generation.py" in c]
    root = tmp_path / "root"
    raw = root / "data" / "raw" / "MNIST" / "raw"
    xtr, ytr, xte, yte = fake_mnist(600, 1000)
    for name, a in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                    ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)):
        write_idx(raw / name, a)
    argv = shlex.split(cmd)
    r = prewarmed.run(argv[1:], env={"TDA_ROOT": str(root)})
    assert r.returncode == 0, r.stderr[-3000:]
    d = root / "data" / "mnist3"
    test = torch.load(d / "test_subset.pt", weights_only=True)
    assert len(test["indices"]) == 900 and torch.equal(test["labels"], torch.from_numpy(yte[test["indices"]]).long())
    for n in (10, 20, 50):  # the script's default sizes, nested
        tr = torch.load(d / f"train_subset_{n}pc.pt", weights_only=True)
        assert torch.bincount(tr["labels"]).tolist() == [n] * 3
        assert torch.equal(tr["images"][:, 0], torch.from_numpy(xtr[tr["indices"].numpy()]).float() / 255)
    assert set(io.read_index_list(d / "train_subset_10pc.txt")) <= set(io.read_index_list(d / "train_subset_50pc.txt"))


def test_cluster_command_as_a_dry_run(tmp_path):
    """The cluster command as shown, with --dry-run for --wait (it prints the sbatch commands instead of submitting
    them) and this interpreter for PYTHON=.venv/bin/python; the real submission runs in tests/test_slurm.py."""
    (cmd,) = readme_section("On a cluster")
    assert cmd.endswith(" --wait") and cmd.startswith("PYTHON=.venv/bin/python ")
    python = fake_venv(tmp_path / "venv") / "bin" / "python"
    cmd = cmd.replace("PYTHON=.venv/bin/python", f"PYTHON={shlex.quote(str(python))}")
    torch.save(torch.arange(10, dtype=torch.int64), tmp_path / "random_seeds.pt")
    r = _bash(cmd.removesuffix(" --wait") + " --dry-run", _env(tmp_path))
    lines = [s for s in r.stdout.splitlines() if s and not s.startswith("#")]
    jobs = {s.split("=", 1)[0]: s for s in lines}
    exps = [f"cnn_{t}_{n}pc" for t in ("mnist3", "fmnist3", "cifar10") for n in (10, 20, 50)]
    steps = ("train", "loo", "ats", "if", "gd_gc", "pvalues", "correlations", "summary")
    assert sorted(jobs) == sorted([f"subsets_{t}" for t in ("mnist3", "fmnist3", "cifar10")]
                                  + [f"{s}_{e}" for e in exps for s in steps] + ["grid_summary"])
    for key, line in jobs.items():
        step = key.split("_cnn_")[0]
        assert "--partition=gpu " in line, line
        assert f"--time={'8:00:00' if step == 'loo' else '1:00:00'} " in line, line
        gpu = step in ("train", "loo", "ats", "if", "gd_gc")
        assert ("--gres=gpu:1 " in line) == gpu and ("--array=0-9 " in line) == gpu, line
    assert (tmp_path / "logs" / "cnn_cifar10_50pc" / "loo.sbatch").exists()


def test_make_study_quick(tmp_path):
    """`make study ARGS=--quick` as shown, on the study's test-only tiny grid (TDA_STUDY_TINY=1), with VENV set to a
    directory that installs nothing."""
    from tda.study import plan
    if not hasattr(plan, "TINY_ENV"):
        pytest.skip("TODO: needs the study's test-only tiny setting (TDA_STUDY_TINY, another change); without it "
                    "--quick takes minutes")
    (cmd,) = [c for c in readme_section("Beyond the paper: what the noise is made of") if "--quick" in c]
    root = tmp_path / "root"
    root.mkdir()
    r = subprocess.run([*shlex.split(cmd), f"VENV={os.path.relpath(fake_venv(tmp_path / 'venv'), REPO)}"], cwd=REPO,
                       env=_env(root, **{plan.TINY_ENV: "1"}), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (root / "results" / "study" / "quick" / "report.md").read_text()
    assert "## 1. What the noise is made of" in report and "What failed" not in report


def test_summary_across_experiments(tiny_reference, prewarmed, tmp_path):
    """`python run_summary.py` as shown, on the reference run's results (cnn_digits3_2pc) and a copy of them under
    another name: the table holds each experiment's mean p-values at K = 5."""
    root = tiny_reference.copy(tmp_path / "root", ("results",))
    (cmd,) = [c for c in readme_section("Beyond the paper: what the noise is made of") if "run_summary" in c]
    shutil.copytree(root / "results" / EXP, root / "results" / "cnn_digits3_2pc_copy")
    r = prewarmed.run(shlex.split(cmd)[1:], env={"TDA_ROOT": str(root)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = root / "results" / "summary"
    m = pd.read_csv(out / "mean_p_k.csv", index_col=0)
    assert list(m.columns) == [EXP, "cnn_digits3_2pc_copy"]
    want = pd.read_csv(tiny_reference.root / "results" / EXP / "mean_p_values.csv", index_col=0).loc[5]
    for method in want.index:
        assert m.loc[method, EXP] == pytest.approx(want[method], rel=1e-5) == m.loc[method, "cnn_digits3_2pc_copy"]
    assert "mean_p_vs_k.png" in (out / "report.md").read_text()


def test_run_tda_runs_any_registered_method(tiny_reference, prewarmed, tmp_path):
    """`python run_tda.py --method NAME ...` as the README's text shows it: NAME gd_gc, the rest the scripts'
    arguments; the scores equal run_gd_and_gc.py's (the reference run's)."""
    text = (REPO / "README.md").read_text()
    (shown,) = re.findall(r"`(python run_tda\.py --method NAME) \.\.\.`", text)
    root = tiny_reference.copy(tmp_path / "root", ("data", "models"))
    argv = shlex.split(shown.replace("NAME", "gd_gc"))[1:] + ["--experiment", EXP, "--seed_id", "all"]
    r = prewarmed.run(argv, env={"TDA_ROOT": str(root), "TDA_WORKERS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    cfg, ref = parse_experiment(EXP, root=root), parse_experiment(EXP, root=tiny_reference.root)
    for s in load_seeds(root):
        for o in ("gd", "gc"):
            assert torch.equal(io.load_scores(cfg, o, s)["scores"], io.load_scores(ref, o, s)["scores"])
    r = prewarmed.run(shlex.split(shown.replace("NAME", "loo"))[1:] + ["--help"], env={"TDA_ROOT": str(root)})
    assert r.returncode == 0 and "--protocol" in r.stdout  # the method's own options
    r = prewarmed.run(shlex.split(shown.replace("NAME", "nosuch"))[1:] + ["--experiment", EXP, "--seed_id", "0"],
                      env={"TDA_ROOT": str(root)})
    assert r.returncode == 2 and "invalid choice: 'nosuch'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bench_methods_quick_runs_and_its_fast_paths_equal_its_loops(prewarmed):
    """The benchmark the README names, `bench/bench_methods.py --quick`, shrunk further by its own options (6 test
    samples, one checkpoint, the loops on one LOO member and two test samples): it ends with its JSON line, and
    every method's fast path equals its plain loop on the same inputs."""
    text = (REPO / "README.md").read_text()
    assert "`bench/bench_methods.py` times each method's fast path" in text and "(`--quick` for a short run" in text
    r = prewarmed.run(["bench/bench_methods.py", "--quick", "--test_sizes", "6", "--ckpts", "1", "--loo_loop_members",
                       "1", "--if_loop_tests", "2", "--gd_loop_tests", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last) == {"loo", "ats", "if", "gd_gc", "gemm_gflops"}
    assert all(last[m]["ratio_vs_loop"] > 0 and last[m]["gflops"] > 0 for m in ("loo", "ats", "if", "gd_gc"))
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| ") and "x 6 |" in line]
    diffs = {row[0].strip(): float(row[9]) for row in rows if row[3].strip() != "-"}  # rows with a loop
    assert set(diffs) == {"GD+GC", "ATS", "IF", "LOO"}, rows
    assert all(d < 1e-4 for d in diffs.values()), diffs  # float32: fast path and loop round differently
