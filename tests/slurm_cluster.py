"""A throwaway single-node Slurm on this machine for the tests: munged, slurmctld and slurmd from a generated slurm.conf.

Everything lives in one temp dir (key, sockets, state, spool, logs); the daemons run in the foreground
as children of the test process and are stopped by PID. Clients reach this cluster only through
SLURM_CONF in `Cluster.env`, so nothing else on the machine sees it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(cmd: str) -> str | None:
    return shutil.which(cmd) or next((str(Path(d, cmd)) for d in SBIN if Path(d, cmd).exists()), None)


def unavailable() -> str | None:
    """Why no cluster can be started here, in one line, or None if it can."""
    missing = [c for c in COMMANDS if _which(c) is None]
    if missing:
        return f"Slurm not installed (no {', '.join(missing)}): apt-get install -y slurm-wlm munge"
    if os.geteuid() != 0:
        return "the Slurm tests start slurmd, which runs jobs only as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


def slurm_conf(d: Path, node: str, cpus: int, mem_mb: int, ports: tuple[int, int]) -> str:
    """A minimal slurm.conf: one node, one partition, no cgroups, no accounting database."""
    return f"""\
ClusterName=tdatest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    """A running test cluster: its dir, config, daemons, and the environment that points clients at it."""

    dir: Path
    conf: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def stop(self) -> None:
        """Cancel what is left in the queue, then stop the daemons by PID, newest first."""
        if any(p.poll() is None for p in self.procs):
            left = self.run("squeue", "--noheader", "--format=%i", check=False).stdout.split()
            if left:
                self.run("scancel", *left, check=False)
                time.sleep(1)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)


def start(d: Path, timeout: float = 60.0) -> Cluster:
    """Write key and slurm.conf under `d`, start munged, slurmctld and slurmd, and wait until the node is idle."""
    d = Path(d)
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)  # munged wants its socket's directory not writable by others
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    cpus = len(os.sched_getaffinity(0))
    conf = d / "slurm.conf"
    conf.write_text(slurm_conf(d, node, cpus, _mem_mb(), (_free_port(), _free_port())))
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = Cluster(d, conf, env)
    daemons = [
        [_which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={d}/munge.socket",
         f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
        [_which("slurmctld"), "-D", "-i", "-f", str(conf)],
        [_which("slurmd"), "-D", "-N", node, "-f", str(conf)],
    ]
    try:
        for argv in daemons:
            log = open(d / f"{Path(argv[0]).name}.stdout", "w")
            cluster.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL))
            log.close()
            if argv[0].endswith("munged"):
                _until(lambda: (d / "munge.socket").exists(), timeout, "munged did not create its socket", cluster)
        _until(lambda: cluster.run("sinfo", "--noheader", "--format=%t", check=False).stdout.strip() == "idle",
               timeout, "the node did not become idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _until(ready, timeout: float, what: str, cluster: Cluster) -> None:
    t0 = time.monotonic()
    while not ready():
        dead = [p.args[0] for p in cluster.procs if p.poll() is not None]
        if dead or time.monotonic() - t0 > timeout:
            logs = " ".join(str(p) for p in sorted(cluster.dir.glob("*.log")))
            raise RuntimeError(f"test Slurm: {what}" + (f" ({', '.join(dead)} exited)" if dead else "")
                               + f"; see {logs}")
        time.sleep(0.2)
