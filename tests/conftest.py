"""Test-wide settings (never touch a hub or a screen; keep torch to the cores CI has), the order tests start in,
and the shared fixtures: an interpreter that forks prewarmed children, and one finished tiny pipeline run."""
import os
import signal
import subprocess
import sys
from pathlib import Path

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

import helpers  # noqa: E402
from helpers import Prewarmed, Reference, reference_in  # noqa: E402

#: the longest tests that share no module-scoped fixture, longest first (as measured) except that those needing the
#: reference run come after the first few, when its background build has finished: started first, so that the
#: processes of `pytest -n` end together instead of one waiting for the other's last long test. Modules whose
#: tests share module-scoped fixtures stay together on one process (their xdist_group mark) and start before these.
LONGEST_FIRST = (
    "test_readme.py::test_vit_commands_with_the_tiny_model",
    "test_own_data.py::test_readme_commands_run_end_to_end",
    "test_kill.py::",
    "test_provenance.py::test_changed_index_recomputes_exactly_what_depends_on_it",
    "test_workers.py::test_pipeline_in_one_interpreter_equals_the_scripts_one_by_one",
    "test_workers.py::test_parallel_seeds_equal_one_process",
    "test_readme.py::test_bench_methods_quick_runs_and_its_fast_paths_equal_its_loops",
    "test_workers.py::test_shared_workers_keep_their_processes_between_steps",
)


def _rank(item) -> int:
    nodeid = item.nodeid.split("/")[-1]
    return next((k for k, prefix in enumerate(LONGEST_FIRST) if nodeid.startswith(prefix)), len(LONGEST_FIRST))


def shared_dir(config) -> Path:
    """A temp directory of this test run common to all its processes (pytest-of-USER/pytest-N/ under xdist)."""
    base = config._tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_rank)  # stable: everything else keeps its order
    if config.option.collectonly or not any("tiny_reference" in getattr(i, "fixturenames", ()) for i in items):
        return
    shared = shared_dir(config)
    try:  # the first process to get here starts building the reference run in the background, for all of them
        os.close(os.open(shared / "tiny_reference.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    with open(shared / "tiny_reference.log", "w") as log:
        config._reference_builder = subprocess.Popen([sys.executable, helpers.__file__, str(shared)], stdout=log,
                                                     stderr=subprocess.STDOUT, start_new_session=True)


def pytest_sessionfinish(session):
    builder = getattr(session.config, "_reference_builder", None)
    if builder is not None and builder.poll() is None:  # a run that ended early: stop it, its children too
        os.killpg(builder.pid, signal.SIGKILL)
        builder.wait()


@pytest.fixture(scope="session")
def prewarmed(tmp_path_factory):
    """Scripts started as `python SCRIPT ARGS` without paying the imports each time (tests/prewarmed.py)."""
    server = Prewarmed(tmp_path_factory.mktemp("prewarmed"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_reference(request) -> Reference:
    """The README's scripts in order on the tiny experiment (helpers.build_reference), computed once per test run,
    in the background from the start (pytest_collection_modifyitems) or here: the processes of `pytest -n`
    share it through a lock. Copy it, never write into it."""
    return reference_in(shared_dir(request.config), lambda: request.getfixturevalue("prewarmed"))
