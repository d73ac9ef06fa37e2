"""A Python interpreter that has imported torch, tda and the rest once, then forks one child per command.

Each child runs `python SCRIPT ARGS` or `python -m MODULE ARGS` exactly as a fresh interpreter would
(its own process and session, the given cwd, environment, stdout and stderr, `__main__` = the script),
except that the imports (about 2.5 s of every start on a quiet 2-core machine, 6 s under load) are
already done. The tests that start the pipeline's scripts many times (the kill test, the README's
commands, concurrent runs) use it through `helpers.Prewarmed`; nothing in tda/ knows about it.

Protocol: one JSON request per line on stdin, {"argv", "cwd", "env", "stdout", "stderr",
"stop_at_write", "writes_file"}; the answer {"pid"} comes at once, {"exit": pid, "code"} when that
child ends (code < 0: killed by that signal). With `stop_at_write` k the child stops itself (SIGSTOP)
inside its k-th durable write (tda.io's temp file written, with `truncate` half of it cut off, not yet
renamed), after writing {"tmp", "target"} to `stop_at_write_file`; with `writes_file` it records how many durable
writes it made.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import runpy
import select
import signal
import sys
import traceback

TMP_NAME = re.compile(r"^\..+\.tmp(\.[^.]*)?$")  # tda.io's temp files: .<name>.<host>-<pid>-<hex>.tmp[.suffix]


def preload() -> None:
    """What the entry scripts import, so that no child pays for it."""
    import matplotlib
    matplotlib.use("Agg")
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import scipy.stats  # noqa: F401
    import seaborn  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401
    import torch.func  # noqa: F401
    import torchvision  # noqa: F401 - tda.data imports it on first use (torch._dynamo with it: seconds)
    import tda.attribution  # noqa: F401
    import tda.data  # noqa: F401
    import tda.launch.__main__  # noqa: F401
    import tda.methods  # noqa: F401
    import tda.pipeline  # noqa: F401
    import tda.results.correlations  # noqa: F401
    import tda.results.pvalues  # noqa: F401
    import tda.results.report  # noqa: F401
    import tda.training  # noqa: F401
    from tda.kernels import native
    native.library()  # compiled (or found in its cache) and loaded once


def _hook_writes(stop_at: int | None, truncate: bool, stop_file: str | None, count_file: str | None) -> None:
    """Count tda.io's renames of temp files over their targets; stop inside the `stop_at`-th."""
    real, n = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if TMP_NAME.match(os.path.basename(os.fspath(src))):
            n[0] += 1
            if count_file:
                with open(count_file, "w") as f:
                    f.write(str(n[0]))
            if n[0] == stop_at:
                if truncate:  # half a file written, as a kill mid-write leaves it
                    os.truncate(src, os.path.getsize(src) // 2)
                with open(stop_file + ".part", "w") as f:
                    json.dump({"tmp": os.fspath(src), "target": os.fspath(dst)}, f)
                os.rename(stop_file + ".part", stop_file)
                os.kill(os.getpid(), signal.SIGSTOP)  # the test kills us here
        return real(src, dst, *args, **kwargs)
    os.replace = replace


def child(req: dict) -> None:
    """Become `python ARGV...` in req's cwd and environment; never returns."""
    code = 1
    try:
        os.setsid()
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        fds = [os.open(os.devnull, os.O_RDONLY),
               os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
               os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        _hook_writes(req.get("stop_at_write"), req.get("truncate", True), req.get("stop_at_write_file"),
                     req.get("writes_file"))
        argv = req["argv"]
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = os.getcwd()
                sys.modules.pop(argv[1], None)  # run as __main__, not as the module imported here
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, exit status 1
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    preload()
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    buf, stdin = b"", sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.01)
        while True:  # report every child that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(json.dumps({"exit": pid, "code": code}) + "\n")
            out.flush()
        if not readable:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(req)
            out.write(json.dumps({"pid": pid}) + "\n")
            out.flush()


if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo, not tests/
    serve()
