"""Provenance, claims and durable writes: a changed input recomputes exactly what depends on it; concurrent runs
share the work; a full disk or read-only directory is a one-line error that leaves nothing half-written."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, artefacts, make_tiny_root, pipeline, run_script, script
from tda import cli, io
from tda.config import parse_experiment
from tda.seeds import load_seeds

EXP = "cnn_digits3_2pc"


def run_inprocess(experiment: str) -> None:
    for name, *args in pipeline(experiment):
        script(name).main(args + (["--workers", "1"] if "--seed_id" in args else []))


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_changed_index_recomputes_exactly_what_depends_on_it(tmp_path, monkeypatch, one_thread, capsys):
    from sklearn.datasets import load_digits
    y = load_digits().target
    root = make_tiny_root(tmp_path / "a")
    monkeypatch.setenv("TDA_ROOT", str(root))
    script("run_subset_generation").main(["--task", "digits3", "--num_per_class", "3"])  # another n: untouched
    run_inprocess(EXP)
    before = mtimes(root)
    # one training image replaced by another of the same class
    txt = root / "data" / "digits3" / "train_subset_2pc.txt"
    idx = io.read_index_list(txt)
    idx[1] = next(int(i) for i in np.flatnonzero(y == y[idx[1]]) if int(i) not in idx and int(i) > idx[1])
    io.write_index_list(idx, txt)
    capsys.readouterr()
    run_inprocess(EXP)
    out = capsys.readouterr().out
    after = mtimes(root)
    changed = {k for k in before if after.get(k) != before[k]}
    assert "rebuilding train_subset_2pc.pt: index list changed" in out
    assert "retraining cnn_digits3_2pc seed 446: training subset changed" in out
    assert "recomputing loo seed 446: checkpoint changed" in out
    # the edited list itself, and the tensors drawn from it: nothing else under data/
    assert {k for k in changed if k.startswith("data/")} == {"data/digits3/train_subset_2pc.txt",
                                                             "data/digits3/train_subset_2pc.pt"}
    assert all(k in changed for k in before if k.startswith(("models/", "tda_scores/")))
    assert "results/cnn_digits3_2pc/mean_p_values.csv" in changed

    clean = make_tiny_root(tmp_path / "b")  # a clean run from the new list gives the same outputs
    io.write_index_list(idx, clean / "data" / "digits3" / "train_subset_2pc.txt")
    monkeypatch.setenv("TDA_ROOT", str(clean))
    run_inprocess(EXP)
    a = {k: v for k, v in artefacts(root).items() if "3pc" not in k}
    b = artefacts(clean)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_two_processes_share_the_seeds(tmp_path):
    root = make_tiny_root(tmp_path, seeds=(446, 724, 571, 296))
    env = {"TDA_WORKERS": "1", "OMP_NUM_THREADS": "1"}
    assert run_script("run_cnn_training.py", "--experiment", EXP, "--seed_id", "all", root=root, env=env).returncode == 0
    cmd = [sys.executable, str(REPO / "run_gd_and_gc.py"), "--experiment", EXP, "--seed_id", "all"]
    import os
    procs = [subprocess.Popen(cmd, cwd=root, env=dict(os.environ, TDA_ROOT=str(root), **env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cfg = parse_experiment(EXP, root=root)
    done = [line for out, _ in outs for line in out.splitlines() if "done in" in line]
    assert len(done) == 4  # every seed computed exactly once between the two
    for s in load_seeds(root):
        for o in ("gd", "gc"):
            assert torch.isfinite(io.load_scores(cfg, o, s)["scores"]).all()
    assert not list(root.rglob(".*.tmp*"))


def _fill(mount: Path) -> None:
    """Fill a file system until it has (almost) no room left."""
    import os
    fd = os.open(mount / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture()
def trained(tmp_path):
    root = make_tiny_root(tmp_path / "r", seeds=(446, 724))
    r = run_script("run_cnn_training.py", "--experiment", EXP, "--seed_id", "all", root=root,
                   env={"TDA_WORKERS": "1"})
    assert r.returncode == 0, r.stderr
    return root


def _one_line_error(r, *needles) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and last.startswith("error:") and all(n in last for n in needles), r.stderr


def test_full_disk_and_read_only_directory_on_real_file_systems(trained):
    scores = trained / "tda_scores"
    if not _mount_tmpfs(scores, "size=256k"):
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN); the monkeypatched test covers it")
    try:
        _fill(scores)
        r = run_script("run_gd_and_gc.py", "--experiment", EXP, "--seed_id", "all", root=trained,
                       env={"TDA_WORKERS": "1"})
        _one_line_error(r, "No space left on device", "disk is full")
        # nothing half-written (the empty claim files under .locks are not results)
        assert sorted(p.name for p in scores.rglob("*") if p.is_file() and ".locks" not in p.parts) == ["ballast"]
    finally:
        subprocess.run(["umount", str(scores)], check=True)
    assert _mount_tmpfs(scores, "ro,size=64k")
    try:
        r = run_script("run_ats.py", "--experiment", EXP, "--seed_id", "0", root=trained, env={"TDA_WORKERS": "1"})
        _one_line_error(r, "Read-only file system", str(scores))
    finally:
        subprocess.run(["umount", str(scores)], check=True)


@pytest.mark.parametrize("err,needle", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "permission denied")])
def test_os_errors_while_writing_are_one_line(trained, monkeypatch, capsys, err, needle):
    monkeypatch.setenv("TDA_ROOT", str(trained))
    real = Path.write_bytes

    def failing(self, data):
        if self.name.startswith(".") and ".tmp" in self.name:
            real(self, data[: len(data) // 2])  # half a file, then the error
            raise OSError(err, __import__("os").strerror(err))
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(SystemExit) as e:
        cli.run(script("run_gd_and_gc").main, ["--experiment", EXP, "--seed_id", "0", "--workers", "1"])
    assert e.value.code == 2
    err_text = capsys.readouterr().err.strip().splitlines()[-1]
    assert err_text.startswith("error: cannot write") and needle in err_text and "gd" in err_text
    cfg = parse_experiment(EXP)
    assert not cfg.scores_dir.exists() or not [p for p in cfg.scores_dir.rglob("*") if p.is_file()
                                               and ".locks" not in p.parts]
