"""The package as pip installs it: pyproject.toml pins what req.txt pins, the wheel holds every module and the data
files the code reads (the C source, the reading guide) and no entry script, and the installed package works from
anywhere (the API runs; what needs the entry scripts says so in one line). CITATION.cff cites the paper."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from tda import checkout
from tda.config import TDAError

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
pytestmark = pytest.mark.xdist_group("packaging")


def pins(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_pyproject_pins_what_req_txt_pins():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert sorted(project["dependencies"] + extras["test"]) == sorted(pins(REPO / "req.txt"))
    assert {p.split("==")[0] for p in extras["test"]} == {"pytest", "pytest-xdist", "execnet"}
    assert extras["dattri"] == pins(REPO / "req-extra.txt")
    assert all("==" in p for p in project["dependencies"])
    assert project["license"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()


def test_citation_cites_the_paper():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    paper = cff["preferred-citation"]
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert [a["family-names"] for a in paper["authors"]] == ["Nguyen", "Seo", "Oh"]
    assert paper["year"] == 2023 and "NeurIPS 2023" in paper["collection-title"]
    assert "Training Data Attribution" in paper["title"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (setuptools of this environment, no download) and installed into
    a directory of its own (its dependencies are this environment's)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "tda", src / "tda", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                        str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp / "dist").glob("bayes_tda-*.whl"))
    r = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return wheel


def test_the_wheel_holds_the_package_and_its_data_files(installed):
    names = set(zipfile.ZipFile(installed).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "tda").rglob("*.py")}
    assert modules <= names
    assert {"tda/kernels/csrc/gelu_pool.c", "tda/results/reading_guide.md"} <= names
    assert not [n for n in names if n.startswith(("run_", "tests/", "bench/", "docs/"))]
    assert any(n.endswith("licenses/LICENSE") for n in names)


def _run_installed(installed: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TDA_ROOT")}
    env.update(PYTHONPATH=str(installed.parent.parent / "site"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_package_runs_the_api_from_anywhere(installed, tmp_path):
    code = """
import torch, tda
from torch import nn
assert tda.__file__.startswith(%r), tda.__file__
x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
post = tda.train_posterior(lambda: nn.Linear(4, 3), (x, y), [1, 2], tda.Training(epochs=2, checkpoints=2),
                           progress=False)
gd = tda.attribute("gd", post, (x, y), (x[:3], y[:3]), progress=False)
print(tuple(gd.shape))
from tda.kernels import native
print(native.SOURCE.is_file())
""" % str(installed.parent.parent / "site")
    r = _run_installed(installed, code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(2,", "2,", "8,", "3)", "True"]


def test_the_installed_package_says_the_pipeline_needs_a_clone(installed, tmp_path):
    r = _run_installed(installed, "import sys; from tda import cli, pipeline; sys.argv = ['x', 'cnn_digits3_2pc']; "
                                  "cli.run(pipeline.main)", tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "clone" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_scripts_are_found_in_the_clone_or_the_current_directory(tmp_path, monkeypatch):
    assert checkout.scripts_dir() == REPO.resolve()
    monkeypatch.setattr(checkout, "PACKAGE_PARENT", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TDAError, match="clone"):
        checkout.scripts_dir()
    (tmp_path / checkout.MARKER).write_text("")
    assert checkout.script("run_loo.py") == tmp_path / "run_loo.py"
