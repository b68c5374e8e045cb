"""A real multi-node Slurm on emulated nodes (tests/emulated_nodes.py): slurmctld and a
munged of its own on the head, one slurmd per node (NodeName = the node's hostname,
NodeAddr = its 10.77.0.x address, its own spool directory, pid and log file). munged's
socket is a file, so every namespace reaches it; clients (sbatch, scontrol, ...) run on
the head, as the controller's address exists only there and on the nodes.

`SlurmNodes(cluster, directory)` is a context manager; `slurm_nodes` a session fixture
over the `cluster` fixture of tests/multinode/conftest.py. Everything started is stopped
on exit, also after a failure (and, being in the cluster's namespaces, with the cluster);
what it wrote stays in `directory`.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from emulated_nodes import Cluster

ROOT = Path(__file__).resolve().parents[2]
SBIN = Path("/usr/sbin")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo", "srun")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
CPUS = 2  # per node: `sbatch -N 2 --ntasks-per-node=2` fits
# MPICH as launchers.py runs it: libfabric's TCP between nodes, its own shared memory
# within one. UCX would move the data between the namespaces through shared memory (it sees
# one host); on its TCP transport the ps strategy's any-source receives hang (MPICH 5.0.2).
JOB_ENV = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "OPENBLAS_NUM_THREADS": "1"}


def unavailable() -> "str | None":
    """Why a multi-node Slurm cannot run here (on top of emulated nodes), or None."""
    missing = [name for name in DAEMONS if not (SBIN / name).exists()]
    missing += [name for name in CLIENTS if shutil.which(name) is None]
    if missing:
        return (f"Slurm is not installed here (missing {', '.join(missing)}); "
                "apt-get install slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root, and this is not root"
    return None


REVOKED_SECONDS = 2  # after a requeue, before the job may start again (see start_requeued)


def slurm_conf(cluster: Cluster, directory: Path, munge_socket: Path) -> str:
    """The nodes' slurm.conf: every port is the default, as each namespace has its own."""
    nodes = "".join(f"NodeName={node} NodeAddr={cluster.address[node]} CPUs={CPUS} "
                    "State=UNKNOWN\n" for node in cluster.nodes)
    return f"""\
ClusterName=mpinnnodes
SlurmctldHost={cluster.head}({cluster.address[cluster.head]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool-%n
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd-%n.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=30
{nodes}PartitionName=debug Nodes={",".join(cluster.nodes)} Default=YES MaxTime=INFINITE \
State=UP
"""


class SlurmNodes:
    """munged, slurmctld on the head and a slurmd per node, started on entry (waiting
    until every node is idle) and stopped on exit."""

    def __init__(self, cluster: Cluster, directory: Path, env: "dict | None" = None):
        self.cluster, self.directory = cluster, Path(directory)
        self.conf = self.directory / "slurm.conf"
        self.munge_socket = self.directory / "munge" / "munge.socket"
        self.env = {**os.environ, **JOB_ENV, **(env or {}), "SLURM_CONF": str(self.conf),
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.daemons: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> "SlurmNodes":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        munge = self.munge_socket.parent
        for folder in (munge, self.directory / "state",
                       *(self.directory / f"spool-{node}" for node in self.cluster.nodes)):
            folder.mkdir(parents=True, exist_ok=True)
        munge.chmod(0o700)
        (munge / "munge.key").write_bytes(os.urandom(1024))
        (munge / "munge.key").chmod(0o600)
        self.conf.write_text(slurm_conf(self.cluster, self.directory, self.munge_socket))
        # `ip netns exec` mounts a fresh /sys, without /sys/fs/cgroup: slurmd's default
        # (autodetect) then fails to start; cgroup/v1 loads, and proctrack/linuxproc and
        # task/none never use it
        (self.directory / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
        head = self.cluster.head
        self._daemon("munged", head, [
            "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
            f"--seed-file={munge}/munged.seed"])
        self._until(self.munge_socket.exists, 10, "munged made no socket")
        self._daemon("slurmctld", head, ["slurmctld", "-D", "-f", str(self.conf)])
        for node in self.cluster.nodes:
            self._daemon(f"slurmd {node}", node,
                         ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
        self._until(self._all_idle, 60, "the nodes did not become idle")

    def _daemon(self, name: str, node: str, command: list[str]) -> None:
        """Start /usr/sbin/`command` in the foreground on `node`; its stderr (munged's log;
        the slurm daemons' before they open theirs) goes to <name>.stderr."""
        with open(self.directory / f"{name.replace(' ', '-')}.stderr", "w") as stderr:
            self.daemons[name] = subprocess.Popen(
                self.cluster.command(node, [str(SBIN / command[0]), *command[1:]]),
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True)

    def _all_idle(self) -> bool:
        shown = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=10).stdout
        return sorted(line.split()[0] for line in shown.splitlines()
                      if line.split()[1:] == ["idle"]) == sorted(self.cluster.nodes)

    def _until(self, ready, seconds: float, failure: str) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            ended = [f"{name} exited {process.returncode}" for name, process in
                     self.daemons.items() if process.poll() is not None]
            if ended or time.monotonic() > deadline:
                raise RuntimeError(f"{failure} ({'; '.join(ended) or f'{seconds} s'}):\n"
                                   + self.logs())
            time.sleep(0.2)

    def logs(self, tail: int = 1500) -> str:
        """The end of every daemon's log, for a failure message."""
        files = sorted(self.directory.glob("*.log")) + sorted(self.directory.glob("*.stderr"))
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
                         for path in files if path.stat().st_size)

    def stop(self) -> None:
        """Cancel every job, then stop the slurmds, slurmctld and munged (in that order)."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--signal=KILL", "--user=root", check=False,
                     timeout=10)
        for name in sorted(self.daemons, key=lambda name: DAEMONS.index(name.split()[0]),
                           reverse=True):
            process = self.daemons.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)

    # ------------------------------------------------------------------ use
    def run(self, *command: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess:
        """A Slurm client command, run in the head namespace."""
        return subprocess.run(self.cluster.command(self.cluster.head, list(command)),
                              env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def submit(self, script: str, output: Path, *options: str, **settings) -> int:
        """sbatch jobs/`script` with `options` (e.g. "-N", "2") and `settings` exported to
        it, from the repository's root; returns the job's id."""
        exports = ",".join(["ALL", *(f"{key}={value}" for key, value in settings.items())])
        done = self.run("sbatch", "--parsable", f"--chdir={ROOT}", f"--output={output}",
                        f"--export={exports}", *options, str(ROOT / "jobs" / script))
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        """`scontrol show job` as a dict of its fields."""
        shown = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        return dict(field.split("=", 1) for field in shown.split() if "=" in field)

    def start_requeued(self, job_id: int, first_start: str, timeout: float = 60) -> None:
        """Start a requeued job now, not after Slurm's requeue delay (AuthInfo's
        cred_expire, 120 s): the new start time is set once the job pends on it, as one set
        while the old run still completes is overwritten. Until then the state may still be
        the first run's: RUNNING while its script ends (the first run began at
        `first_start`, its StartTime), then its end (FAILED, exit 138), though Restarts has
        risen; both are waited through. Then REVOKED_SECONDS more: slurmd refuses a
        credential issued in the second its job's old one was revoked ("Killing
        non-startable batch job: Job credential revoked", exit 1), as the requeue did."""
        deadline = time.monotonic() + timeout
        while (state := self.job(job_id)).get("Reason") != "BeginTime":
            if state.get("JobState") == "RUNNING" and state.get("StartTime") != first_start:
                return  # the new run has started
            assert time.monotonic() < deadline, f"job {job_id} was not requeued: {state}"
            time.sleep(0.2)
        time.sleep(REVOKED_SECONDS)
        self.run("scontrol", "update", f"jobid={job_id}", "starttime=now")

    def wait(self, job_id: int, timeout: float = 120) -> dict:
        """The job's fields once it has ended; an AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job(job_id)
            if state.get("JobState") in ENDED:
                return state
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not end in {timeout} s: {self.job(job_id)}")


@pytest.fixture(scope="session")
def slurm_nodes(cluster, tmp_path_factory):
    """A Slurm over the session's emulated nodes; skips, saying why, where it cannot run."""
    why = unavailable()
    if why:
        pytest.skip(why)
    with SlurmNodes(cluster, tmp_path_factory.mktemp("slurm-nodes")) as slurm:
        yield slurm
