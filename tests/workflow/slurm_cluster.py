"""A throw-away one-node SLURM cluster (Debian's slurm-wlm + munge) for tests/workflow/test_slurm.py.

Everything lives under one directory: munge key and socket, slurm.conf, gres.conf, state, spool,
logs. The node has two partitions (`cpu`, default; `gpu`) and one fake GPU of type `fake`
(`gres.conf`: `Type=fake File=/dev/null`) so that `--gpus=1`, `--gpus=fake:1` (the plugin's
`gpu_model`) and `--gres=gpu:1` jobs are schedulable. No slurmdbd: the
cluster has no accounting, like many small clusters, so job status must come from `squeue`.

    python tests/workflow/slurm_cluster.py DIR     # start one by hand; prints `export SLURM_CONF=...`

The daemons run in the foreground as children of this process; `Cluster.stop()` ends them by pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

# The jobs' own `srun` (the executor plugin's job step) drops SLURM_CONF from its environment, so
# clients must find the configuration at the default path: a symlink there to ours, while it runs.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
OURS = "ks-slurm-"  # our cluster directories are /tmp/ks-slurm-<pid>


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if sys.platform != "linux":
        return "SLURM test needs Linux"
    for tool in ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
        if not Path(tool).exists():
            return (
                f"{tool} not installed: install Debian's slurm-wlm and munge (`.ci/run` does it "
                f"with apt-get when run as root)"
            )
    for tool in ("sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH (Debian package slurm-client)"
    if os.geteuid() != 0:
        return "SLURM test starts slurmd, which must run as root"
    if (SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink()) and not (
        SYSTEM_CONF.is_symlink() and OURS in os.readlink(SYSTEM_CONF)
    ):
        return f"{SYSTEM_CONF} exists (a real SLURM set-up): not replacing it with a test cluster"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path, cpus: int = 2, mem_mb: int = 8000):
        self.root = Path(root).resolve()
        self.host = socket.gethostname()
        self.cpus, self.mem_mb = cpus, mem_mb
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write(self) -> None:
        r = self.root
        for sub in ("state", "spool", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (r / "munge").chmod(0o700)
        self.conf.write_text(f"""\
ClusterName=knowsubnet-ci
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=300
ReturnToService=2
SlurmdTimeout=60
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:fake:1 State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
""")
        (r / "gres.conf").write_text(f"NodeName={self.host} Name=gpu Type=fake File=/dev/null\n")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.unlink(missing_ok=True)  # only ever one of ours (see missing())
        SYSTEM_CONF.symlink_to(self.conf)

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / f"{name}.out", "wb")
        self.procs.append(
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        )

    def start(self, timeout: float = 60) -> Cluster:
        self._write()
        r = self.root
        self._spawn(
            "munged",
            [
                "/usr/sbin/munged",
                "--foreground",
                "--force",
                f"--socket={r}/munge/munge.socket",
                f"--key-file={r}/munge/munge.key",
                f"--pid-file={r}/munge/munged.pid",
                f"--log-file={r}/munge/munged.log",
                f"--seed-file={r}/munge/munged.seed",
            ],
        )
        self._wait(lambda: (r / "munge" / "munge.socket").exists(), timeout, "munged")
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run("scontrol", "ping").returncode == 0, timeout, "slurmctld")
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(self._node_idle, timeout, "slurmd (node idle)")
        return self

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env)

    def _node_idle(self) -> bool:
        out = self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
        return bool(out) and all(state.startswith("idle") for state in out)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{proc.args[0]} exited ({proc.returncode}) while starting {what}: {self.logs()}"
                    )
            time.sleep(0.5)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s: {self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munge/munged.log", "slurmctld.out", "slurmd.out", "munged.out"):
            path = self.root / name
            if path.is_file():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        if SYSTEM_CONF.is_symlink() and os.readlink(SYSTEM_CONF) == str(self.conf):
            SYSTEM_CONF.unlink()


if __name__ == "__main__":
    reason = missing()
    if reason:
        sys.exit(reason)
    cluster = Cluster(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("slurm-cluster")).start()
    print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C stops the cluster", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
