"""Test-wide settings: never touch a hub or a screen; keep torch to the cores CI has."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: the test processes already share the cores; torch's default of one intra-op thread
    # per core would have each process's threads wait on each other for every small operation
    # (a 3 s script took 2 minutes). One thread here and in every script a test starts.
    os.environ["OMP_NUM_THREADS"] = "1"
