"""Stopping cleanly on a signal: Slurm's preemption and time-limit warnings (SIGTERM,
SIGUSR1 with `#SBATCH --signal=B:USR1@120`) and Ctrl-C (SIGINT).

A handler only notes the signal. At the next step boundary every rank asks, in one tiny
collective, whether any rank got one, so all of them stop at the same step; rank 0 then
writes a checkpoint and the job exits with 128 + the signal's number (130 for Ctrl-C,
143 for SIGTERM, 138 for SIGUSR1). A second Ctrl-C stops at once, without a checkpoint.
"""

import signal

from .callbacks import Callback
from .dist.comm import sums

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Stopped(Exception):
    """Every rank agreed to stop after `step` global batches of `epoch`."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after {step} steps of "
                         f"epoch {epoch + 1}" if step else
                         f"stopped by {signal.Signals(signum).name} after epoch {epoch}")
        self.signum, self.epoch, self.step = signum, epoch, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequests:
    """Notes the stop signals this process receives."""

    def __init__(self):
        self.received: int | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)

    def _note(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum


class StopAtStepBoundary(Callback):
    """Raises Stopped on every rank at the first step boundary after any rank got a stop
    signal. With `every_step` False (ranks that do not step in lock step, e.g. a parameter
    server and its workers) the ranks agree at epoch ends only."""

    def __init__(self, requests: StopRequests, comm, every_step: bool):
        self.requests, self.comm, self.every_step = requests, comm, every_step
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every_step:
            self._agree(self.epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._agree(epoch + 1, 0)

    def _agree(self, epoch: int, step: int) -> None:
        flags = [float(self.requests.received == signum) for signum in STOP_SIGNALS]
        agreed = sums(self.comm, flags) if self.comm.size > 1 else flags
        for signum, count in zip(STOP_SIGNALS, agreed, strict=True):
            if count:
                raise Stopped(signum, epoch, step)
