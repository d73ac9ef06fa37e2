"""`--estimate`: the cost of every step from calibrated rates, on both launchers, running no step.

The calibration is stubbed with known rates (one building block at a time), so each step's estimate can be held to
the work counted independently here: N members x E epochs x N samples for LOO, R = min(N, M) vectors through one
pass over the N training samples for LiSSA, seeds in rounds of the workers. One test runs the real calibration.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tda.estimate as estimate
from helpers import REPO
from tda import pipeline
from tda.config import parse_experiment
from tda.estimate.rates import Rates, calibrated

ZERO = Rates(device="cpu", device_name="test CPU", train=0.0, step=0.0, eval=0.0, grad=0.0, hvp=0.0, dot=0.0,
             vdot=0.0, vector=0.0, io=0.0, pair=0.0, figure=0.0, startup=0.0, base_bytes=0, n_params=225034,
             calibration_s=0.0)
TOTAL = re.compile(r"^estimated total: (\d+) s$")


@pytest.fixture()
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TDA_ROOT", str(tmp_path))
    monkeypatch.setenv("TDA_WORKERS", "2")
    torch.save(torch.arange(10), tmp_path / "random_seeds.pt")
    return tmp_path


def _stub(monkeypatch, **rates: float) -> list:
    calls = []

    def fake(cfg, n, m, vectors, device, log=print):
        calls.append((cfg.name, n, m, vectors, device.type))
        return dataclasses.replace(ZERO, **rates), False

    monkeypatch.setattr(estimate, "calibrated", fake)
    return calls


def _run(argv: list[str], capsys) -> tuple[list[str], float]:
    pipeline.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    match = TOTAL.match(lines[-1])
    assert match, lines[-1]
    return lines, float(match[1])


def _row(lines: list[str], step: str) -> list[float]:
    """A step's figures: one seed's seconds, its peak memory (GB), the local wall seconds."""
    row = next(ln for ln in lines if ln.split()[:1] == [step])
    return [float(v.replace(",", "")) for v in re.findall(r"([\d,.]+) (?:s|GB)", row)]


def test_the_estimate_lists_every_step_and_its_total_is_their_sum(root, monkeypatch, capsys):
    calls = _stub(monkeypatch, step=1e-5, eval=1e-5, figure=0.5)
    lines, total = _run(["cnn_digits3_10pc", "--estimate"], capsys)
    assert [s for s in ("subsets", "train", "loo", "ats", "if", "gd_gc", "pvalues", "correlations", "summary")
            if any(ln.split()[:1] == [s] for ln in lines)] == ["subsets", "train", "loo", "ats", "if", "gd_gc",
                                                               "pvalues", "correlations", "summary"]
    assert calls == [("cnn_digits3_10pc", 30, 300, 30, "cpu")]  # calibrated once, at N x M, R = min(N, M, 64)
    n, m, e, c = 30, 300, 15, 5
    loo_seed = c * (n * e * n * 1e-5 + (n + 1) * m * 1e-5)  # N members x E epochs x N samples, then N + 1 forwards
    ats_seed = c * (n + 1) * m * 1e-5
    train_seed = c * m * 1e-5  # the test accuracy at each checkpoint
    local = 5 * (loo_seed + ats_seed + train_seed)  # 10 seeds on 2 workers: 5 rounds
    figures = 5 * 0.5 + 3 * 0.5 + 0.5  # a histogram per output (LOO, ATS, IF, GD, GC), three heatmaps, the report
    assert total == pytest.approx(round(estimate.SUBSETS_S + local + figures), abs=1)
    seed_s, _, local_s = _row(lines, "loo")
    assert seed_s == pytest.approx(loo_seed, abs=0.06) and local_s == pytest.approx(5 * loo_seed, abs=0.06)
    assert any(ln.startswith("--time ") and "loo=0:05:00" in ln for ln in lines)


def test_the_estimate_scales_with_n_m_seeds_and_workers(root, monkeypatch, capsys):
    _stub(monkeypatch, step=1e-5)
    _, base = _run(["cnn_digits3_10pc", "--estimate", "--methods", "loo"], capsys)
    loo = base - estimate.SUBSETS_S
    _, doubled = _run(["cnn_digits3_20pc", "--estimate", "--methods", "loo"], capsys)
    assert doubled - estimate.SUBSETS_S == pytest.approx(4 * loo, abs=2)  # LOO ~ N^2, M does not enter
    monkeypatch.setenv("TDA_WORKERS", "1")
    _, one = _run(["cnn_digits3_10pc", "--estimate", "--methods", "loo"], capsys)
    assert one - estimate.SUBSETS_S == pytest.approx(2 * loo, abs=2)  # 10 rounds instead of 5
    torch.save(torch.arange(4), root / "random_seeds.pt")
    _, four = _run(["cnn_digits3_10pc", "--estimate", "--methods", "loo"], capsys)
    assert four - estimate.SUBSETS_S == pytest.approx(4 / 10 * 2 * loo, abs=2)  # 4 seeds, one worker
    _stub(monkeypatch, hvp=1e-3)
    lines, _ = _run(["cnn_digits3_10pc", "--estimate", "--methods", "if"], capsys)
    # LiSSA: R = min(N, M) = 30 vectors through one pass over the N = 30 training samples, per checkpoint
    assert _row(lines, "if")[0] == pytest.approx(5 * 30 * 30 * 1e-3, rel=1e-3)
    lines, _ = _run(["cnn_digits3_10pc", "--estimate", "--methods", "if", "--if.depth", "8"], capsys)
    assert _row(lines, "if")[0] == pytest.approx(5 * 30 * (8 + 8 + 8 + 6 + 8 + 8 + 8 + 6) * 1e-3, rel=1e-3)


def test_the_estimate_runs_no_step_on_either_launcher(root, monkeypatch, capsys):
    _stub(monkeypatch, step=1e-5)
    monkeypatch.setattr(pipeline, "run_step", lambda argv: pytest.fail(f"a step ran: {argv}"))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    _run(["cnn_digits3_10pc", "cnn_digits3_20pc", "--estimate"], capsys)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    from tda.launch.__main__ import main as slurm
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch: nothing could be submitted
    assert slurm(["cnn_digits3_10pc", "--launcher", "slurm", "--estimate"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert TOTAL.match(out[-1]) and sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_the_real_calibration_measures_every_rate_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_KERNEL_CACHE", str(tmp_path / "cache"))
    cfg = parse_experiment("cnn_digits3_1pc", tmp_path)
    rates, cached = calibrated(cfg, 3, 12, 3, torch.device("cpu"), log=lambda s: None)
    assert not cached and rates.device == "cpu" and rates.n_params == 225034
    for f in dataclasses.fields(Rates):
        value = getattr(rates, f.name)
        if isinstance(value, float):
            assert math.isfinite(value) and value > 0, f.name
    again, cached = calibrated(cfg, 3, 12, 3, torch.device("cpu"), log=pytest.fail)
    assert cached and again == rates
    assert list((tmp_path / "cache" / "estimate").glob("*.json"))


def test_the_shell_entry_prints_the_estimate(tmp_path):
    shutil.copy(REPO / "random_seeds.pt", tmp_path / "random_seeds.pt")
    env = dict(os.environ, TDA_ROOT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               TDA_KERNEL_CACHE=str(tmp_path / "cache"))
    r = subprocess.run(["bash", str(REPO / "run_experiment.sh"), "cnn_digits3_1pc", "--methods", "gd", "--estimate"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert TOTAL.match(r.stdout.strip().splitlines()[-1]) and "calibrating on the CPU" in r.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_the_slurm_suggestions_are_the_launchers_own_options(root, monkeypatch, capsys):
    """Per Slurm task: one seed's time with the margin, in minutes (at least 5), and its memory; the printed options,
    given back to the Slurm launcher, land in the sbatch command of their step."""
    from tda.launch.__main__ import main as slurm
    _stub(monkeypatch, step=1e-2)
    assert slurm(["cnn_digits3_10pc", "--estimate", "--methods", "loo"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    seed_s = 5 * 30 * 15 * 30 * 1e-2  # 5 checkpoints x N members x E epochs x N samples
    minutes = math.ceil(seed_s * estimate.MARGIN / 60)
    times = next(ln for ln in out if ln.startswith("--time ")).split()
    mems = next(ln for ln in out if ln.startswith("--mem ")).split()
    assert f"loo={minutes // 60}:{minutes % 60:02d}:00" in times and minutes > 5
    assert all(t == "--time" for t in times[::2]) and all(m == "--mem" for m in mems[::2])
    loo_mem = next(m for m in mems[1::2] if m.startswith("loo="))
    assert int(loo_mem.split("=")[1].rstrip("G")) >= 1
    assert slurm(["cnn_digits3_10pc", "--methods", "loo", "--dry-run", *times, *mems]) == 0
    loo = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("loo_cnn_digits3_10pc="))
    assert f"--time={minutes // 60}:{minutes % 60:02d}:00 " in loo and f"--mem={loo_mem.split('=')[1]} " in loo


def test_on_cuda_it_says_it_calibrated_on_the_gpu(root, monkeypatch, capsys):
    calls = []

    def fake(cfg, n, m, vectors, device, log=print):
        calls.append(device.type)
        return dataclasses.replace(ZERO, device="cuda", device_name="Test GPU", step=1e-5), False

    monkeypatch.setattr(estimate, "calibrated", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from tda.engine import memory
    monkeypatch.setattr(memory, "budget_bytes", lambda device, *a, **k: 40 * 2 ** 30)  # no GPU to ask here
    lines, _ = _run(["cnn_digits3_10pc", "--estimate", "--methods", "loo"], capsys)
    assert calls == ["cuda"] and any("calibrated on the GPU (Test GPU)" in ln for ln in lines)


def test_the_lds_steps_are_estimated_like_an_ensemble_of_subsets(root, monkeypatch, capsys):
    """With --lds S: the ground truth is S subsets plus a control member trained for every epoch (as LOO scratch's
    members) with their forwards at each checkpoint, and its table follows the methods."""
    _stub(monkeypatch, step=1e-5, eval=1e-5)
    lines, total = _run(["cnn_digits3_10pc", "--estimate", "--methods", "gd", "--lds", "20"], capsys)
    n, m, e, c, members = 30, 300, 15, 5, 21
    lds_seed = members * e * n * 1e-5 + c * members * m * 1e-5
    seed_s, _, local_s = _row(lines, "lds")
    assert seed_s == pytest.approx(lds_seed, abs=0.06) and local_s == pytest.approx(5 * lds_seed, abs=0.06)
    assert any(ln.split()[:1] == ["lds_table"] for ln in lines)
    assert any(ln.startswith("--time ") and "lds=" in ln for ln in lines)
