"""A real single-node Slurm on this machine: munge, slurmctld and slurmd on localhost with
a generated slurm.conf, started once for the session. Every test here skips, with the
reason, where the packages are missing or the daemons cannot start (`.ci/run` installs
Debian's slurmctld, slurmd, slurm-client and munge)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(directory: Path, host: str) -> str:
    return f"""
ClusterName=mpinntest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
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
NodeName={host} NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class Slurm:
    def __init__(self, directory: Path, conf: Path):
        self.directory = directory
        self.env = {**os.environ, "SLURM_CONF": str(conf), "OPENBLAS_NUM_THREADS": "1",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def run(self, *command, check=True, timeout=60):
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def submit(self, script: str, output: Path, **settings) -> int:
        exports = ",".join(["ALL", *(f"{key}={value}" for key, value in settings.items())])
        done = self.run("sbatch", "--parsable", f"--chdir={ROOT}", f"--output={output}",
                        f"--export={exports}", str(ROOT / "jobs" / script))
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        shown = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        return dict(field.split("=", 1) for field in shown.split() if "=" in field)

    def wait(self, job_id: int, timeout=240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job(job_id)
            if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                         "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY"):
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not end in {timeout} s: {self.job(job_id)}")


def start_daemons(directory: Path) -> Slurm:
    missing = [name for name in BINARIES if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    if missing:
        pytest.skip(f"Slurm is not installed here (missing {', '.join(missing)}); "
                    "apt-get install slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm runs its daemons as root, and this is not root")
    for sub in ("state", "spool"):
        (directory / sub).mkdir(parents=True)
    conf = directory / "slurm.conf"
    conf.write_text(slurm_conf(directory, socket.gethostname().split(".")[0]))
    slurm = Slurm(directory, conf)
    if slurm.run("munge", "-n", check=False).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        started = slurm.run("/usr/sbin/munged", "--force", check=False)
        if started.returncode != 0:
            pytest.skip(f"munged did not start: {started.stderr.strip()}")
    for daemon in ("slurmctld", "slurmd"):
        started = slurm.run(f"/usr/sbin/{daemon}", "-f", str(conf), check=False)
        if started.returncode != 0:
            pytest.skip(f"{daemon} did not start: {started.stderr.strip()}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "idle" in slurm.run("sinfo", "-h", "-o", "%t", check=False).stdout:
            return slurm
        time.sleep(0.5)
    logs = (directory / "slurmd.log").read_text()[-500:] if (directory / "slurmd.log").exists() \
        else ""
    pytest.skip(f"the test Slurm node did not become idle in 30 s: {logs}")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slurm")
    cluster = start_daemons(directory)
    yield cluster
    cluster.run("scancel", "--full", "--signal=KILL", "--user=root", check=False)
    time.sleep(1)
    for daemon in ("slurmd", "slurmctld"):
        pid_file = directory / f"{daemon}.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
