"""The grid in one command: several experiments locally as on Slurm, which methods run with which options on which
device, a method registered the documented way, and a model family's own training script."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import REPO, make_tiny_root
from tda import pipeline
from tda.backends.custom import register
from tda.config import TDAError, parse_experiment, user_model_entries, user_models
from tda.launch import grid
from tda.launch.__main__ import parse_args as slurm_args
from tda.launch.plan import plan

BASH = shutil.which("bash") or "/bin/bash"
E1, E2 = "cnn_digits3_2pc", "cnn_digits3_1pc"
OPTIONS = ["--loo.protocol", "scratch", "--if.solver", "cg", "--if.hessian", "gauss-newton", "--methods", "loo,if,gd"]


def _env(root: Path, **extra: str) -> dict:
    return dict(os.environ, TDA_ROOT=str(root), TDA_WORKERS="1", OMP_NUM_THREADS="1", PYTHON=sys.executable, **extra)


def _launch(*args: str, root: Path, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(cwd / "run_experiment.sh"), *args], cwd=cwd, env=_env(root), capture_output=True,
                          text=True, timeout=timeout)


def local_commands(out: str) -> list[str]:
    """The command of every step the local pipeline printed ('== NAME: python COMMAND')."""
    return [m[1] for m in re.finditer(r"^== [^:\n]+: python (.*)$", out, flags=re.M)]


def slurm_commands(out: str) -> list[str]:
    """The command of every job a dry run printed ('# STEP of LABEL: python COMMAND'), a task's seed id as 'all'."""
    return [m[1].replace("$SLURM_ARRAY_TASK_ID", "all") for m in re.finditer(r"^# \S+ of \S+: python (.*)$", out,
                                                                             flags=re.M)]


def recorded(root: Path, experiment: str, output: str, seed: int) -> dict:
    return torch.load(parse_experiment(experiment, root).scores_path(output, seed), weights_only=True)


def test_the_grid_runs_locally_and_slurm_submits_the_same_steps_with_the_same_options(tmp_path):
    """Two experiments, three methods of four, LOO and IF with options: run here, then planned for Slurm."""
    root = make_tiny_root(tmp_path / "root", seeds=(446, 724), test_stride=100)  # 3 test images
    r = _launch(E1, E2, *OPTIONS, root=root)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = local_commands(r.stdout)
    for e in (E1, E2):
        assert f"run_loo.py --experiment {e} --seed_id all --protocol scratch" in ran
        assert f"run_if.py --experiment {e} --seed_id all --solver cg --hessian gauss-newton" in ran
        assert f"run_gd_and_gc.py --experiment {e} --seed_id all" in ran
        assert not any("run_ats.py" in c for c in ran)
        assert f"run_pvalues.py --experiment {e} --methods loo if gd gc" in ran
        for seed in (446, 724):  # the options reached the scores: their provenance records them
            assert recorded(root, e, "loo", seed)["provenance"]["settings"] == {"protocol": "scratch"}
            settings = recorded(root, e, "if", seed)["provenance"]["settings"]
            assert (settings["solver"], settings["hessian"]) == ("cg", "gauss-newton")
            assert recorded(root, e, "gd", seed)["scores"].shape == (5, 3 * int(e[-3]), 3)
        assert not (root / "tda_scores" / e / "ats").exists()
        assert list(pd.read_csv(root / "results" / e / "mean_p_values.csv", index_col=0).columns) == [
            "LOO", "IF", "GD", "GC"]
    assert ran[0] == "run_subset_generation.py --task digits3 --num_per_class 1 2"  # one subsets step per task
    assert ran[-1] == f"run_summary.py --experiments {E1} {E2}"  # one summary at the end
    assert set(pd.read_csv(root / "results" / "summary" / "mean_p_k.csv", index_col=0).columns) == {E1, E2}
    assert "   LOO: protocol=scratch" in r.stdout and "   IF: solver=cg, hessian=gauss-newton" in r.stdout

    dry = _launch(E1, E2, *OPTIONS, "--launcher", "slurm", "--dry-run", root=root)
    assert dry.returncode == 0, dry.stderr
    assert slurm_commands(dry.stdout) == ran

    # another protocol replaces the scores with a line that says so, and the report names the protocol
    again = _launch(E1, "--methods", "loo", root=root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recomputing loo seed 446: settings changed (protocol 'scratch' -> 'paper')" in again.stdout
    assert recorded(root, E1, "loo", 446)["provenance"]["settings"] == {"protocol": "paper"}
    assert "protocol=paper" in (root / "results" / E1 / "report.md").read_text()


@pytest.mark.parametrize("extra,msg", [
    (["--loo.nosuch", "1"], "--loo.nosuch: loo has no option 'nosuch'; its options: protocol, chunk"),
    (["--nosuch.protocol", "scratch"], "--nosuch.protocol: unknown TDA method 'nosuch'"),
    (["--loo.protocol", "sideways"], "--loo.protocol sideways: invalid choice: 'sideways'"),
    (["--if.tol", "2"], "--if.tol 2: must be > 0 and <= 1, got 2"),
    (["--if.max_iter", "many"], "--if.max_iter many: expected an integer, got 'many'"),
    (["--ats.chunk", "4", "--methods", "loo"], "--ats.chunk: ats does not run (--methods loo)"),
    (["--methods", "loo,trak"], "--methods: unknown TDA method 'trak'"),
    (["--loo.protocol"], "--loo.protocol needs a value"),
])
def test_bad_method_options_are_one_line_errors_before_anything_runs(tmp_path, monkeypatch, extra, msg):
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    for parse in (lambda a: pipeline.main(a), slurm_args):  # the same check on both launchers
        with pytest.raises(TDAError, match=re.escape(msg)):
            parse([E1, E2, *extra])
    assert list(tmp_path.iterdir()) == []  # nothing ran
    r = _launch(E1, *extra, root=tmp_path)
    assert (r.returncode, r.stdout) == (2, "") and r.stderr.startswith(f"error: {msg}"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_methods_by_registry_or_output_name_in_pipeline_order():
    assert grid.select_methods("gd") == ("gd_gc",)
    assert grid.select_methods("gc, if,loo,gd_gc") == ("loo", "if", "gd_gc")
    choice = grid.choice_from(pipeline.build_parser().parse_args([E1, "--methods", "if,gd", "--device", "cpu"]),
                              [("if", "solver", "cg"), ("gc", "chunk", "8")])
    assert choice.outputs == ["if", "gd", "gc"]
    assert choice.method_args("if") == ("--device", "cpu", "--solver", "cg")
    assert choice.method_args("gd_gc") == ("--device", "cpu", "--chunk", "8")


def test_device_and_training_arguments_reach_their_steps_on_both_launchers(tmp_path, monkeypatch):
    """--device goes to training and every method; `-- ARGS` (and, locally, an option the pipeline does not know) to
    training only."""
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    local = pipeline.parse_args([E1, "--model_name_or_path", "/m", "--device", "cpu", "--", "--workers", "1"])
    args, _, train = slurm_args([E1, "--device", "cpu", "--", "--model_name_or_path", "/m", "--workers", "1"])
    assert local[2] == ["--model_name_or_path", "/m", "--workers", "1"] and list(train) == local[2]
    for choice in (local[1], args.choice):
        jobs = {j.step: j for j in plan([E1], 2, tmp_path, tuple(local[2]), choice=choice)}
        assert jobs["train"].argv[-6:] == ("--device", "cpu", "--model_name_or_path", "/m", "--workers", "1")
        for m in ("loo", "ats", "if", "gd_gc"):
            assert jobs[m].argv[-2:] == ("--device", "cpu") and "/m" not in jobs[m].argv
    with pytest.raises(SystemExit):  # Slurm refuses what it does not know; `--` is the way there
        slurm_args([E1, "--model_name_or_path", "/m"])


# ---------------------------------------------------------------- a method of your own under `make run`
EXTENDING = REPO / "docs" / "extending.md"


def repo_copy(dest: Path) -> Path:
    """The repository's code (no .venv, no outputs) in `dest`, with a .venv that `make` takes as installed."""
    shutil.copytree(REPO / "tda", dest / "tda", ignore=shutil.ignore_patterns("__pycache__"))
    for f in [*REPO.glob("run_*.py"), REPO / "run_experiment.sh", REPO / "Makefile", REPO / "req.txt",
              REPO / "random_seeds.pt"]:
        shutil.copy(f, dest)
    python = dest / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (dest / ".venv" / ".installed").touch()
    return dest


def test_a_method_added_as_docs_show_runs_under_make_run_and_appears_in_the_results(tmp_path):
    code = re.findall(r"^```python\n(# tda/methods/last_layer_gd\.py\n.*?)^```", EXTENDING.read_text(),
                      flags=re.S | re.M)
    line = re.findall(r"^from \. import loo, ats, influence, grad_sim, last_layer_gd.*$", EXTENDING.read_text(),
                      flags=re.M)
    assert len(code) == 1 and len(line) == 1
    repo = repo_copy(tmp_path / "repo")
    (repo / "tda" / "methods" / "last_layer_gd.py").write_text(code[0])  # the one new file
    init = repo / "tda" / "methods" / "__init__.py"  # and the one registry line
    init.write_text(re.sub(r"^from \. import loo, ats, influence, grad_sim .*$", line[0], init.read_text(), count=1,
                           flags=re.M))
    root = make_tiny_root(tmp_path / "root", seeds=(446, 724), test_stride=60)
    env = _env(root, TDA_KERNEL_CACHE=str(tmp_path / "kernels"))
    r = subprocess.run(["make", "run", f"EXPERIMENT={E1}", "ARGS=--methods gd_last,gd"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"== GD-last: python run_tda.py --method gd_last --experiment {E1} --seed_id all" in r.stdout
    saved = recorded(root, E1, "gd_last", 724)
    assert saved["scores"].shape == (5, 6, 5) and saved["settings"]["prefix"] == "fc2."
    table = pd.read_csv(root / "results" / E1 / "mean_p_values.csv", index_col=0)
    assert list(table.columns) == ["GD", "GC", "GD-last"] and table.notna().all().all()
    assert "GD-last" in (root / "results" / E1 / "report.md").read_text()
    # by default every registered method runs, on both launchers: the new one too
    dry = subprocess.run([BASH, "run_experiment.sh", E1, "--launcher", "slurm", "--dry-run"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert f"run_tda.py --method gd_last --experiment {E1} --seed_id all" in slurm_commands(dry.stdout)


# ---------------------------------------------------------------- a model family's own training script
MODELS_PY = '''import torch.nn as nn


def make_mlp(in_channels, image_size, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16), nn.GELU(),
                         nn.Linear(16, num_classes))
'''
TRAIN_PY = '''"""A training script of one's own: the library's loop, and a line that shows it ran."""
from tda import cli, training


def main(argv=None):
    p = cli.parser(__doc__)
    cli.add_experiment_args(p)
    args = p.parse_args(argv)
    cfg, seeds = cli.experiment_and_seeds(args)
    print(f"my_train.py trains {cfg.name} on {args.device}")
    training.train_seeds(cfg, seeds, cli.resolve_device(args.device), args.overwrite, workers=1, progress=False)


if __name__ == "__main__":
    cli.run(main)
'''


def test_a_model_family_trains_with_the_script_models_json_names_on_both_launchers(tmp_path, monkeypatch, capsys):
    root = make_tiny_root(tmp_path / "root", seeds=(446, 724), test_stride=60)
    monkeypatch.setenv("TDA_ROOT", str(root))
    monkeypatch.setenv("TDA_WORKERS", "1")
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    (root / "mymodels.py").write_text(MODELS_PY)
    (root / "my_train.py").write_text(TRAIN_PY)
    register("plainmlp", "mymodels:make_mlp", root)  # the plain form stays as it was
    with pytest.raises(TDAError, match="--train_script nosuch.py: no such file"):
        register("mymlp", "mymodels:make_mlp", root, train_script="nosuch.py")
    register("mymlp", "mymodels:make_mlp", root, train_script="my_train.py")
    assert json.loads((root / "models.json").read_text()) == {
        "mymlp": {"factory": "mymodels:make_mlp", "train_script": "my_train.py"}, "plainmlp": "mymodels:make_mlp"}
    assert user_models(root) == {"mymlp": "mymodels:make_mlp", "plainmlp": "mymodels:make_mlp"}
    assert parse_experiment("plainmlp_digits3_2pc").train_script == "run_cnn_training.py"
    assert parse_experiment("vit_digits3_2pc").train_script == "run_vit_finetuning.py"
    exp = "mymlp_digits3_2pc"
    own = str(root.resolve() / "my_train.py")
    assert parse_experiment(exp).train_script == own
    assert plan([exp], 2, root)[1].argv[:3] == (own, "--experiment", exp)  # what Slurm's job runs

    pipeline.main([exp, "--methods", "gd", "--device", "cpu"])
    out = capsys.readouterr().out
    assert f"== training: python {own} --experiment {exp} --seed_id all --device cpu" in out
    assert f"my_train.py trains {exp} on cpu" in out
    assert recorded(root, exp, "gd", 446)["settings"]["device"] == "cpu"
    assert (root / "results" / exp / "mean_p_values.csv").exists()

    (root / "models.json").write_text(json.dumps({"bad": {"factory": "mymodels:make_mlp", "epochs": 3}}))
    with pytest.raises(TDAError, match="bad entry 'bad'"):
        user_model_entries(root)
    (root / "models.json").write_text(json.dumps({"gone": {"factory": "mymodels:make_mlp", "train_script": "x.py"}}))
    with pytest.raises(TDAError, match=r"no entry script .*x\.py"):
        pipeline.main(["gone_digits3_2pc"])
    assert not (root / "models" / "gone").exists()
