"""The strategy interface: how the processes of a job share the work of `fit`.

`fit` asks the strategy which slice of each global batch this process trains, hands it
the flat gradient buffer after backward, and lets it reduce the epoch's sums. A strategy
plugin subclasses Strategy and registers under the `mpinn.strategies` entry point group.
"""

from .arrays import ArrayComm
from .comm import Comm, LocalComm, sums


class Strategy:
    name = "base"

    def __init__(self, comm: "Comm | None" = None):
        self.comm = comm or LocalComm()

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def setup(self, model) -> None:
        """Before the first step, once the model is built and compiled. A subclass calls
        this first: it makes `self.arrays`, the communicator for the model's arrays."""
        self.arrays = ArrayComm(self.comm, model.backend)

    serves = False  # True on a rank that serves the others instead of training
    lockstep = True  # every rank sees the same step boundaries (batch hooks in step)

    def at(self, where) -> None:
        """The run's place: (epoch, step) counted from 0, (epoch, phase) or a phrase (see
        Comm.at)."""
        self.comm.at(where)

    def shard(self, count: int) -> tuple[int, int]:
        """The [start, stop) part of `count` samples this rank evaluates: contiguous, sizes
        differing by at most one, possibly empty."""
        return count * self.rank // self.size, count * (self.rank + 1) // self.size

    def train_shard(self, count: int) -> tuple[int, int]:
        """The part of a global batch of `count` samples this rank trains."""
        return self.shard(count)

    def gradient_scale(self, local_samples: int, global_samples: int) -> float:
        """The weight of this rank's mean gradient (see apply_gradients)."""
        return local_samples / global_samples

    def progress_steps(self, steps: int) -> int:
        """How many progress ticks (hook calls) this rank makes in an epoch of `steps`."""
        return steps

    def serve_epoch(self, model, steps: int, hooks) -> None:
        """On a serving rank: the epoch's work instead of training `steps` batches."""
        raise NotImplementedError

    def end_epoch(self, model) -> None:
        """After every rank's last step of an epoch, before validation."""

    def apply_gradients(self, model, local_samples: int, global_samples: int) -> None:
        """`model.params.grad` holds this rank's mean gradient times gradient_scale (by
        default its share of the global batch; zeros when it had no samples): apply the
        step for the whole global batch."""
        raise NotImplementedError

    def reduce(self, values):
        """Sum per-rank totals (sample counts, loss and metric sums) over all ranks."""
        return sums(self.comm, values)

    def finish(self, model) -> None:
        """After the last epoch."""

    def report(self) -> dict:
        """Figures for the metrics log at the end of training (on rank 0)."""
        return {}


class LocalStrategy(Strategy):
    """One process: the step is the optimizer's."""

    name = "local"

    def apply_gradients(self, model, local_samples, global_samples):
        model.optimizer.apply(model.params)
