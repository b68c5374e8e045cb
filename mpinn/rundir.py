"""One run directory, one job: the writer rank creates the directory, proves it can write
there and holds a lock file in it until the job ends.

The lock is created atomically (O_CREAT | O_EXCL, which NFS v3 and later honour) and names
its holder: host, pid, the process's start time, the Slurm job, when it started. A second
job is refused while the holder lives. A lock left by a process that is gone is taken
over, with a note: on the same host when that pid no longer runs the same process, and
anywhere when the lock belongs to the same Slurm job (a requeued job on another node).
"""

import errno
import json
import os
import socket
import time
from pathlib import Path

from .errors import ConfigError, StorageError

LOCK_NAME = ".mpinn.lock"


def _process_start(pid: int) -> "str | None":
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a live
    holder from a new process that reuses its pid; None where it cannot be read or the
    process has ended (a zombie not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has ended


def process_running(pid: int, start: "str | None" = None) -> bool:
    """Whether process `pid` runs on this host (and is the one that started at `start`)."""
    if Path("/proc/self/stat").exists():
        now = _process_start(pid)
        return now is not None and start in (None, now)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _gone(holder: dict) -> "str | None":
    """Why the job that holds a lock can be taken to be over, or None while it may live."""
    mine = _holder()
    if (holder.get("slurm_job_id") and holder["slurm_job_id"] == mine["slurm_job_id"]
            and holder.get("slurm_restart_count") != mine["slurm_restart_count"]):
        return (f"it was Slurm job {mine['slurm_job_id']}'s before it was requeued (restart "
                f"{mine['slurm_restart_count']})")
    if holder.get("host") != mine["host"] or not isinstance(holder.get("pid"), int):
        return None
    if process_running(holder["pid"], holder.get("process_start")):
        return None
    return f"process {holder['pid']} on {mine['host']} has ended"


class RunLock:
    """The lock of one directory, held from `acquire` to `release`."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.held = False
        self.note = ""  # what was taken over, for the run's first lines

    def acquire(self) -> "RunLock":
        """Create the directory, and the lock in it; ConfigError when another job holds it,
        StorageError when the directory cannot be written."""
        _prepare_directory(self.directory)
        for _ in range(2):
            if self._create():
                return self
            holder = self._read_holder()
            if holder == {}:
                continue  # released meanwhile
            reason = _gone(holder) if holder is not None else None
            if reason is None:
                raise ConfigError(self._refusal(holder))
            self._take_over(holder, reason)
        raise ConfigError(f"{self.directory}: another job took the lock ({self.path}) at the "
                          "same moment")

    def release(self) -> None:
        if self.held:
            self.held = False
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot write in {self.directory}: {exc.strerror}") from exc
        try:
            os.write(handle, (json.dumps(_holder()) + "\n").encode())
            os.fsync(handle)
        except OSError as exc:
            os.close(handle)
            self.path.unlink(missing_ok=True)
            raise StorageError(f"cannot write {self.path}: {exc.strerror}") from exc
        os.close(handle)
        self.held = True
        return True

    def _read_holder(self) -> "dict | None":
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _take_over(self, holder: dict, reason: str) -> None:
        """Move the stale lock aside (atomically) and remove it; if what was moved is not
        the holder judged gone (another job took over first), put it back."""
        stale = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, stale)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(stale.read_text())
        except (OSError, ValueError):
            moved = None
        if moved != holder:
            os.rename(stale, self.path)
            return
        stale.unlink(missing_ok=True)
        self.note = (f"took over the lock of {self.directory} from pid {holder.get('pid')} "
                     f"on {holder.get('host')}: {reason}")

    def _refusal(self, holder: "dict | None") -> str:
        if holder is None:
            return (f"{self.directory} is locked by another job, and its lock {self.path} "
                    "cannot be read; if no job runs there, remove the lock")
        slurm = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
        return (f"{self.directory} is in use by another job: pid {holder.get('pid')} on "
                f"{holder.get('host')}{slurm}, since {holder.get('started')}; wait for it, "
                f"choose another run.name, or, if that job is gone, remove {self.path}")


def _prepare_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise ConfigError(f"run directory {directory} is a file, not a directory") from exc
    except NotADirectoryError as exc:
        raise ConfigError(f"run directory {directory}: a part of its path is a file") from exc
    except OSError as exc:
        raise StorageError(f"cannot create the run directory {directory}: "
                           f"{exc.strerror or errno.errorcode.get(exc.errno)}") from exc


def probe_writable(path: Path) -> None:
    """OSError unless `path` can be appended to; a file that did not exist is not left."""
    existed = path.exists()
    with path.open("a"):
        pass
    if not existed:
        path.unlink()
