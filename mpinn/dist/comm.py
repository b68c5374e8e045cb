"""The only module that imports mpi4py. `world()` gives an MPI communicator when an MPI
library loads, and a world of one (LocalComm) where none does, so that one process
trains without MPI installed or working. Every wait on another rank goes through
`MPIComm._wait`, which a Watchdog watches (see watchdog.py)."""

import atexit
import contextlib
import functools
import os
import socket
import sys
import time
import traceback

import numpy as np

from ..errors import MpinnError
from .watchdog import Watchdog

# set by the launchers we know: MPICH/Hydra and PMI, Open MPI, PMIx, Slurm's srun
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE",
                           "SLURM_STEP_NUM_TASKS")
# a process's rank in its job: MPICH/Hydra, Open MPI, PMIx, srun
LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
# a process's index among the job's processes on its node: MPICH/Hydra, Open MPI, srun
LAUNCHER_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK",
                                 "SLURM_LOCALID")
# "1" or "0": whether MPI reads and writes GPU memory, for libraries that do not say
GPU_AWARE_VARIABLE = "MPINN_GPU_AWARE_MPI"
OUTPUT_SECONDS = 0.2  # before MPI_Abort, for the launcher to forward this rank's output


class Comm:
    """Buffer-based collectives over flat NumPy buffers (never pickled)."""

    rank = 0
    size = 1
    local_rank = 0  # among the job's processes on this node
    local_size = 1  # the job's processes on this node
    library = "none"
    where = "setup"  # the run's place, for the watchdog's messages: a phrase or (epoch, step)
    waited_seconds = 0.0  # time spent waiting for other ranks
    watched = False  # whether a watchdog watches the waits

    def __init__(self):
        self.before_abort: list = []  # callables run before this rank ends the job

    def watch(self, warn_seconds: float, abort_seconds: float, stop_signal=None) -> None:
        """Warn about waits on other ranks longer than `warn_seconds` and end a stalled job
        after `abort_seconds` (0: never; both 0: MPI's own blocking waits, unwatched).
        `stop_signal()` gives the number of a stop signal received, or None. No MPI call:
        ranks may call it or not (e.g. one whose job file could not be read)."""

    def at(self, where) -> None:
        """The run's place: (epoch, step) counted from 0, (epoch, phase) or a phrase; the
        watchdog tells the other ranks now and then, and names it in its reports."""
        self.where = where

    def reaches(self, device: str) -> bool:
        """Whether MPI calls may be given buffers in `device` memory (e.g. "cuda")."""
        return True  # a world of one passes no buffer to MPI

    def allreduce_sum(self, buffer) -> None:
        """Sum `buffer` over all ranks, in place."""

    def allreduce_max(self, buffer) -> None:
        """Element-wise maximum of `buffer` over all ranks, in place."""

    def broadcast(self, buffer, root: int = 0) -> None:
        """Overwrite `buffer` on every rank with root's, in place."""

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's `data`, in rank order."""
        return [data]

    def iallreduce_sum(self, buffer):
        """Start an in-place sum over ranks; returns the request, for wait_all."""
        raise NotImplementedError("nonblocking collectives need an MPI world")

    def progress(self) -> None:
        """Let MPI advance the nonblocking operations in flight (from any thread)."""

    def alltoall(self, send, receive) -> None:
        """Block r of `send` (cut into `size` equal blocks) to rank r; block r of `receive`
        from rank r."""
        receive.reshape(-1)[...] = send.reshape(-1)

    def allgather(self, buffer) -> None:
        """In place: every rank's block of `buffer` (cut into `size` equal blocks; rank r
        holds block r) to every rank."""

    def gather(self, buffer: np.ndarray, root: int = 0) -> "np.ndarray | None":
        """Every rank's host `buffer` (same shape everywhere) as the rows of a new array
        on `root`; None elsewhere."""
        return buffer[np.newaxis].copy()

    def collect_status(self) -> None:
        """Read the watchdog's status messages that arrived (keeps MPI's queue short)."""

    def isend(self, buffer, dest: int, tag: int):
        """Start sending `buffer`; returns the request, to wait for before `buffer` changes."""
        raise NotImplementedError("point-to-point messages need an MPI world")

    def irecv(self, buffer, source: int, tag: int):
        """Start receiving into `buffer`; returns the request."""
        raise NotImplementedError("point-to-point messages need an MPI world")

    def wait_all(self, requests, operation: str) -> None:
        """Until every request completes (`operation`, "send" or "receive", names the wait
        in the watchdog's reports)."""
        raise NotImplementedError("point-to-point messages need an MPI world")

    def wait_any(self, requests, operation: str) -> int:
        """Until one of the active `requests` completes; returns its index."""
        raise NotImplementedError("point-to-point messages need an MPI world")

    def split(self, color: int) -> "Comm":
        """Collective: the ranks that give the same `color`, in this one's order, as a
        Comm whose waits this one's watchdog watches."""
        raise NotImplementedError("sub-communicators need an MPI world")

    def node(self) -> "Comm":
        """Collective: the ranks on this rank's node, as split makes them."""
        raise NotImplementedError("sub-communicators need an MPI world")

    def shared_memory(self, nbytes: int) -> "SharedMemory | None":
        """`nbytes` of memory of this rank's own that the ranks on its node read and write
        directly; collective over all ranks (see SharedMemory). None on every rank where
        some node's shared-memory filesystem lacks room for what its ranks ask (a
        container's 64 MB /dev/shm): touching memory past that room kills the process."""
        raise NotImplementedError("shared memory between ranks needs an MPI world")

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now, after running `before_abort` (e.g. releasing a
        lock; a failing one is passed over)."""
        for callback in self.before_abort:
            with contextlib.suppress(Exception):
                callback()
        self._end_job(code)

    def _end_job(self, code: int) -> None:
        os._exit(code)

    @property
    def tag(self) -> str:
        """What this rank's lines of output start with: "[rank 1/4 node7] " ("" alone)."""
        return f"[rank {self.rank}/{self.size} {socket.gethostname()}] " if self.size > 1 else ""

    def excepthook(self, kind, error, trace) -> None:
        """sys.excepthook on more than one rank: print the rank-tagged traceback and end
        every rank, so that none waits forever for this one. mpinn's own errors (bad input)
        print one line; one that sets `every_rank` is raised by every rank alike, and rank 0
        alone prints it."""
        if isinstance(error, MpinnError):  # bad input: one line, as `mpinn` says it
            if self.rank == 0 or not getattr(error, "every_rank", False):
                sys.stderr.write(f"{self.tag}mpinn: error: {error}\n")
            self.abort(error.exit_code)
        lines = "".join(traceback.format_exception(kind, error, trace)).rstrip()
        sys.stderr.write("".join(f"{self.tag}{line}\n" for line in lines.splitlines()))
        self.abort(1)


class LocalComm(Comm):
    """A world of one process."""

    def __init__(self, reason: str = "single process"):
        super().__init__()
        self.library = f"none ({reason})"


class MPIComm(Comm):
    def __init__(self, mpi):
        super().__init__()
        self.MPI = mpi
        self.comm = mpi.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.library = mpi.Get_library_version().splitlines()[0].strip()
        self.status = mpi.Status()
        self._progress_comm = self.comm.Dup()  # never carries a message
        node = self.comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        gpu_aware_setting()  # a bad one ends every rank before any collective
        self.watchdog = Watchdog(mpi, self.comm.Dup(), self.abort)
        self.watched = True
        self._windows: list[SharedMemory] = []
        atexit.register(self._before_finalize)  # runs before mpi4py's MPI_Finalize

    def _before_finalize(self) -> None:
        """Read the watchdog's last messages and free the shared memory still held (a
        stopped run never frees it): MPI_Finalize over libfabric (MPICH's OFI, across
        nodes) fails with "fabricclose ... Device or resource busy" while a window lives.
        Collective over each node's ranks, as every rank ends here together (a rank that
        fails ends the job with MPI_Abort instead)."""
        self.watchdog.close()
        for memory in self._windows:
            memory.release()

    def watch(self, warn_seconds, abort_seconds, stop_signal=None):
        self.watched = bool(warn_seconds or abort_seconds)
        self.watchdog.configure(warn_seconds, abort_seconds, stop_signal or (lambda: None))

    def at(self, where):
        self.where = where
        if self.watched:
            self.watchdog.progress(where)

    def collect_status(self):
        if self.watched:
            self.watchdog.collect()

    @property
    def waited_seconds(self):
        return self.watchdog.waited_seconds

    def _wait(self, request, operation: str, status=None) -> None:
        if self.watched:
            self.watchdog.wait(request, operation, self.where, status)
        else:
            request.Wait(status)

    def reaches(self, device):
        """MPINN_GPU_AWARE_MPI when set, else what MPI 4.1's `mpi_memory_alloc_kinds` lists
        (e.g. "system,mpi,cuda:device")."""
        setting = gpu_aware_setting()
        if setting is not None:
            return setting == "1"
        info = self.comm.Get_info()
        try:
            kinds = (info.Get("mpi_memory_alloc_kinds") or "").split(",")
        finally:
            info.Free()
        return any(kind.split(":")[0] == device and kind.split(":")[1:] in ([], ["device"])
                   for kind in kinds)

    def allreduce_sum(self, buffer):
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM),
                   "allreduce")

    def broadcast(self, buffer, root=0):
        self._wait(self.comm.Ibcast(buffer, root=root), "broadcast")

    def allreduce_max(self, buffer):
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.MAX),
                   "allreduce")

    def allgather_bytes(self, data):
        sizes = np.zeros(self.size, np.int64)
        sizes[self.rank] = len(data)
        self.allreduce_sum(sizes)
        gathered = np.empty(int(sizes.sum()), np.uint8)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._wait(self.comm.Iallgatherv(np.frombuffer(data, np.uint8),
                                         [gathered, sizes, offsets, self.MPI.BYTE]),
                   "allgather")
        return [gathered[start:start + size].tobytes()
                for start, size in zip(offsets, sizes, strict=True)]

    def iallreduce_sum(self, buffer):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def progress(self):
        # a probe runs MPI's progress engine (MPICH, Open MPI) without touching the
        # requests, which another thread may be waiting on
        self._progress_comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG)

    def alltoall(self, send, receive):
        self._wait(self.comm.Ialltoall(send, receive), "alltoall")

    def allgather(self, buffer):
        self._wait(self.comm.Iallgather(self.MPI.IN_PLACE, buffer), "allgather")

    def gather(self, buffer, root=0):
        rows = np.empty((self.size, *buffer.shape), buffer.dtype) if self.rank == root else None
        self._wait(self.comm.Igather(np.ascontiguousarray(buffer), rows, root=root), "gather")
        return rows

    def isend(self, buffer, dest, tag):
        return self.comm.Isend(buffer, dest=dest, tag=tag)

    def irecv(self, buffer, source, tag):
        return self.comm.Irecv(buffer, source=source, tag=tag)

    def wait_all(self, requests, operation):
        if requests:
            self._wait(_AllOf(self.MPI, requests), operation)

    def wait_any(self, requests, operation):
        first = _AnyOf(self.MPI, requests)
        self._wait(first, operation)
        return first.index

    def split(self, color):
        return _SubComm(self, self.comm.Split(color, self.rank))

    def node(self):
        return _SubComm(self, self.comm.Split_type(self.MPI.COMM_TYPE_SHARED))

    def shared_memory(self, nbytes):
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        asked = np.array([float(nbytes)])
        self._wait(node.Iallreduce(self.MPI.IN_PLACE, asked, op=self.MPI.SUM), "allreduce")
        short = np.array([float(asked[0] * SHARED_MEMORY_MARGIN > _shared_memory_room())])
        self.allreduce_max(short)
        if short[0]:
            node.Free()
            return None
        info = self.MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # each rank's pages its own, near it
        try:
            window = self.MPI.Win.Allocate_shared(nbytes, 1, info, comm=node)
        finally:
            info.Free()
        ranks = self.MPI.Group.Translate_ranks(node.Get_group(), range(node.Get_size()),
                                               self.comm.Get_group())
        memory = SharedMemory(window, node, dict(zip(ranks, range(len(ranks)), strict=True)),
                              self.MPI)
        self._windows = [*[held for held in self._windows if held.window is not None], memory]
        return memory

    def _end_job(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(OUTPUT_SECONDS)  # the launcher forwards what was printed before it kills
        self.MPI.COMM_WORLD.Abort(code)
        os._exit(code)  # MPI_Abort may return once it has told the launcher


class _SubComm(MPIComm):
    """Some of `parent`'s ranks (see Comm.split): its waits are the parent's watchdog's,
    at the parent's place in the run."""

    def __init__(self, parent: MPIComm, comm):  # not MPIComm.__init__: no new world
        Comm.__init__(self)
        self.parent, self.MPI, self.comm = parent, parent.MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.library, self.status = parent.library, parent.MPI.Status()
        self._progress_comm, self.watchdog = parent._progress_comm, parent.watchdog
        self.before_abort = parent.before_abort
        # the parent's rank of each of its ranks
        self.ranks = [int(rank) for rank in parent.MPI.Group.Translate_ranks(
            comm.Get_group(), range(self.size), parent.comm.Get_group())]

    @property
    def watched(self):
        return self.parent.watched

    @property
    def where(self):
        return self.parent.where

    def at(self, where):
        self.parent.at(where)

    def abort(self, code=1):
        self.parent.abort(code)

    def free(self) -> None:
        """Collective over its ranks: the communicator is gone."""
        self.comm.Free()


SHARED_MEMORY = "/dev/shm"  # where MPICH and Open MPI keep a node's shared memory
SHARED_MEMORY_MARGIN = 1.25  # room left for MPI's own segments


def _shared_memory_room() -> int:
    """Bytes free in the node's shared-memory filesystem (0 where there is none)."""
    try:
        found = os.statvfs(SHARED_MEMORY)
    except OSError:
        return 0
    return found.f_bavail * found.f_frsize


class SharedMemory:
    """Memory every rank allocated, which the ranks of its node read and write as their
    own (an MPI shared-memory window on the node). Writes are seen by another rank after
    the writer's `sync`, a message from writer to reader, and the reader's `sync`."""

    def __init__(self, window, node, node_ranks: dict, mpi):
        self.window, self.node, self.node_ranks, self.MPI = window, node, node_ranks, mpi
        window.Lock_all(mpi.MODE_NOCHECK)  # the epoch `sync` needs, for the window's life

    def near(self, rank: int) -> bool:
        """Whether `rank` shares this rank's node (and its memory)."""
        return rank in self.node_ranks

    def array(self, rank: int, shape, dtype) -> np.ndarray:
        """The memory of `rank`, a rank of this node (itself included), as an array (its
        start: MPI may round the memory up)."""
        memory, _ = self.window.Shared_query(self.node_ranks[rank])
        count = int(np.prod(shape))
        return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)

    def sync(self) -> None:
        self.window.Sync()

    def free(self) -> None:
        """Collective over all ranks; the memory is gone (nothing may use it after)."""
        self.window.Unlock_all()
        self.window.Free()
        self.node.Free()
        self.window = None

    def release(self) -> None:
        """`free`, where it was not called yet and MPI still runs."""
        if self.window is not None and not self.MPI.Is_finalized():
            self.free()


class _AllOf:
    """Requests that complete together, waited on as one request is."""

    def __init__(self, mpi, requests):
        self.MPI, self.requests = mpi, requests

    def Test(self, status=None) -> bool:  # noqa: N802 - mpi4py's names: _wait calls them
        return self.MPI.Request.Testall(self.requests)

    def Wait(self, status=None) -> None:  # noqa: N802
        self.MPI.Request.Waitall(self.requests)


class _AnyOf(_AllOf):
    """The first of several requests to complete; `index` says which."""

    index = None

    def Test(self, status=None) -> bool:  # noqa: N802
        self.index, done = self.MPI.Request.Testany(self.requests)
        return done

    def Wait(self, status=None) -> None:  # noqa: N802
        self.index = self.MPI.Request.Waitany(self.requests)


def gpu_aware_setting() -> "str | None":
    """MPINN_GPU_AWARE_MPI: "1", "0" or None (unset), read when asked: the world is made
    once per process."""
    setting = os.environ.get(GPU_AWARE_VARIABLE, "").strip() or None
    if setting not in (None, "0", "1"):
        raise MpinnError(f"environment variable {GPU_AWARE_VARIABLE}={setting!r} must be 1 or 0")
    return setting


def launched_size() -> int:
    """The world size a launcher announced in the environment (1 when none did)."""
    for name in LAUNCHER_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def launched_rank() -> int:
    """This process's rank as its launcher announced it (0 when none did), for output
    before MPI is up."""
    for name in LAUNCHER_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def launched_local_rank() -> int:
    """This process's index on its node as its launcher announced it (0 when none did);
    `Comm.local_rank` is MPI's own answer, once MPI is up."""
    for name in LAUNCHER_LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


@functools.cache
def world() -> Comm:
    """The job's communicator, made once per process: MPI's world, or a world of one where
    MPI cannot load. On more than one rank an uncaught exception ends every rank (see
    Comm.excepthook), as under `python -m mpi4py`."""
    comm = _connect()
    if comm.size > 1:
        sys.excepthook = comm.excepthook
    return comm


def _connect() -> Comm:
    # mpinn's windows are node-local shared memory (Open MPI's osc/sm); where UCX has no
    # RMA transport (e.g. a workstation), osc/ucx prints an error on every rank as it
    # declines each window. A setting of the user's own wins.
    os.environ.setdefault("OMPI_MCA_osc", "^ucx")
    try:
        from mpi4py import MPI
    except Exception as exc:  # noqa: BLE001 - any failure to load MPI means: no MPI
        if launched_size() > 1:
            raise MpinnError(
                f"launched as one of {launched_size()} processes, but mpi4py cannot load an "
                f"MPI library: {exc}"
            ) from exc
        return LocalComm(f"mpi4py unavailable: {exc}")
    comm = MPIComm(MPI)
    if comm.size == 1 and launched_size() > 1:
        # e.g. plain `srun` without a PMI plugin: every process would train alone
        raise MpinnError(
            f"launched as one of {launched_size()} processes, but MPI sees a world of 1: the "
            "launcher does not match the MPI library (use mpirun, or srun --mpi=pmi2)")
    return comm


def sums(comm: Comm, values) -> np.ndarray:
    """Element-wise sum over ranks of a small float64 vector (a copy)."""
    buffer = np.array(values, dtype=np.float64)
    comm.allreduce_sum(buffer)
    return buffer
