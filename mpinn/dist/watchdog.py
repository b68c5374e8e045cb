"""Every wait on another rank, watched: a stalled rank is named, then the job ends.

A wait polls its MPI request back to back for a millisecond, then yields the core with
`sleep(0)` every 16 polls up to 50 ms. Measured on two hyper-threads of one core: a bare
polling loop for a slower rank stole up to 30% of the computing sibling's speed, while a
yield after every poll made a 2.7 MB Allreduce 50% slower (MPI progresses only while
polled). Past 50 ms it sleeps between polls, longer the longer it has waited (a twentieth
of the time so far, at most `MAX_POLL_SECONDS`), so a rank waiting for minutes uses
almost no CPU.

Who is late cannot be seen inside a collective, so the waiting ranks say it: a rank that
has waited half the warning time tells every other rank which operation it waits in
(and, when that wait ends, that it goes on). At the warning time the lowest-numbered
waiting rank prints the ranks it has not heard from, and again every warning interval; at
the abort time it prints once more and ends every rank with `EXIT_STALLED`. The other
waiting ranks stay silent and end the job themselves a few seconds later if that rank
could not. Status messages travel on a communicator of their own, so they never meet
the job's data.

A stop signal (SIGTERM, SIGUSR1, SIGINT) that arrives during a wait that does not end
within `STOP_GRACE_SECONDS` raises `StalledStop` on rank 0, whose caller can write a
checkpoint before ending the job; the other ranks end the job themselves if rank 0 has
not done so shortly after (it may be the rank that stalled).
"""

import signal
import sys
import time

import numpy as np

EXIT_STALLED = 4
BUSY_SECONDS = 0.001  # polls back to back: a healthy exchange completes at full speed
SPIN_SECONDS = 0.05  # then yields the core every YIELD_EVERY polls
YIELD_EVERY = 16
MAX_POLL_SECONDS = 0.01
STOP_GRACE_SECONDS = 3.0
FOLLOWER_DELAY_SECONDS = 5.0  # how long the silent waiting ranks give the reporting one
CHECKPOINT_SECONDS = 60.0  # how long the others give rank 0 to checkpoint on a stop
STATUS_TAG = 1
WAITING, RESUMED = 1, 0
OPERATIONS = ("allreduce", "broadcast", "send", "receive", "allgather")


class StalledStop(Exception):
    """A stop signal arrived while this rank waited for ranks that did not come."""

    def __init__(self, signum: int, report: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} while {report}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def ranks_text(ranks) -> str:
    """ "rank 3" or "ranks 1, 4-7"."""
    ranks = sorted(ranks)
    runs, start = [], None
    for index, rank in enumerate(ranks):
        if start is None:
            start = rank
        if index + 1 == len(ranks) or ranks[index + 1] != rank + 1:
            runs.append(str(start) if start == rank else f"{start}-{rank}")
            start = None
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(runs)


def where_text(where) -> str:
    """The place in a run a wait belongs to: (epoch, step) counted from 0, or a phrase."""
    if isinstance(where, tuple):
        epoch, step = where
        return f"epoch {epoch + 1} step {step + 1}" if isinstance(step, int) else (
            f"epoch {epoch + 1} {step}")
    return where


class Watchdog:
    """Watches waits on an MPI communicator's requests (see the module's doc)."""

    def __init__(self, mpi, comm, warn_seconds: float = 60.0, abort_seconds: float = 600.0,
                 stop_signal=lambda: None, abort=None):
        self.MPI = mpi
        self.monitor = comm.Dup()  # status messages only
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.warn_seconds, self.abort_seconds = warn_seconds, abort_seconds
        deadlines = [seconds for seconds in (warn_seconds, abort_seconds) if seconds]
        self.announce_seconds = min(deadlines, default=0) / 2
        self.stop_signal = stop_signal  # () -> the number of a pending stop signal, or None
        self.abort = abort or comm.Abort
        self.waited_seconds = 0.0  # all waits so far
        self.others: dict[int, str] = {}  # rank -> what it said it waits in
        self._sending: list = []  # (request, message) until sent
        self._probe = mpi.Status()

    def wait(self, request, operation: str, where, status=None) -> None:
        """Until `request` completes; `where` names the run's place for messages."""
        started = time.perf_counter()
        polls = 0
        try:
            while not request.Test(status):
                polls += 1
                if polls % YIELD_EVERY == 0:
                    waited = time.perf_counter() - started
                    if waited > BUSY_SECONDS:
                        time.sleep(0)
                    if waited > SPIN_SECONDS:
                        self._wait_long(request, operation, where, status, started)
                        return
        finally:
            self.waited_seconds += time.perf_counter() - started

    def _wait_long(self, request, operation, where, status, started) -> None:
        announced, warned_at, signalled_at = False, None, None
        while not request.Test(status):
            now = time.perf_counter()
            waited = now - started
            self.collect()
            if signalled_at is None and self.stop_signal() is not None:
                signalled_at = now
                if not announced:
                    announced = self._announce(WAITING, operation, where)
            if not announced and waited >= self.announce_seconds:
                announced = self._announce(WAITING, operation, where)
            if signalled_at is not None:
                self._stop_if_stalled(now - signalled_at, operation, where, waited)
            if self.abort_seconds and waited >= self.abort_seconds:
                self._end(f"{where_text(where)}: {operation} waited {waited:.0f} s for "
                          f"{self._missing()}; ending the job (exit {EXIT_STALLED})",
                          EXIT_STALLED, waited - self.abort_seconds)
            if self.warn_seconds and waited >= self.warn_seconds and (
                    warned_at is None or waited - warned_at >= self.warn_seconds):
                warned_at = waited
                if self._reports():
                    self._say(f"{where_text(where)}: {operation} still waiting for "
                              f"{self._missing()} after {waited:.0f} s")
            time.sleep(min(MAX_POLL_SECONDS, waited / 20))
        if announced:
            self._announce(RESUMED, operation, where)

    def _stop_if_stalled(self, since_signal, operation, where, waited) -> None:
        if since_signal < STOP_GRACE_SECONDS:
            return
        report = (f"{operation} at {where_text(where)} waited {waited:.0f} s for "
                  f"{self._missing()}")
        if self.rank == 0:
            raise StalledStop(self.stop_signal(), report)
        # rank 0 ends the job once it has checkpointed; if it does not, it is stalled too
        patience = CHECKPOINT_SECONDS if 0 in self.others else 2 * STOP_GRACE_SECONDS
        name = signal.Signals(self.stop_signal()).name
        self._end(f"stopped by {name} while {report}; rank 0 did not respond, so no "
                  "checkpoint was written", 128 + self.stop_signal(), since_signal - patience)

    def _end(self, message: str, code: int, overdue: float) -> None:
        """The reporting rank ends the job at once; the others only if it could not."""
        if overdue < 0:
            return
        if self._reports():
            self._say(message)
            self.abort(code)
        elif overdue >= FOLLOWER_DELAY_SECONDS:
            self.abort(code)

    # -------------------------------------------------------------- status messages
    def _announce(self, state: int, operation: str, where) -> bool:
        epoch, step = where if isinstance(where, tuple) else (-1, -1)
        message = np.array([state, OPERATIONS.index(operation), epoch,
                            step if isinstance(step, int) else -1], np.int64)
        self._sending = [(request, sent) for request, sent in self._sending
                         if not request.Test()]
        self._sending += [(self.monitor.Isend(message, dest=rank, tag=STATUS_TAG), message)
                          for rank in range(self.size) if rank != self.rank]
        return True

    def collect(self) -> None:
        """Read the status messages that have arrived (cheap when there are none)."""
        message = np.zeros(4, np.int64)
        while self.monitor.Iprobe(self.MPI.ANY_SOURCE, STATUS_TAG, self._probe):
            source = self._probe.Get_source()
            self.monitor.Recv(message, source=source, tag=STATUS_TAG)
            state, operation, epoch, step = (int(value) for value in message)
            if state == WAITING:
                place = (where_text((epoch, step)) if step >= 0 else
                         f"epoch {epoch + 1}" if epoch >= 0 else "")
                self.others[source] = f"{OPERATIONS[operation]} {place}".strip()
            else:
                self.others.pop(source, None)

    def _missing(self) -> str:
        silent = set(range(self.size)) - set(self.others) - {self.rank}
        if silent:
            return ranks_text(silent)
        return "ranks that all wait too (" + "; ".join(
            f"rank {rank}: {what}" for rank, what in sorted(self.others.items())) + ")"

    def _reports(self) -> bool:
        """Whether this rank is the lowest-numbered one known to be waiting."""
        return all(rank > self.rank for rank in self.others)

    def _say(self, message: str) -> None:
        sys.stderr.write(f"mpinn: {message}\n")
        sys.stderr.flush()
