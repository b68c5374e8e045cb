"""The strategy interface: how the processes of a job share the work of `fit`.

`fit` asks the strategy which slice of each global batch this process trains, hands it
the flat gradient buffer after backward, and lets it reduce the epoch's sums. A strategy
plugin subclasses Strategy and registers under the `mpinn.strategies` entry point group;
`get(name, **options)` makes one on the MPI world.
"""

import inspect
import json

from .. import plugins
from ..errors import ConfigError, DataError, MpinnError
from ..inputs import array_digest
from ..threads import fit_to_node
from .arrays import ArrayComm
from .comm import Comm, LocalComm, sums, world
from .watchdog import ranks_text


class RanksDiffer(DataError):
    """The ranks were given different data; raised on every rank alike."""

    every_rank = True  # rank 0 alone reports it (see Comm.excepthook)


class Strategy:
    name = "base"

    def __init__(self, comm: "Comm | None" = None):
        self.comm = comm or LocalComm()

    @classmethod
    def on_one_rank(cls, comm, options: dict) -> "Strategy | None":
        """What trains as this strategy with `options` would on `comm`, a world of one
        (`mpinn.strategy` returns it): the single-process loop by default; None for
        this strategy itself."""
        return LocalStrategy(comm)

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def agree(self, model, data: dict, settings: dict) -> None:
        """Before setup, on more than one rank: every rank takes rank 0's seed (shuffling
        and dropout draw from it; setup gives every rank rank 0's weights), and must hold
        rank 0's `data` (name -> array or None, compared by shape, dtype and a digest of
        sampled rows) and `settings` (fit's arguments and the model's layout, compared as
        JSON). Raises RanksDiffer on every rank, naming the first difference."""
        mine = {"seed": model.seed,
                **{name: array_digest(model.backend, array) for name, array in data.items()},
                **{name: json.dumps(value) for name, value in settings.items()}}
        found = [json.loads(text) for text in
                 self.comm.allgather_bytes(json.dumps(mine).encode())]
        for name in [*data, *settings]:
            differ = [rank for rank, theirs in enumerate(found) if theirs[name] != found[0][name]]
            if differ:
                what = "data" if name in data else "arguments"
                raise RanksDiffer(
                    f"fit: {ranks_text(differ)} {'has' if len(differ) == 1 else 'have'} other "
                    f"{what} than rank 0: {name} is {found[differ[0]][name]} on rank "
                    f"{differ[0]} but {found[0][name]} on rank 0 (every rank must call fit "
                    "alike, with the same arrays and the same model)")
        if found[0]["seed"] != model.seed:
            model.reseed(found[0]["seed"])

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

    exact_sums = False  # True: loss and metrics are summed exactly (EpochSums), reproducibly

    def evaluation_batches(self, count: int, batch_size: int) -> list[tuple[int, int]]:
        """The (start, stop) batches of `count` samples this rank evaluates: its shard, in
        batches of `batch_size` from the shard's start; with exact sums, a run of whole
        batches of one process's (each batch's figures then depend on it alone)."""
        if self.exact_sums:
            batches = -(-count // batch_size)
            first, last = batches * self.rank // self.size, batches * (self.rank + 1) // self.size
            return [(b * batch_size, min((b + 1) * batch_size, count)) for b in range(first, last)]
        low, high = self.shard(count)
        return [(start, min(start + batch_size, high)) for start in range(low, high, batch_size)]

    def train_shard(self, count: int) -> tuple[int, int]:
        """The part of a global batch of `count` samples this rank trains."""
        return self.shard(count)

    def gradient_scale(self, local_samples: int, global_samples: int) -> float:
        """The weight of this rank's mean gradient (see apply_gradients)."""
        return local_samples / global_samples

    layer_done = None  # or a callable: hears of each layer whose gradients are complete

    blas_threads = None  # (count, why): what its setup limits a rank's BLAS to (the header says)

    def notes(self, batch_size: int) -> list[str]:
        """What rank 0 says before training about this strategy's choices (one line
        each, without the "mpinn: note: " it gets)."""
        return []

    def compute_gradients(self, model, x, y, scale: float, sums) -> None:
        """This rank's share (x, y) of a global batch: `scale` times the gradient of its
        mean loss into model.params.grad, and its loss and outputs into `sums`
        (EpochSums.add). A strategy may compute it in pieces of its own (reproducible
        modes: fixed chunks, each added on its own)."""
        loss, out = model.compute_gradients(x, y, scale, self.layer_done)
        sums.add(loss, out, y)

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

    def rank_state(self, model) -> dict:
        """This rank's own tensors that a checkpoint written mid-epoch needs (name ->
        array), where the ranks' differ; the same names on every rank. None by default."""
        return {}

    def shared_state(self, model) -> dict:
        """Tensors equal on every rank that a checkpoint needs (rank 0's are written)."""
        return {}

    def gather_state(self, model) -> None:
        """On every rank before a checkpoint mid-epoch (a stop, `every_steps`): every
        rank's rank_state as rows (`<name>_by_rank`), gathered on rank 0."""
        self._gathered = {}
        for name, array in sorted(self.rank_state(model).items()):
            rows = self.comm.gather(model.backend.to_numpy(array))
            if rows is not None:
                self._gathered[f"{name}_by_rank"] = rows
        self._gathered_at = model.optimizer.iterations

    _gathered: dict = {}
    _gathered_at = -1

    def checkpoint_state(self, model) -> dict:
        """Rank 0, as it writes a checkpoint: the strategy's own tensors, stored under
        /strategy and given back by restore_state: shared_state, and the rows gathered
        at this very step."""
        fresh = self._gathered if self._gathered_at == model.optimizer.iterations else {}
        return {**self.shared_state(model), **fresh}

    def restore_state(self, found, model) -> None:
        """Before fit, on every rank, when resuming from the checkpoint `found` (any
        strategy's, any world size) into the built `model`: check that what this strategy
        takes of it fits the model (DataError, agreed on with the rest of setup) and keep
        it for setup."""

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


def get(name: str, comm: "Comm | None" = None, **options) -> Strategy:
    """The strategy plugin `name` on `comm` (the MPI world by default), with `options`
    (e.g. get("ps", staleness=2)). In a world of one it is the strategy's `on_one_rank`
    (the single-process loop, unless the strategy says otherwise): the options are
    checked by name, their values where there are more ranks. A bad name or
    option is raised by every rank alike (rank 0 alone says it, see Comm.excepthook)."""
    comm = comm or world()
    try:
        strategy_class = plugins.load(plugins.STRATEGIES, name)
        parameters = inspect.signature(strategy_class).parameters.values()
        if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
            allowed = [parameter.name for parameter in parameters if parameter.name != "comm"]
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                raise ConfigError(f"strategy {name!r}: unknown option {unknown[0]!r}; "
                                  f"allowed: {', '.join(allowed) or 'none'}")
        strategy = strategy_class.on_one_rank(comm, options) if comm.size == 1 else None
        if strategy is None:
            strategy = strategy_class(comm=comm, **options)
    except MpinnError as error:
        error.every_rank = True
        raise
    fit_to_node(comm.local_size)  # the rank's share of its node's cores, before training
    return strategy
