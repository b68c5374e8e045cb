"""Stopping every rank at the same step boundary, for the reasons one rank may see alone:
a signal (Slurm's preemption and time-limit warnings, SIGTERM and SIGUSR1 with
`#SBATCH --signal=B:USR1@120`; Ctrl-C, SIGINT), a non-finite loss, or an error of the
writer rank (a checkpoint that could not be written or was refused as non-finite).

Handlers and writers only note what happened. At each step boundary every rank asks, in
one tiny collective, whether any rank noted something, so all of them stop at the same
step. Precedence: divergence, then a writer's error, then a signal. On a signal rank 0
writes a checkpoint and the job exits with 128 + the signal's number (130 for Ctrl-C, 143
for SIGTERM, 138 for SIGUSR1); a second Ctrl-C stops at once, without a checkpoint.
"""

import math
import signal

from .callbacks import Callback
from .dist.comm import sums
from .errors import MpinnError, NonFiniteError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def place(epoch: int, step: int) -> str:
    """A step boundary (`step` steps into epoch `epoch`, both from 0) in words, counted
    from 1 as progress lines count: "epoch 2 step 5", or "epoch 1" for its end."""
    return f"epoch {epoch + 1} step {step}" if step else f"epoch {epoch}"


class Stopped(Exception):
    """Every rank agreed to stop after `step` global batches of `epoch`."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after {place(epoch, step)}")
        self.signum, self.epoch, self.step = signum, epoch, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Diverged(Exception):
    """Every rank agreed to stop: a loss was NaN or Inf."""

    exit_code = NonFiniteError.exit_code

    def __init__(self, what: str, epoch: int, step: int):
        super().__init__(f"training diverged in {place(epoch, step)}: {what}")
        self.epoch, self.step = epoch, step


class Failed(Exception):
    """Every rank agreed to stop because a rank's writer failed with `exit_code`; `error`
    is that failure on the rank that had it (None on the others)."""

    def __init__(self, exit_code: int, error: "MpinnError | None"):
        super().__init__(str(error) if error else f"another rank failed (exit {exit_code})")
        self.exit_code, self.error = exit_code, error


class StopRequests:
    """What this process noted for the next agreement: a stop signal, a writer's error."""

    def __init__(self):
        self.received: int | None = None
        self.error: MpinnError | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)

    def pending(self) -> "int | None":
        """The stop signal received, if any."""
        return self.received

    def fail(self, error: MpinnError) -> None:
        """A local failure every rank must stop for (the first one is kept)."""
        self.error = self.error or error

    def _note(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum


class StopAtStepBoundary(Callback):
    """Raises Failed, Diverged or Stopped on every rank at the first step boundary after
    any rank noted a reason. With `every_step` False (ranks that do not step in lock
    step, e.g. a parameter server and its workers) the ranks agree at epoch ends only;
    the last step of an epoch defers to the epoch's end, so that a stop never splits an
    epoch from its validation and records. `check_loss` stops on a non-finite running
    loss after a step (read on the host: it costs no device read); epoch ends always
    check the epoch's loss and validation figures."""

    def __init__(self, requests: StopRequests, comm, every_step: bool, steps_per_epoch: int,
                 check_loss: bool = True):
        self.requests, self.comm, self.every_step = requests, comm, every_step
        self.steps_per_epoch, self.check_loss = steps_per_epoch, check_loss
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every_step and batch + 1 < self.steps_per_epoch:
            loss = logs["loss"] if self.check_loss and logs is not None else 0.0
            self._agree(self.epoch, batch + 1,
                        None if math.isfinite(loss) else f"the loss is {loss}")

    def on_epoch_end(self, epoch, logs=None):
        bad = [f"{key} = {value}" for key, value in (logs or {}).items()
               if key.endswith("loss") and not math.isfinite(value)]
        self._agree(epoch + 1, 0, ", ".join(bad) or None)

    def _agree(self, epoch: int, step: int, nonfinite: "str | None") -> None:
        error = self.requests.error
        flags = [float(self.requests.received == signum) for signum in STOP_SIGNALS]
        flags += [float(nonfinite is not None), float(error.exit_code if error else 0)]
        agreed = sums(self.comm, flags) if self.comm.size > 1 else flags
        *signals, diverged, failed = agreed
        if diverged:
            ranks = f" on {int(diverged)} of {self.comm.size} ranks" if self.comm.size > 1 else ""
            raise Diverged(f"{nonfinite or 'a loss is NaN or Inf'}{ranks}", epoch, step)
        if failed:
            raise Failed(int(failed), error)
        for signum, count in zip(STOP_SIGNALS, signals, strict=True):
            if count:
                raise Stopped(signum, epoch, step)
