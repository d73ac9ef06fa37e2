"""Trust: a code change recomputes exactly what ran that code; only the user's own compiled kernels are loaded; the
kernels compute exactly the paper's CNN classes; one seed's crash costs only that seed; every numeric option is
checked where it is parsed."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import REPO, autograd_grads, close, make_tiny_root
from tda import codehash
from tda.config import TDAError
from tda.dispatch import kernel_spec, train_ensemble
from tda.engine.ensemble import removal_weights
from tda.engine.functional import split_params
from tda.kernels import native
from tda.kernels.native import KernelArgumentError
from tda.methods import REGISTRY
from tda.methods.grad_sim import grad_dot_and_cos
from tda.methods.influence import conjugate_gradient, lissa_scores
from tda.methods.loo import loo_continue
from tda.models import CNN
from tda.workers import run_jobs

DT = torch.float64
EXP = "cnn_digits3_2pc"


# ---------------------------------------------------------------- code in the provenance
def test_code_digest_counts_code_not_comments_or_docstrings():
    base = 'def f(x):\n    """Add one."""\n    return x + 1\n'
    assert codehash.source_digest(base) == codehash.source_digest(
        '# a comment\ndef f(x):  # another\n    """Add one, documented at length."""\n\n    return x + 1\n')
    assert codehash.source_digest(base) != codehash.source_digest(base.replace("x + 1", "x + 2"))
    c = "int f(int x) { return x + 1; } /* comment */"
    assert codehash.c_digest(c) == codehash.c_digest("// note\nint f(int x) {\n  return x + 1;  /* other */\n}")
    assert codehash.c_digest(c) != codehash.c_digest(c.replace("+ 1", "+ 2"))
    mods = codehash.code_digests(["tda.methods.influence"])
    assert {"tda/methods/influence.py", "tda/methods/base.py", "tda/dispatch.py", "tda/kernels/hvp.py"} <= set(mods)
    assert "tda/methods/loo.py" not in mods and "tda/training.py" not in mods  # only what IF runs


def _pipeline(repo: Path, root: Path) -> str:
    env = dict(os.environ, TDA_ROOT=str(root), TDA_WORKERS="1", OMP_NUM_THREADS="1",
               TDA_KERNEL_CACHE=str(root.parent / "kernels"))
    r = subprocess.run([sys.executable, "-m", "tda.pipeline", EXP], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.pt") if "tda_scores" in p.parts
            or "models" in p.parts}


def test_a_code_edit_recomputes_what_ran_it_and_a_comment_edit_nothing(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "tda", repo / "tda", ignore=shutil.ignore_patterns("__pycache__"))
    for f in REPO.glob("run_*.py"):
        shutil.copy(f, repo)
    root = make_tiny_root(tmp_path / "root", seeds=(446, 724), test_stride=30)
    _pipeline(repo, root)
    before = _stamps(root)
    influence = repo / "tda" / "methods" / "influence.py"
    text = influence.read_text()
    influence.write_text(text.replace('"""Influence functions', '"""Reworded: influence functions', 1)
                         + "\n# a comment only\n")
    c_file = repo / "tda" / "kernels" / "csrc" / "gelu_pool.c"
    c_text = c_file.read_text()
    c_file.write_text(c_text + "\n/* a comment only */\n")
    out = _pipeline(repo, root)
    assert "recomputing" not in out and "retraining" not in out and _stamps(root) == before

    influence.write_text(text + "\nEDITED = True\n")  # one line of code
    out = _pipeline(repo, root)
    after = _stamps(root)
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {k for k in before if k.startswith("tda_scores/cnn_digits3_2pc/if/")} and len(changed) == 2
    assert "recomputing if seed 446: code changed (tda/methods/influence.py)" in out

    c_file.write_text(c_text + "\nint tda_edited_marker(void) { return 1; }\n")
    out = _pipeline(repo, root)
    changed = {k for k in after if _stamps(root)[k] != after[k]}
    assert changed == {k for k in after if k.startswith("tda_scores/")}  # every method ran the C kernels; not training
    assert "code changed (tda/kernels/csrc/gelu_pool.c)" in out


# ---------------------------------------------------------------- no foreign code
_LOAD = ("import warnings; warnings.simplefilter('always'); from tda.kernels import native; lib = native.library(); "
         "import torch; z = torch.randn(4, 16); p = torch.empty(1, 16); i = torch.empty(1, 16, dtype=torch.int32); "
         "native.gelu_pool(z, 1, 1, 1, p, i); print(lib._name)")


def _load_in_a_fresh_process(cache: Path, **env: str) -> tuple[str, str]:
    """(the loaded library's path, stderr) of a new process that loads the kernels and runs one."""
    r = subprocess.run([sys.executable, "-c", _LOAD], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TDA_KERNEL_CACHE": str(cache), "TDA_C_KERNELS": "1",
                            "TDA_REQUIRE_C_KERNELS": "1", **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1], r.stderr


def _replace(path: Path, data: bytes) -> None:
    """New content in a new file at `path` (never rewrite a library in place: a process may have it mapped)."""
    path.unlink()
    path.write_bytes(data)


@pytest.fixture()
def cache(tmp_path) -> Path:
    if native.build.compiler() is None:
        pytest.skip("no C compiler")
    return tmp_path / "cache"


def test_a_planted_library_in_a_foreign_or_writable_cache_is_not_loaded(cache):
    name, _ = _load_in_a_fresh_process(cache)
    built = Path(name)
    assert built.parent == cache and oct(cache.stat().st_mode & 0o777) == oct(0o700)
    planted = built.read_bytes()
    for how in ("world-writable directory", "foreign directory"):
        if how == "world-writable directory":
            cache.chmod(0o777)
        else:
            cache.chmod(0o700)
            os.chown(cache, 65534, 65534)
        name, err = _load_in_a_fresh_process(cache)
        assert "not using the kernel cache" in err and not Path(name).is_relative_to(cache), (how, err)
        os.chown(cache, os.geteuid(), os.getegid())
    cache.chmod(0o700)
    for how in ("foreign file", "group-writable file"):
        _replace(built, planted)
        if how == "foreign file":
            os.chown(built, 65534, 65534)
        else:
            built.chmod(0o770)
        name, _ = _load_in_a_fresh_process(cache)
        assert Path(name) == built and built.stat().st_uid == os.geteuid()  # rebuilt, ours, before loading
        assert built.stat().st_mode & 0o022 == 0


def test_a_truncated_library_is_rebuilt_and_killed_compiles_are_swept(cache):
    name, _ = _load_in_a_fresh_process(cache)
    built = Path(name)
    _replace(built, built.read_bytes()[:1000])
    leftover = cache / ".gelu_pool-999999-abc.tmp.so"  # a compile whose process is gone
    leftover.write_bytes(b"partial")
    name, err = _load_in_a_fresh_process(cache)  # TDA_REQUIRE_C_KERNELS: a fallback would fail
    assert Path(name) == built and built.stat().st_size > 1000 and not leftover.exists()
    gcc = shutil.which("gcc") or shutil.which("cc")
    name, _ = _load_in_a_fresh_process(cache / "launcher", CC=f"env {gcc}")  # a launcher before the compiler
    assert Path(name).parent == cache / "launcher"


def test_arguments_the_c_kernels_cannot_take_are_real_errors():
    if native.library() is None:
        pytest.skip("no C compiler")
    # 16 channels: a multiple of the vectors' lanes (8, or 16 with AVX-512)
    z, pooled, idx = torch.randn(4, 16), torch.empty(1, 16), torch.empty(1, 16, dtype=torch.int32)
    native.gelu_pool(z, 1, 1, 1, pooled, idx)
    bad = {"index dtype": dict(idx=idx.long()), "buffer size": dict(pooled=torch.empty(2, 16)),
           "dtype": dict(z=z.double()), "contiguity": dict(z=torch.randn(16, 4).t()),
           "channels": dict(z=torch.randn(4, 6), pooled=torch.empty(1, 6), idx=torch.empty(1, 6, dtype=torch.int32))}
    for what, kw in bad.items():
        args = {"z": z, "pooled": pooled, "idx": idx, **kw}
        with pytest.raises(KernelArgumentError):
            native.gelu_pool(args["z"], 1, 1, 1, args["pooled"], args["idx"])
    x, w, b = torch.randn(1, 6, 6, 16), torch.randn(9 * 16, 16), torch.randn(16)
    with pytest.raises(KernelArgumentError, match="does not fit"):  # a 3 x 3 pooled grid needs 8 x 8 inputs
        native.conv_direct_gelu_pool(x, w, b, 3, 3, 3, torch.empty(1, 3, 3, 16))
    source = (REPO / "tda" / "kernels" / "native.py").read_text()
    assert "assert " not in source  # `python -O` would drop the checks


# ---------------------------------------------------------------- the right path for the right model
class ReLUCNN(CNN):
    """The paper's CNN with ReLU instead of GELU: a subclass that changes forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def test_a_subclass_of_the_cnn_gets_autograd_scores_on_the_cpu():
    torch.manual_seed(0)
    model = ReLUCNN(1).to(DT).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(5, 1, 28, 28, generator=g, dtype=DT), torch.randint(0, 10, (5,), generator=g)
    xt, yt = torch.rand(4, 1, 28, 28, generator=g, dtype=DT), torch.randint(0, 10, (4,), generator=g)
    params, frozen = split_params(model)
    assert kernel_spec(model, params, frozen, x) is None
    assert kernel_spec(CNN(1).to(DT), *split_params(CNN(1).to(DT)), x) is not None
    gd, gc = grad_dot_and_cos(model, params, frozen, x, y, xt, yt)
    ga, gb = autograd_grads(model, x, y), autograd_grads(model, xt, yt)
    close(gd, ga @ gb.T, 1e-10)
    close(gc, (ga @ gb.T) / (ga.norm(dim=1)[:, None] * gb.norm(dim=1)[None]), 1e-10)


def test_the_kernel_ensemble_honours_train_mode_and_loo_baselines_share_the_members_path():
    torch.manual_seed(0)
    model = CNN(1).to(DT).eval()
    params, frozen = split_params(model)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(6, 1, 28, 28, generator=g, dtype=DT), torch.randint(0, 3, (6,), generator=g)
    batches, w = [[torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])]], removal_weights(6, False, dtype=DT)
    fast = train_ensemble(model, params, frozen, x, y, batches, w, 1e-2, 5e-3, train_mode=True, vectorize=False)[0]
    ref = train_ensemble(model, params, frozen, x, y, batches, w, 1e-2, 5e-3, train_mode=True, vectorize=True)[0]
    for n in params:
        close(fast[n], ref[n], 1e-10)
    assert not model.training  # the ensemble leaves the model as it found it
    # with a zero learning rate every LOO member stays at theta: tau is exactly 0 when the baseline takes their path
    m32 = CNN(1).eval()
    p32, f32 = split_params(m32)
    tau = loo_continue(m32, p32, f32, x.float(), y, x.float(), y, batches, 0.0, 0.0)
    assert torch.equal(tau, torch.zeros_like(tau))


# ---------------------------------------------------------------- one seed's crash is one seed's
def _job(k: int, crash: int, out: str) -> int:
    """Write this job's file; job `crash` kills its own process instead (as the OOM killer would)."""
    if k == crash:
        os.kill(os.getpid(), signal.SIGKILL)
    from tda import io
    io.atomic_write_text(f"job {k}\n", Path(out) / f"{k}.txt")
    return k


def _raising_job(k: int, crash: int, out: str) -> int:
    if k == crash:
        raise RuntimeError("CUDA out of memory. Tried to allocate 5.00 GiB")
    if k == crash + 1:
        raise ValueError("a bug in one seed")
    return _job(k, -1, out)


def _share() -> int:
    from tda.engine.memory import device_share
    return device_share()


def test_a_killed_worker_fails_only_its_seed(tmp_path):
    jobs = [(f"seed {k}", (k, 3, str(tmp_path))) for k in range(10)]
    out = run_jobs(_job, jobs, 2, torch.device("cpu"), "test", progress=False)
    assert [o.error is None for o in out] == [k != 3 for k in range(10)]
    assert "worker process died" in out[3].error and out[3].label == "seed 3"
    assert [o.value for o in out if o.error is None] == [k for k in range(10) if k != 3]
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == sorted(f"{k}.txt" for k in range(10) if k != 3)
    assert all((tmp_path / f"{k}.txt").read_text() == f"job {k}\n" for k in range(10) if k != 3)
    assert [o.value for o in run_jobs(_share, [("a", ()), ("b", ())], 2, torch.device("cpu"), "t", False)] == [2, 2]


def test_in_one_process_an_unexpected_error_or_oom_fails_only_its_seed(tmp_path):
    jobs = [(f"seed {k}", (k, 2, str(tmp_path))) for k in range(6)]
    out = run_jobs(_raising_job, jobs, 1, torch.device("cpu"), "test", progress=False)
    assert [o.error is None for o in out] == [True, True, False, False, True, True]
    assert "--chunk" in out[2].error and "out of memory" in out[2].error
    assert out[3].unexpected and "ValueError: a bug in one seed" in out[3].error


# ---------------------------------------------------------------- options checked where they are parsed
def _ranged_options():
    """(method class, option, values outside its range): just below, just above, and NaN for float options."""
    for cls in REGISTRY.values():
        for f in __import__("dataclasses").fields(cls):
            rng, kind = f.metadata.get("range"), f.metadata.get("type")
            if rng is None:
                continue
            below = rng.ge - 1 if rng.ge is not None else rng.gt
            values = [below] + ([rng.le + 1] if rng.le is not None else []) + ([float("nan")] if kind is float else [])
            yield cls, f.name, [kind(v) if v == v else v for v in values]


def test_every_ranged_method_option_refuses_out_of_range_values(capsys):
    from tda.attribution import parser_for
    seen = 0
    for cls, name, values in _ranged_options():
        for value in values:
            with pytest.raises(SystemExit) as e:
                parser_for(cls, "x").parse_args(["--experiment", "e", "--seed_id", "0", f"--{name}", str(value)])
            err = capsys.readouterr().err.strip()
            assert e.value.code == 2 and len(err.splitlines()) == 1 and f"--{name}" in err and "must be" in err
            with pytest.raises(TDAError, match=name):
                cls(**{name: value})
            seen += 1
    assert seen >= 15  # chunks of LOO, ATS, GD/GC, IF; IF's damping, tol, max_iter, damp, scale, depth


@pytest.mark.parametrize("argv", [
    ["run_subset_generation", "--task", "digits3", "--num_per_class", "0"],
    ["run_subset_generation", "--task", "digits3", "--test_per_class", "-1"],
    ["run_gd_and_gc", "--experiment", EXP, "--seed_id", "all", "--workers", "0"],
    ["run_study", "--seeds", "1"],
    ["run_study", "--test_size", "0"],
    ["tda.launch", EXP, "--poll", "0"],
    ["tda.launch", EXP, "--throttle", "0"],
])
def test_script_flags_refuse_out_of_range_values_in_one_line(argv, capsys):
    from helpers import script
    if argv[0].startswith("tda."):
        from tda.launch.__main__ import main
    else:
        main = script(argv[0]).main
    with pytest.raises(SystemExit) as e:
        main(argv[1:])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "must be" in err, err


# ---------------------------------------------------------------- solvers that cannot converge stop
def test_cg_stops_at_negative_curvature_instead_of_spending_its_budget():
    a = torch.diag(torch.tensor([3.0, 1.0, -0.5], dtype=DT))
    b = torch.ones(2, 3, dtype=DT)
    x, info = conjugate_gradient(lambda v: v @ a, b, tol=1e-12, max_iter=500)
    assert info["negative_curvature"] == 2 and info["iterations"] <= 3 and not info["converged"]
    spd = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=DT))
    x, info = conjugate_gradient(lambda v: v @ spd, b, tol=1e-12, max_iter=500)
    assert info["converged"] and info["negative_curvature"] == 0
    close(x, b @ torch.linalg.inv(spd))


def test_lissa_that_diverges_stops_with_one_line():
    torch.manual_seed(0)
    model = CNN(1).to(DT).eval()
    params, frozen = split_params(model)
    x, y = torch.rand(8, 1, 28, 28, dtype=DT), torch.randint(0, 3, (8,))
    with pytest.raises(TDAError, match="LiSSA diverges.*raise --scale"):
        lissa_scores(model, params, frozen, x, y, x[:2], y[:2], 0.0, 1e-4, depth=40)
