"""Helpers shared by the tests: entry-script loading and running (also in prewarmed children, tests/prewarmed.py),
tolerances, plain autograd references, the README's commands, and the tiny reference run the pipeline tests copy.

`python tests/helpers.py DIR` builds the reference run under DIR (conftest.py starts it in the background)."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    """An entry script (e.g. 'run_loo') imported as a module, so its `main(argv)` can be called in-process."""
    from tda.pipeline import entry_script
    return entry_script(f"{name.removesuffix('.py')}.py")


def run_script(name: str, *args: str, root: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an entry script as a user would, in a fresh interpreter, with TDA_ROOT=root and cwd=root."""
    full_env = dict(os.environ, TDA_ROOT=str(root), **(env or {}))
    return subprocess.run([sys.executable, str(REPO / name), *args], cwd=root, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def close(fast: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-7) -> None:
    """Equal up to rtol relative to the reference's largest entry (entries near 0 are judged on that scale)."""
    scale = ref.abs().max().item()
    torch.testing.assert_close(fast, ref, rtol=rtol, atol=rtol * scale)


def stand_in_figures(mp) -> None:
    """With monkeypatch `mp`: figures rendered as a digest of what they show (texts, bars), not as PNG or PDF. Where a
    test is about which files are written and when, not about their pixels, this keeps it fast; real figures, byte
    for byte, are compared between runs in tests/test_kill.py and tests/test_workers.py."""
    from tda import plots
    mp.setattr(plots, "figure_bytes", lambda fig, fmt: repr(
        [[t.get_text() for t in ax.texts] + [len(ax.patches)] for ax in fig.axes]).encode())


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def autograd_grads(model, x, y) -> torch.Tensor:
    """Per-sample gradients over the trainable parameters, one autograd call per sample, [B, P]."""
    ps = trainable(model)
    return torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        F.cross_entropy(_logits(model(x[i:i + 1])), y[i:i + 1]), ps)]) for i in range(len(y))])


def autograd_hvp(model, x, y, v: torch.Tensor) -> torch.Tensor:
    """H v by double backward, H the Hessian of the mean loss on (x, y) over the trainable parameters."""
    ps = trainable(model)
    g = torch.autograd.grad(F.cross_entropy(_logits(model(x)), y), ps, create_graph=True)
    gv = sum((gi.flatten() * vi).sum() for gi, vi in zip(g, torch.split(v, [p.numel() for p in ps])))
    return torch.cat([h.flatten() for h in torch.autograd.grad(gv, ps)])


def autograd_lissa(model, x, y, xt, yt, cfg) -> torch.Tensor:
    """IF [N, M] by the FastIF recursion written out: per test sample, h <- v + (1 - damp) h - H_t h / scale over the
    unshuffled training batches of cfg.lissa_batch_size (H_t by double backward), tau = -g_train . h / scale."""
    g_tr, g_te = autograd_grads(model, x, y), autograd_grads(model, xt, yt)
    bs, out = cfg.lissa_batch_size, []
    for i in range(len(yt)):
        h = g_te[i].clone()
        for t in range(0, len(y), bs):
            h = g_te[i] + (1 - cfg.lissa_damp) * h - autograd_hvp(model, x[t:t + bs], y[t:t + bs], h) / cfg.lissa_scale
        out.append(-(g_tr @ (h / cfg.lissa_scale)))
    return torch.stack(out, dim=1)


def make_tiny_root(root: Path, seeds=(446, 724, 571), n_per_class: int = 2, test_stride: int = 15) -> Path:
    """A tiny digits3 experiment under `root`: `seeds` in its random_seeds.pt, n per class, every k-th test image."""
    from tda import io
    from tda.config import get_task
    from tda.data import generate_subsets
    root.mkdir(parents=True, exist_ok=True)
    torch.save(torch.tensor(list(seeds), dtype=torch.int64), root / "random_seeds.pt")
    data_dir = root / "data" / "digits3"
    generate_subsets(get_task("digits3"), [n_per_class], data_dir, "")
    io.write_index_list(io.read_index_list(data_dir / "test_subset.txt")[::test_stride], data_dir / "test_subset.txt")
    generate_subsets(get_task("digits3"), [n_per_class], data_dir, "")
    return root


def pipeline(experiment: str) -> list[list[str]]:
    """The steps of run_experiment.sh (tda.pipeline) for a CNN experiment, as (script, arguments...) lists."""
    from tda.config import parse_experiment
    from tda.pipeline import steps
    return [[script, *args] for _, script, args in steps(parse_experiment(experiment), [])]


def artefacts(root: Path) -> dict[str, bytes]:
    """What a run produced, comparable across runs: subset and checkpoint files and visible results as bytes,
    score files by their tensors (their settings hold timings)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if rel.startswith("tda_scores/"):
            d = torch.load(p, weights_only=True)
            out[rel] = repr([d["scores"].numpy().tobytes(), d["train_indices"].tolist(), d["test_indices"].tolist(),
                             d["provenance"]]).encode()
        elif rel.startswith(("data/", "models/", "results/")):
            out[rel] = p.read_bytes()
    return out


@dataclass
class Done:
    """How a command ended: its exit status (negative: killed by that signal) and its output."""
    returncode: int
    stdout: str
    stderr: str


class Child:
    """A command running in a child of a `Prewarmed` interpreter (its own process group)."""

    def __init__(self, server: "Prewarmed", pid: int, out: Path, err: Path, stop_file: Path, writes_file: Path):
        self.server, self.pid, self.out, self.err = server, pid, out, err
        self.stop_file, self.writes_file = stop_file, writes_file

    def wait(self, timeout: float = 600) -> Done:
        code = self.server.wait(self.pid, timeout)
        return Done(code, *(p.read_text() if p.exists() else "" for p in (self.out, self.err)))

    def started(self, timeout: float = 60) -> None:
        """Wait until the child runs its script: its output files are open, everything before is the fork."""
        deadline = time.monotonic() + timeout
        while not self.err.exists() and self.poll() is None:
            assert time.monotonic() < deadline, f"pid {self.pid} did not start in {timeout} s"
            time.sleep(0.001)

    def poll(self) -> int | None:
        """The exit status if the child has ended, else None."""
        return self.server.poll(self.pid)

    def kill(self) -> None:
        """SIGKILL to the child and everything it started (nothing if it has just ended)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stopped_in_write(self, timeout: float = 600) -> dict | None:
        """{'tmp', 'target'} once the child stopped itself inside the write it was told to stop in; None if it
        ended first."""
        deadline = time.monotonic() + timeout
        while not self.stop_file.exists():
            if self.poll() is not None:
                return None
            assert time.monotonic() < deadline, f"pid {self.pid} neither stopped nor ended in {timeout} s"
            time.sleep(0.005)
        while _proc_state(self.pid) != "T":  # SIGSTOP delivered: frozen inside the write
            assert self.poll() is None and time.monotonic() < deadline, f"pid {self.pid} ended instead of stopping"
            time.sleep(0.001)
        return json.loads(self.stop_file.read_text())

    def writes(self) -> int:
        """How many durable writes (tda.io temp file renamed over its target) the child made."""
        return int(self.writes_file.read_text()) if self.writes_file.exists() else 0


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


class Prewarmed:
    """Runs `python SCRIPT ARGS` / `python -m MODULE ARGS` in children forked from an interpreter that has
    imported torch, tda and the rest (tests/prewarmed.py): the same as a fresh interpreter, without the
    start-up. One thread per child (OMP_NUM_THREADS=1), as in the rest of the suite."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "prewarmed.py")], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=dict(os.environ, OMP_NUM_THREADS="1"))
        self.buf, self.exits, self.n = b"", {}, 0
        assert "ready" in self._next(600), "tests/prewarmed.py did not start"

    def _next(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from tests/prewarmed.py")
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"tests/prewarmed.py ended (exit {self.proc.wait()})")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if "exit" in msg:
            self.exits[msg["exit"]] = msg["code"]
        return msg

    def start(self, argv: list[str], cwd: Path = REPO, env: dict | None = None, stop_at_write: int | None = None,
              truncate: bool = True) -> Child:
        """Start `python *argv` (argv without 'python'); env is added to this process's environment. With
        `stop_at_write` k the child stops itself (SIGSTOP) inside its k-th durable write, its temp file
        written (cut to half its length with `truncate`, as a kill mid-write leaves it) and not yet renamed."""
        self.n += 1
        out, err, stop, writes = (self.dir / f"{self.n}.{s}" for s in ("out", "err", "stop", "writes"))
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
               "env": {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, "stop_at_write": stop_at_write,
               "truncate": truncate, "stop_at_write_file": str(stop), "writes_file": str(writes)}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        while "pid" not in (msg := self._next(60)):
            pass
        return Child(self, msg["pid"], out, err, stop, writes)

    def run(self, argv: list[str], cwd: Path = REPO, env: dict | None = None, timeout: float = 600) -> Done:
        """`python *argv` to its end."""
        return self.start(argv, cwd, env).wait(timeout)

    def poll(self, pid: int) -> int | None:
        while pid not in self.exits and (b"\n" in self.buf or select.select([self.proc.stdout], [], [], 0)[0]):
            self._next(1)
        return self.exits.get(pid)

    def wait(self, pid: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while pid not in self.exits:
            self._next(max(deadline - time.monotonic(), 0.001))
        return self.exits[pid]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self) -> "Prewarmed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the README's commands
EXP = "cnn_digits3_2pc"  # the tiny experiment of make_tiny_root: 6 training and 20 test images, 3 seeds
README_EXP = "cnn_digits3_10pc"  # the experiment the README's commands use, replaced by EXP in the tests


def _strip_comment(line: str) -> str:
    """`line` without a shell comment (a # that starts a word outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(path: Path | None = None) -> list[tuple[str, str]]:
    """(section heading, command) for every command of the README's ```bash blocks, in order: lines ending in a
    backslash joined to the next, comments stripped, blank lines dropped."""
    import re
    text = (path or REPO / "README.md").read_text()
    out, section = [], ""
    for m in re.finditer(r"^## ([^\n]*)$|^```bash\n(.*?)^```", text, flags=re.S | re.M):
        if m.group(1) is not None:
            section = m.group(1).strip()
            continue
        pending = ""
        for line in m.group(2).splitlines():
            line = _strip_comment(line)
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            cmd = (pending + line.strip()).strip()
            pending = ""
            if cmd:
                out.append((section, " ".join(cmd.split())))
    return out


def fake_venv(where: Path) -> Path:
    """A directory the Makefile takes for a finished .venv whose `python` runs the interpreter of these tests:
    `make run VENV=<it, relative to REPO>` installs nothing, and PATH=<it>/bin:$PATH makes `python` this one."""
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (where / "bin" / "python").chmod(0o755)
    (where / ".installed").touch()  # newer than req.txt
    return where


def readme_section(heading: str) -> list[str]:
    """The commands of one README section's ```bash blocks."""
    cmds = [c for s, c in readme_commands() if s == heading]
    assert cmds, f"README.md has no ```bash commands under '## {heading}'"
    return cmds


def readme_pipeline_steps() -> list[list[str]]:
    """The README's scripts in order, as argv lists after `python`, on EXP instead of README_EXP."""
    import shlex
    steps = []
    for cmd in readme_section("The scripts, in order"):
        argv = shlex.split(cmd.replace(README_EXP, EXP))
        assert argv[0] == "python" and argv[1].endswith(".py"), cmd
        steps.append(argv[1:])
    return steps


@dataclass
class Reference:
    """A finished tiny run to copy: `root` (TDA_ROOT) and, per README step, its argv, wall seconds, durable writes
    and output. Never write into `root`: copy it."""
    root: Path
    steps: list[dict]

    def copy(self, dest: Path, parts: tuple[str, ...] | None = None) -> Path:
        """A copy of the run at `dest` (file times kept): all of it, or random_seeds.pt and the top-level
        directories `parts` (e.g. ("data", "models"): the subsets and the trained seeds, no scores)."""
        import shutil
        if parts is None:
            return Path(shutil.copytree(self.root, dest, symlinks=True))
        dest.mkdir(parents=True)
        shutil.copy2(self.root / "random_seeds.pt", dest)
        for part in parts:
            shutil.copytree(self.root / part, dest / part, symlinks=True)
        return dest


def build_reference(d: Path, server: Prewarmed) -> Reference:
    """make_tiny_root, then the README's scripts in order on EXP, each alone (its own process, one worker)."""
    import shutil
    shutil.rmtree(d / "root", ignore_errors=True)  # what a build killed half-way left: the reference is never resumed
    root = make_tiny_root(d / "root")
    steps = []
    for argv in readme_pipeline_steps():
        t0 = time.perf_counter()
        child = server.start(argv, env={"TDA_ROOT": str(root), "TDA_WORKERS": "1"})
        done = child.wait()
        assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
        steps.append({"argv": argv, "seconds": time.perf_counter() - t0, "writes": child.writes(),
                      "stdout": done.stdout, "stderr": done.stderr})
    (d / "steps.json").write_text(json.dumps(steps, indent=1))
    return Reference(root, steps)


def reference_in(shared: Path, server: Callable[[], Prewarmed]) -> Reference:
    """The reference run under `shared`/tiny_reference, built there first if no one has (`server()` gives the
    interpreter to build it with): under a lock, so that processes sharing `shared` build it once."""
    import fcntl
    d = shared / "tiny_reference"
    with open(shared / "tiny_reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / "steps.json").exists():
            return build_reference(d, server())
    return Reference(d / "root", json.loads((d / "steps.json").read_text()))


if __name__ == "__main__":  # python tests/helpers.py DIR: the reference under DIR, built early by conftest
    sys.path.insert(0, str(REPO))
    _shared, _servers = Path(sys.argv[1]), []
    try:
        reference_in(_shared, lambda: _servers.append(Prewarmed(_shared / "builder")) or _servers[0])
    finally:
        for _s in _servers:
            _s.close()
