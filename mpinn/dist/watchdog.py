"""Every wait on another rank, watched: a stalled rank is named, then the job ends.

Polling. A wait polls its MPI request back to back for a millisecond, then yields the core
with `sleep(0)` every 16 polls up to half a second, then sleeps a millisecond between
polls, so that a rank waiting for minutes uses almost no CPU. Measured on two
hyper-threads of one core: a bare polling loop for a slower rank stole up to 30% of the
computing sibling's speed, a yield after every poll made a 2.7 MB Allreduce 50% slower,
and 10 ms sleeps slowed a 400 MB one by 10% (MPI progresses only while polled).

Who is late cannot be seen inside a collective, so the ranks say it, on a communicator of
their own (status messages never meet the job's data):
- every rank tells the others where it is (a beat: epoch and step) at most every
  `beat_seconds` (half the warning time), from its steps and waits;
- a rank that has waited `beat_seconds` tells the others which operation it waits in,
  and, when that wait ends, that it goes on.

A waiting rank thus knows, of every other rank, whether it waits too, is busy (heard from
lately), or is silent. At the warning time the lowest-numbered waiting rank prints the
ranks it waits for, and again every warning interval. At the abort time it ends every
rank with `EXIT_STALLED`, provided some rank is silent or every rank waits (a deadlock):
ranks that are busy (a slow parameter-server worker, a long epoch) are not a stall. The
other waiting ranks end the job a few seconds later if that rank could not.

A stop signal (SIGTERM, SIGUSR1, SIGINT) during a wait that does not end within
`STOP_GRACE_SECONDS` raises `StalledStop` on rank 0, whose caller can write a checkpoint
before ending the job; the other ranks end the job themselves if rank 0 has not done so
shortly after (it may be the rank that stalled).
"""

import signal
import sys
import time

import numpy as np

EXIT_STALLED = 4
BUSY_SECONDS = 0.001  # polls back to back: an exchange completes at full speed
YIELD_SECONDS = 0.5  # then yields the core every YIELD_EVERY polls
YIELD_EVERY = 16
POLL_SECONDS = 0.001  # then sleeps this long between polls
STOP_GRACE_SECONDS = 3.0
FOLLOWER_DELAY_SECONDS = 5.0  # how long the silent waiting ranks give the reporting one
CHECKPOINT_SECONDS = 60.0  # how long the others give a waiting rank 0 to checkpoint
STATUS_TAG = 1
BEAT, WAITING, RESUMED = 0, 1, 2
OPERATIONS = ("allreduce", "broadcast", "send", "receive", "allgather", "gather", "alltoall")


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
    """Watches the waits on one MPI communicator's requests (see the module's doc);
    `monitor` is a communicator of its own for the status messages."""

    def __init__(self, mpi, monitor, abort, warn_seconds: float = 60.0,
                 abort_seconds: float = 600.0, stop_signal=lambda: None):
        self.MPI, self.monitor, self.abort = mpi, monitor, abort
        self.rank, self.size = monitor.Get_rank(), monitor.Get_size()
        self.configure(warn_seconds, abort_seconds, stop_signal)
        self.waited_seconds = 0.0  # all waits so far
        self.heard: dict[int, tuple] = {}  # rank -> (when, state, what it said)
        self._next_beat = 0.0
        self._sending: list = []  # (request, message) until sent
        # a receive always posted for each other rank's status messages: none of them is
        # left unexpected at the end (MPI libraries warn of those; UCX across nodes does)
        self._peers = [rank for rank in range(self.size) if rank != self.rank]
        self._inbox = np.zeros((self.size, 4), np.int64)
        self._receiving = [self._receive(rank) for rank in self._peers]

    def configure(self, warn_seconds: float, abort_seconds: float, stop_signal) -> None:
        self.warn_seconds, self.abort_seconds = warn_seconds, abort_seconds
        self.stop_signal = stop_signal  # () -> the number of a pending stop signal, or None
        deadlines = [seconds for seconds in (warn_seconds, abort_seconds) if seconds]
        self.beat_seconds = min(deadlines, default=60.0) / 2

    def progress(self, where) -> None:
        """This rank is at `where`: tell the others, if it has not lately."""
        now = time.perf_counter()
        if now >= self._next_beat:
            self._next_beat = now + self.beat_seconds
            self._announce(BEAT, 0, where)
            self.collect()

    def wait(self, request, operation: str, where, status=None) -> None:
        """Until `request` completes; `where` names the run's place for messages."""
        started = time.perf_counter()
        if started >= self._next_beat:
            self.progress(where)
        polls = 0
        try:
            while not request.Test(status):
                polls += 1
                if polls % YIELD_EVERY == 0:
                    waited = time.perf_counter() - started
                    if waited > BUSY_SECONDS:
                        time.sleep(0)
                    if waited > YIELD_SECONDS:
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
            if not announced and (signalled_at is not None or waited >= self.beat_seconds):
                announced = self._announce(WAITING, OPERATIONS.index(operation), where)
            if signalled_at is not None:
                self._stop_if_stalled(now - signalled_at, operation, where, waited)
            if self.abort_seconds and waited >= self.abort_seconds and self._stalled(now):
                self._end(f"{where_text(where)}: {operation} waited {waited:.0f} s for "
                          f"{self._missing(now)}; ending the job (exit {EXIT_STALLED})",
                          EXIT_STALLED, waited - self.abort_seconds)
            if self.warn_seconds and waited >= self.warn_seconds and (
                    warned_at is None or waited - warned_at >= self.warn_seconds):
                warned_at = waited
                if self._reports():
                    self._say(f"{where_text(where)}: {operation} still waiting after "
                              f"{waited:.0f} s for {self._missing(now)}")
            time.sleep(POLL_SECONDS)
        if announced:
            self._announce(RESUMED, OPERATIONS.index(operation), where)

    def _stop_if_stalled(self, since_signal, operation, where, waited) -> None:
        if since_signal < STOP_GRACE_SECONDS:
            return
        now = time.perf_counter()
        report = (f"{operation} at {where_text(where)} waited {waited:.0f} s for "
                  f"{self._missing(now)}")
        if self.rank == 0:
            raise StalledStop(self.stop_signal(), report)
        # rank 0 ends the job once it has checkpointed; if it does not, it is stalled too
        waiting = self.heard.get(0, (0, BEAT))[1] == WAITING
        patience = CHECKPOINT_SECONDS if waiting else 2 * STOP_GRACE_SECONDS
        name = signal.Signals(self.stop_signal()).name
        self._end(f"stopped by {name} while {report}; rank 0 did not respond, so no "
                  "checkpoint was written", 128 + self.stop_signal(), since_signal - patience)

    def _end(self, message: str, code: int, overdue: float) -> None:
        """The reporting rank ends the job at once; another only if it could not, saying
        why itself."""
        if overdue < 0 or not (self._reports() or overdue >= FOLLOWER_DELAY_SECONDS):
            return
        self._say(message)
        self.abort(code)

    # -------------------------------------------------------------- status messages
    def _announce(self, state: int, operation: int, where) -> bool:
        epoch, step = where if isinstance(where, tuple) else (-1, -1)
        message = np.array([state, operation, epoch, step if isinstance(step, int) else -1],
                           np.int64)
        self._sending = [(request, sent) for request, sent in self._sending
                         if not request.Test()]
        self._sending += [(self.monitor.Isend(message, dest=rank, tag=STATUS_TAG), message)
                          for rank in range(self.size) if rank != self.rank]
        return True

    def _receive(self, source: int):
        return self.monitor.Irecv(self._inbox[source], source=source, tag=STATUS_TAG)

    def collect(self) -> None:
        """Read the status messages that have arrived (cheap when there are none)."""
        while self._receiving:
            arrived = self.MPI.Request.Testsome(self._receiving)
            if not arrived:
                return
            for index in arrived:
                source = self._peers[index]
                state, operation, epoch, step = (int(value) for value in self._inbox[source])
                place = (where_text((epoch, step)) if step >= 0 else
                         f"epoch {epoch + 1}" if epoch >= 0 else "setup")
                said = f"{OPERATIONS[operation]} at {place}" if state == WAITING else place
                self.heard[source] = (time.perf_counter(), state, said)
                self._receiving[index] = self._receive(source)

    def close(self) -> None:
        """Before MPI finalizes: read what arrived, withdraw the posted receives and let
        this rank's own messages go out."""
        if self.MPI.Is_finalized():
            return
        self.collect()
        for request in self._receiving:
            request.Cancel()
        self.MPI.Request.Waitall(self._receiving)
        self._receiving = []
        self.MPI.Request.Waitall([request for request, _ in self._sending])
        self._sending = []

    def _silent(self, rank: int, now: float) -> bool:
        """Not waiting, and not heard from for two beats."""
        when, state, _ = self.heard.get(rank, (-float("inf"), BEAT, ""))
        return state != WAITING and now - when > 2 * self.beat_seconds

    def _waiting(self) -> set[int]:
        return {rank for rank, (_, state, _) in self.heard.items() if state == WAITING}

    def _stalled(self, now: float) -> bool:
        """Some rank is silent, or every rank waits (a deadlock)."""
        others = set(range(self.size)) - {self.rank}
        return any(self._silent(rank, now) for rank in others) or others <= self._waiting()

    def _missing(self, now: float) -> str:
        """The ranks waited for: silent ones, with where they were last; the others, with
        when they were heard from and where (busy: a slow worker, a long write)."""
        others = set(range(self.size)) - {self.rank} - self._waiting()
        if not others:
            return "ranks that all wait too (" + "; ".join(
                f"rank {rank}: {self.heard[rank][2]}" for rank in sorted(self._waiting())) + ")"
        parts = []
        for rank in sorted(others):
            when, _, said = self.heard.get(rank, (None, BEAT, ""))
            if when is None:
                parts.append(f"rank {rank} (not heard from)")
            elif self._silent(rank, now):
                parts.append(f"rank {rank} (silent for {now - when:.0f} s, last at {said})")
            else:
                parts.append(f"rank {rank} (heard {now - when:.0f} s ago, at {said})")
        return ", ".join(parts)

    def _reports(self) -> bool:
        """Whether this rank is the lowest-numbered one known to be waiting."""
        return all(rank > self.rank for rank in self._waiting())

    def _say(self, message: str) -> None:
        sys.stderr.write(f"mpinn: {message}\n")
        sys.stderr.flush()
