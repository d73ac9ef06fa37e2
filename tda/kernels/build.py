"""Compiling and loading the C kernels' library safely: only code this user built is ever loaded.

The library is compiled with the system's C compiler on first use and cached in a directory of the user's own
(TDA_KERNEL_CACHE, default $XDG_CACHE_HOME/bayes-tda or ~/.cache/bayes-tda, created with mode 0700) under a
name that hashes the source, the compiler, its flags and the CPU, so a shared home directory serves machines of
several kinds. A cache directory owned by someone else or writable by group or others is not used (the library
is built in a private temporary directory instead, with a warning); a cached file is loaded only when it
belongs to the user and nobody else may write it, and matches the digest recorded when it was built (a truncated
or corrupt file would crash the process that maps it): otherwise it is rebuilt;
temporary files of a killed compile are swept. CC may hold a compiler with its launcher (`ccache gcc`).
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "gelu_pool.c"
#: every C file of the library: the blocks' kernels and the Hessian-vector products' tangent kernels
SOURCES = (SOURCE, SOURCE.with_name("hvp.c"))
#: headers the sources include (hashed with them)
HEADERS = (SOURCE.with_name("simd.h"),)
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11")
#: a temporary file of a compile older than this is a leftover of a killed build
STALE_TMP_S = 3600.0
_SYMBOLS = ("gelu_pool", "gelu_pool_backward", "conv_gelu_pool", "conv_gelu_pool_backward", "conv_direct_gelu_pool",
            "pool_conv_backward_weight", "pool_conv_backward_input", "hvp_conv_winners", "hvp_cols_winners",
            "hvp_conv_backward_weight", "hvp_conv_backward_input", "hvp_cols_backward_weight")


def source_text() -> str:
    """The C source of the library: its files' texts, in compile order."""
    return "\n".join(p.read_text() for p in (*HEADERS, *SOURCES))


def _cpu_tag() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        import platform
        return platform.processor() + platform.machine()


def cache_dir() -> Path:
    """Where the compiled library is cached: TDA_KERNEL_CACHE, else $XDG_CACHE_HOME/bayes-tda or ~/.cache/bayes-tda."""
    if os.environ.get("TDA_KERNEL_CACHE"):
        return Path(os.environ["TDA_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bayes-tda"


def foreign(path: Path) -> str | None:
    """Why `path` may hold someone else's code (owned by another user, or group/world-writable); None if it is ours."""
    st = path.stat()
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _private_tmp() -> Path:
    d = Path(tempfile.mkdtemp(prefix="bayes-tda-kernels-"))  # 0700, ours
    atexit.register(shutil.rmtree, d, True)
    return d


def _usable_dir() -> Path:
    """The cache directory, created 0700 if missing; a private temporary directory (with a warning) if it is not ours."""
    root = cache_dir()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        why = foreign(root)
    except OSError as e:
        why = f"not usable ({e.strerror or e})"
    if why is None:
        return root
    warnings.warn(f"not using the kernel cache {root}: {why}; building the C kernels in a private temporary "
                  "directory instead (fix it, or point TDA_KERNEL_CACHE at a directory of your own)",
                  RuntimeWarning, stacklevel=4)
    return _private_tmp()


def sweep(root: Path, max_age_s: float = STALE_TMP_S) -> list[Path]:
    """Delete temporary files of compiles that were killed: their process is gone, or they are over an hour old."""
    removed = []
    for f in [*root.glob(".gelu_pool-*.tmp.so"), *root.glob(".gelu_pool-*.tmp.so.sha256")]:
        try:
            pid = int(f.name.split("-")[1])
        except (IndexError, ValueError):
            pid = -1
        try:
            alive = pid > 0 and (os.kill(pid, 0) is None)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive or time.time() - f.stat().st_mtime > max_age_s:
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def compiler() -> list[str] | None:
    """The C compiler command: CC split like a shell would (so `ccache gcc` works), else gcc or cc on the PATH."""
    cc = os.environ.get("CC")
    if cc:
        return shlex.split(cc)
    found = shutil.which("gcc") or shutil.which("cc")
    return [found] if found else None


def _file_sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _digest_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _intact(target: Path) -> bool:
    """Whether a cached library is the file this user built: ours, not writable by others, and byte for byte what
    its digest (written at build time) says: a truncated or corrupt file would crash the process that maps it."""
    record = _digest_file(target)
    try:
        return (foreign(target) is None and foreign(record) is None
                and record.read_text().strip() == _file_sha(target))
    except OSError:
        return False


def _compile(cc: list[str], target: Path) -> None:
    """Compile into `target` atomically (a temporary name carrying this process's id, then a rename), its digest
    recorded beside it first."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".gelu_pool-{os.getpid()}-", suffix=".tmp.so")
    os.close(fd)
    try:
        subprocess.run([*cc, *FLAGS, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True, text=True, check=True)
        os.chmod(tmp, 0o700)
        record = Path(f"{tmp}.sha256")
        record.write_text(_file_sha(Path(tmp)) + "\n")
        os.replace(record, _digest_file(target))
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, f"{tmp}.sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _open(path: Path) -> ctypes.CDLL:
    """Load a library and check it has every kernel."""
    lib = ctypes.CDLL(str(path))
    for name in _SYMBOLS:
        for sfx in ("f32", "f64"):
            getattr(lib, f"{name}_{sfx}")
    lib.kernel_lanes  # noqa: B018 - present, or AttributeError
    return lib


def _build(cc: list[str]) -> ctypes.CDLL:
    """The loaded library: the cached one where it is intact and ours, else compiled anew."""
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([source_text(), *cc, version, *FLAGS, _cpu_tag()]).encode())
    root = _usable_dir()
    sweep(root)
    target = root / f"gelu_pool-{key.hexdigest()[:16]}.so"
    if not (target.exists() and _intact(target)):
        _compile(cc, target)
    return _open(target)


def load() -> ctypes.CDLL | None:
    """The built and loaded library with its argument types set; None (with a warning) where it cannot be built."""
    cc = compiler()
    try:
        if cc is None:
            raise OSError("no C compiler found (install gcc, or set CC)")
        lib = _build(cc)
    except (OSError, AttributeError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        msg = f"the C kernels could not be built, the CNN kernels use torch's ops instead: {detail.strip()[:500]}"
        if os.environ.get("TDA_REQUIRE_C_KERNELS") == "1":
            raise RuntimeError(msg) from e
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for sfx in ("f32", "f64"):
        getattr(lib, f"gelu_pool_{sfx}").argtypes = [p, i64, i64, i64, i64, p, p, p, p]
        getattr(lib, f"gelu_pool_backward_{sfx}").argtypes = [p, p, p, i64, i64, i64, i64, p, p]
        getattr(lib, f"conv_gelu_pool_{sfx}").argtypes = [p, p, p, i64, i64, i64, i64, i64, p, p, p, p]
        getattr(lib, f"conv_gelu_pool_backward_{sfx}").argtypes = [p, p, p, p, i64, i64, i64, i64, i64, p, p, i64]
        getattr(lib, f"conv_direct_gelu_pool_{sfx}").argtypes = [p, p, p, *[i64] * 8, p, p, p, p]
        getattr(lib, f"pool_conv_backward_weight_{sfx}").argtypes = [p, p, p, *[i64] * 8, p, i64]
        getattr(lib, f"pool_conv_backward_input_{sfx}").argtypes = [p, p, p, *[i64] * 8, p]
        getattr(lib, f"hvp_conv_winners_{sfx}").argtypes = [p, i64, p, i64, p, i64, p, i64, p, i64, p, *[i64] * 9, p,
                                                            p, p, i64]
        getattr(lib, f"hvp_conv_backward_weight_{sfx}").argtypes = [p, i64, p, i64, p, i64, p, i64, p, *[i64] * 9, p]
        bi = getattr(lib, f"hvp_conv_backward_input_{sfx}")
        bi.argtypes, bi.restype = [p, i64, p, i64, p, i64, p, i64, p, *[i64] * 9, p, p, p, p, p, i64], ctypes.c_int
        getattr(lib, f"hvp_cols_winners_{sfx}").argtypes = [p, p, i64, p, i64, p, *[i64] * 6, p, p, p, i64]
        getattr(lib, f"hvp_cols_backward_weight_{sfx}").argtypes = [p, p, i64, p, *[i64] * 6, p, i64]
    lib.kernel_lanes.restype, lib.kernel_lanes.argtypes = ctypes.c_int, []
    return lib
