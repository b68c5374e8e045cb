"""The strategy interface: how the processes of a job share the work of `fit`.

`fit` asks the strategy which slice of each global batch this process trains, hands it
the flat gradient buffer after backward, and lets it reduce the epoch's sums. A strategy
plugin subclasses Strategy and registers under the `mpinn.strategies` entry point group.
"""

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
        """Before the first step, once the model is built and compiled."""

    def shard(self, count: int) -> tuple[int, int]:
        """The [start, stop) part of a global batch of `count` samples this rank trains:
        contiguous, sizes differing by at most one, possibly empty."""
        return count * self.rank // self.size, count * (self.rank + 1) // self.size

    def apply_gradients(self, model, local_samples: int, global_samples: int) -> None:
        """`model.params.grad` holds this rank's share of the global batch's mean gradient
        (its local mean times local_samples / global_samples; zeros when it had none):
        apply the step for the whole global batch."""
        raise NotImplementedError

    def reduce(self, values):
        """Sum per-rank totals (sample counts, loss and metric sums) over all ranks."""
        return sums(self.comm, values)

    def finish(self, model) -> None:
        """After the last step (the parameter server hands its model to everyone here)."""


class LocalStrategy(Strategy):
    """One process: the step is the optimizer's."""

    name = "local"

    def apply_gradients(self, model, local_samples, global_samples):
        model.optimizer.apply(model.params)
