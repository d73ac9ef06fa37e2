"""Provenance, claims and durable writes: a changed input recomputes exactly what depends on it; concurrent runs
share the work; a full disk or read-only directory is a one-line error that leaves nothing half-written."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import EXP, artefacts, make_tiny_root, pipeline, script, stand_in_figures
from tda import cli, io
from tda.config import parse_experiment
from tda.seeds import load_seeds


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


def test_changed_index_recomputes_exactly_what_depends_on_it(tiny_reference, tmp_path, monkeypatch, one_thread,
                                                             capsys):
    from sklearn.datasets import load_digits
    y = load_digits().target
    root = tiny_reference.copy(tmp_path / "a")  # a finished run; its 10, 20 and 50 per class subsets stay untouched
    monkeypatch.setenv("TDA_ROOT", str(root))
    stand_in_figures(monkeypatch)  # which files are recomputed is the point here, not their pixels
    before = mtimes(root)
    assert any(k.startswith("data/digits3/train_subset_10pc") for k in before)
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
    a = {k: v for k, v in artefacts(root).items() if not k.startswith(tuple(
        f"data/digits3/train_subset_{n}pc." for n in (10, 20, 50)))}
    b = artefacts(clean)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_two_processes_share_the_seeds(tiny_reference, prewarmed, tmp_path):
    """Two shells on one experiment at the same time: each computes some seeds, none is computed twice.

    The first process is frozen inside its first score write, holding its claim on that seed; the second
    starts then, computes every other seed and waits for the claimed one. So both run at the same time
    by construction, and the test checks that they did: the second finished its seeds while the first
    was alive and holding its claim. Then the first goes on, and takes the other seeds as done; the
    second keeps the first's seed. The scores equal the reference run's."""
    root = tiny_reference.copy(tmp_path / "root", ("data", "models"))  # three trained seeds, no scores
    cfg, seeds = parse_experiment(EXP, root=root), load_seeds(root)
    argv = ["run_gd_and_gc.py", "--experiment", EXP, "--seed_id", "all"]
    env = {"TDA_ROOT": str(root), "TDA_WORKERS": "1"}
    first = prewarmed.start(argv, env=env, stop_at_write=1, truncate=False)
    where = first.stopped_in_write()
    assert where is not None and Path(where["target"]) == cfg.scores_path("gd", seeds[0])
    second = prewarmed.start(argv, env=env)
    others = [cfg.scores_path(o, s) for s in seeds[1:] for o in ("gd", "gc")]
    while not all(p.exists() for p in others):  # the second computes the seeds nobody holds...
        assert second.poll() is None, second.wait().stderr[-2000:]
        time.sleep(0.01)
    assert second.poll() is None and first.poll() is None  # ...while the first is alive, holding the first seed
    os.kill(first.pid, signal.SIGCONT)
    outs = [first.wait(), second.wait()]
    assert [r.returncode for r in outs] == [0, 0], [r.stderr[-2000:] for r in outs]
    done = [[line.split(":")[0] for line in r.stdout.splitlines() if "done in" in line] for r in outs]
    assert done == [[f"seed {seeds[0]}"], [f"seed {s}" for s in seeds[1:]]]  # each computed some, none twice
    # the second found the first seed unfinished and its claim taken, waited, and kept what the first computed
    kept = [[line.split(":")[0] for line in r.stdout.splitlines() if "already done, kept" in line] for r in outs]
    assert kept == [[f"seed {s}" for s in seeds[1:]], [f"seed {seeds[0]}"]]
    ref = parse_experiment(EXP, root=tiny_reference.root)
    for s in seeds:
        for o in ("gd", "gc"):
            assert torch.equal(io.load_scores(cfg, o, s)["scores"], io.load_scores(ref, o, s)["scores"])
    assert not list(root.rglob(".*.tmp*"))


def _fill(mount: Path) -> None:
    """Fill a file system until it has (almost) no room left."""
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
def trained(tiny_reference, tmp_path):
    """The reference run's subsets and trained seeds, no scores."""
    return tiny_reference.copy(tmp_path / "r", ("data", "models"))


def _one_line_error(r, *needles) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and last.startswith("error:") and all(n in last for n in needles), r.stderr


def test_full_disk_and_read_only_directory_on_real_file_systems(trained, prewarmed):
    scores = trained / "tda_scores"
    if not _mount_tmpfs(scores, "size=256k"):
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN); the monkeypatched test covers it")
    try:
        _fill(scores)
        r = prewarmed.run(["run_gd_and_gc.py", "--experiment", EXP, "--seed_id", "all"],
                          env={"TDA_ROOT": str(trained), "TDA_WORKERS": "1"})
        _one_line_error(r, "No space left on device", "disk is full")
        # nothing half-written (the empty claim files under .locks are not results)
        assert sorted(p.name for p in scores.rglob("*") if p.is_file() and ".locks" not in p.parts) == ["ballast"]
    finally:
        subprocess.run(["umount", str(scores)], check=True)
    assert _mount_tmpfs(scores, "ro,size=64k")
    try:
        r = prewarmed.run(["run_ats.py", "--experiment", EXP, "--seed_id", "0"],
                          env={"TDA_ROOT": str(trained), "TDA_WORKERS": "1"})
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
            raise OSError(err, os.strerror(err))
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
