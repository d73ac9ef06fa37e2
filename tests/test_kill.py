"""kill -9 inside every step of the pipeline: every rerun ends with outputs identical to an uninterrupted run.

Each step of the README's scripts in order (subsets, training, the four TDA scripts, p-values,
correlations) is started and killed with SIGKILL three times, then run to completion, before the next
step starts; the finished run must equal the uninterrupted reference run byte for byte. Every kill
lands inside the step's own work, none in the interpreter's start-up: the scripts run in children of
an interpreter that has done the imports already (tests/prewarmed.py). The first kill of each step
falls inside one of its durable writes, drawn at random: the child stops itself with its temp file
half written and not yet renamed, and is killed there. The other two fall at random times of the
step, drawn from a seeded generator (the seed is printed; set TDA_KILL_SEED to replay a run) over the
step's duration in the reference run; one that the step outlives is drawn again over the shorter time.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

from helpers import artefacts, make_tiny_root

TIMED_KILLS_PER_STEP = 2  # and one in a write: 8 steps, 24 kills


def _env(root: Path) -> dict:
    return {"TDA_ROOT": str(root), "TDA_WORKERS": "1"}


def _kill_in_a_write(prewarmed, argv, root, k: int) -> str:
    child = prewarmed.start(argv, env=_env(root), stop_at_write=k)
    where = child.stopped_in_write()
    assert where is not None, f"{argv[0]} ended before its durable write {k}: {child.wait().stderr[-2000:]}"
    tmp = Path(where["tmp"])
    assert tmp.exists() and tmp.parent == Path(where["target"]).parent
    child.kill()
    assert child.wait().returncode == -9
    assert tmp.exists()  # the half-written temp file is left behind, for the rerun to cope with
    return f"in write {k}: {Path(where['target']).relative_to(root)}"


def _kill_after(prewarmed, argv, root, delay: float) -> float | None:
    """Start the step, SIGKILL it `delay` s later; None if it was killed, else how long it took to finish first."""
    child = prewarmed.start(argv, env=_env(root))
    child.started()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < delay and child.poll() is None:
        time.sleep(0.002)
    if child.poll() is None:
        child.kill()
    code = child.wait().returncode
    if code == -9:
        return None
    assert code == 0, f"{argv}: {child.wait().stderr[-2000:]}"
    return time.perf_counter() - t0


def test_kill_minus_9_inside_every_step_then_rerun_gives_identical_outputs(tiny_reference, prewarmed, tmp_path):
    seed = int(os.environ.get("TDA_KILL_SEED", random.SystemRandom().randrange(10**6)))
    print(f"kill points drawn with TDA_KILL_SEED={seed}")
    rng = random.Random(seed)
    killed = make_tiny_root(tmp_path / "killed")
    kills, retries = [], 0
    for step in tiny_reference.steps:
        argv, name = step["argv"], step["argv"][0]
        assert step["writes"] > 0, f"{name} made no durable write in the reference run"
        k = rng.randint(1, step["writes"])  # the state is the reference's here: its write k comes
        kills.append((name, _kill_in_a_write(prewarmed, argv, killed, k)))
        upper, landed = step["seconds"], 0
        while landed < TIMED_KILLS_PER_STEP:
            delay = rng.uniform(0.0, 0.8 * upper)
            finished = _kill_after(prewarmed, argv, killed, delay)
            if finished is None:
                landed += 1
                kills.append((name, f"at {delay:.2f} s"))
            else:  # what is left of the step takes less time now: draw again below that
                retries += 1
                upper = finished
                assert retries <= 12, f"{name} kept finishing before its kill point: {kills}"
        done = prewarmed.run(argv, env=_env(killed))
        assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
    print("\n".join(f"{s}: killed {where}" for s, where in kills) + f"\n{retries} kill points redrawn")
    assert len(kills) == 3 * len(tiny_reference.steps) == 24
    a, b = artefacts(tiny_reference.root), artefacts(killed)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert not list(killed.rglob(".*.tmp*")), "temp files of killed writers were not swept"
