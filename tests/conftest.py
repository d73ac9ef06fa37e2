"""Test-wide settings (never touch a hub or a screen; keep torch to the cores CI has) and the shared fixtures:
an interpreter that forks prewarmed children, and one finished tiny pipeline run per test session."""
import fcntl
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: the test processes already share the cores; torch's default of one intra-op thread
    # per core would have each process's threads wait on each other for every small operation
    # (a 3 s script took 2 minutes). One thread here and in every script a test starts.
    os.environ["OMP_NUM_THREADS"] = "1"

from helpers import Prewarmed, Reference, build_reference  # noqa: E402


@pytest.fixture(scope="session")
def prewarmed(tmp_path_factory):
    """Scripts started as `python SCRIPT ARGS` without paying the imports each time (tests/prewarmed.py)."""
    server = Prewarmed(tmp_path_factory.mktemp("prewarmed"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, request) -> Reference:
    """The README's scripts in order on the tiny experiment (helpers.build_reference), computed once per test run:
    the xdist workers share it through a lock on their common temp directory. Copy it, never write into it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # pytest-of-USER/pytest-N/, common to the workers of this run
    d = shared / "tiny_reference"
    with open(shared / "tiny_reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / "steps.json").exists():
            return build_reference(d, request.getfixturevalue("prewarmed"))
    return Reference(d / "root", json.loads((d / "steps.json").read_text()))
