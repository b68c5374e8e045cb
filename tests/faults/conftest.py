"""Black-box fault tests: real `mpiexec` jobs of the `mpinn` command, a failure injected
from outside (a stopped rank, a signal, a full or read-only file system, a second job, a
crafted file), each under a hard timeout, asserting the exit code, the time to exit, the
message and the files left. No test may leave a process behind: every job carries a
marker in its environment, and the fixture fails a test whose processes outlive it."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
MPINN = str(BIN / "mpinn") if (BIN / "mpinn").exists() else shutil.which("mpinn")
MARKER = "MPINN_FAULT_TEST"

# a small job that trains for long enough to be interrupted; the watchdog in seconds
JOB = """
[run]
name = "fault"
directory = "{directory}"
seed = 3

[model]
layers = [
    {{ type = "dense", units = {units}, activation = "relu" }},
    {{ type = "dense", units = 10, activation = "softmax" }},
]

[training]
epochs = {epochs}
batch_size = {batch_size}
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]

[checkpoint]
keep = {keep}

[watchdog]
warn_seconds = {warn}
abort_seconds = {abort}
"""


def write_job(path: Path, directory: Path, epochs=1000, keep=3, warn=2.0, abort=6.0,
              units=32, batch_size=16, extra="") -> Path:
    path.write_text(JOB.format(directory=directory, epochs=epochs, keep=keep, warn=warn,
                               abort=abort, units=units, batch_size=batch_size) + extra)
    return path


class Job:
    """One launched job: `mpiexec -n RANKS mpinn ARGS` (or `mpinn ARGS` with ranks=None),
    in its own session, its output collected."""

    def __init__(self, command, cwd, env, marker):
        self.marker = marker
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.stdout = self.stderr = ""
        self.seconds = None

    def rank_pid(self, rank: int, timeout: float = 30) -> int:
        """The pid of the process that is rank `rank` (waits for it to appear)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, environment in marked_processes(self.marker):
                if environment.get("PMI_RANK") == str(rank):  # set by mpiexec (Hydra)
                    return pid
            assert self.process.poll() is None, self.finish()
            time.sleep(0.05)
        raise AssertionError(f"rank {rank} did not start")

    def signal(self, signum) -> float:
        """Send `signum` to mpiexec, as a shell or Slurm would; returns when."""
        self.process.send_signal(signum)
        return time.monotonic()

    def finish(self, timeout: float = 60) -> "Job":
        try:
            self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_marked(self.marker)
            self.stdout, self.stderr = self.process.communicate()
            raise AssertionError(f"the job did not end within {timeout} s: "
                                 f"{self.stderr}") from None
        self.seconds = time.monotonic() - self.started
        return self

    @property
    def returncode(self):
        return self.process.returncode


def marked_processes(marker: str):
    """(pid, environment) of every live process whose environment holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{MARKER}={marker}".encode() not in raw:
            continue
        environment = dict(item.split("=", 1) for item in raw.decode(errors="replace")
                           .split("\0") if "=" in item)
        found.append((int(entry.name), environment))
    return found


def kill_marked(marker: str) -> list[int]:
    pids = [pid for pid, _ in marked_processes(marker)]
    for pid in pids:
        for signum in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    return pids


@pytest.fixture
def launch(tmp_path):
    """launch(ranks, *mpinn_args, env=None, wrap=()) -> Job; `wrap` prefixes the command
    (e.g. unshare). At teardown, any process the test left behind fails it."""
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or the mpinn command is not installed (pip install -e '.[dev]')")
    marker = uuid.uuid4().hex
    jobs = []

    def start(ranks, *args, env=None, wrap=(), mpmd=None):
        if mpmd is not None:  # [(ranks, args, env[, work dir]), ...]: several programs
            command = [MPIEXEC]
            for index, (count, arguments, own, *directory) in enumerate(mpmd):
                settings = [word for item in own.items() for word in ("-env", *item)]
                settings += ["-wdir", str(directory[0])] if directory else []
                command += [*([":"] if index else []), "-n", str(count), *settings, MPINN,
                            *arguments]
        else:
            command = [MPINN, *args] if ranks is None else [MPIEXEC, "-n", str(ranks),
                                                             MPINN, *args]
        environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", MARKER: marker,
                       **(env or {})}
        job = Job([*wrap, *command], tmp_path, environment, marker)
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        if job.process.poll() is None:
            job.process.kill()
            job.process.communicate()
    deadline = time.monotonic() + 5  # mpiexec's last ranks may take a moment to go
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = kill_marked(marker)
    assert not left, f"the test left processes behind: {left}"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def private_mounts_work() -> bool:
    """Whether this process may mount a tmpfs in a private mount namespace (root)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0
