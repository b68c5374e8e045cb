"""Local SGD: every rank steps its own copy of the model on its shard of each global
batch, and the ranks average their parameters every `sync_every` steps, so that they
exchange the model once per H steps instead of the gradient every step (post-local SGD,
Lin et al. 2020; DiLoCo, Douillard et al. 2023, with an outer optimizer).

- `warmup_steps`: the run's first steps are synchronous (one gradient Allreduce per step,
  exactly as `allreduce`); so is every step with `sync_every = 1`.
- `average_optimizer`: average the optimizer state (e.g. Adam's moments) with the
  parameters; by default each rank keeps its own.
- `replica = "node"`: each node trains one copy of the model (the ranks of a node sum
  their gradients every step, through MPI inside the node, as `allreduce` does) and the
  nodes average their copies every `sync_every` steps: the slow links carry the model
  once per H steps, the fast ones a gradient every step. "rank" (the default): every
  rank is a replica.
- `outer_lr`, `outer_momentum`: the outer step on the ranks' average. The ranks keep the
  parameters of the last synchronisation (the anchor); the outer gradient is the anchor
  minus the average, and a Nesterov momentum step of `outer_lr` moves the anchor, which
  every rank then takes. `outer_lr = 1` and `outer_momentum = 0` (the default) is plain
  averaging; DiLoCo uses 0.7 and 0.9.

Every epoch ends with a full synchronisation: parameters (with the outer step) and
optimizer state averaged, so that validation, the epoch's checkpoint and the trained model
are one model. A checkpoint written when a job stops mid-epoch keeps every rank's own
parameters and optimizer state (gathered on rank 0, `params_by_rank`, ...): resumed on
the same number of ranks it continues exactly; on another, every rank starts from their
mean. Its `/params` are rank 0's.
"""

import math

import numpy as np

from mpinn.dist import ArrayComm, Strategy
from mpinn.errors import ConfigError, choose
from mpinn.optim import global_norm


class LocalSGDStrategy(Strategy):
    name = "local_sgd"

    def __init__(self, comm, sync_every: int = 8, warmup_steps: int = 0,
                 average_optimizer: bool = False, outer_lr: float = 1.0,
                 outer_momentum: float = 0.0, replica: str = "rank"):
        super().__init__(comm)
        choose("local_sgd replica", replica, ("rank", "node"))
        _whole("sync_every", sync_every, 1)
        _whole("warmup_steps", warmup_steps, 0)
        if not isinstance(average_optimizer, bool):
            raise ConfigError("local_sgd: average_optimizer must be true or false; "
                              f"received: {average_optimizer!r}")
        if not _number(outer_lr) or outer_lr <= 0:
            raise ConfigError(f"local_sgd: outer_lr must be a number above 0; "
                              f"received: outer_lr={outer_lr!r}")
        if not _number(outer_momentum) or not 0 <= outer_momentum < 1:
            raise ConfigError(f"local_sgd: outer_momentum must be a number in [0, 1); "
                              f"received: outer_momentum={outer_momentum!r}")
        self.sync_every, self.warmup_steps = sync_every, warmup_steps
        self.average_optimizer = average_optimizer
        self.outer_lr, self.outer_momentum = float(outer_lr), float(outer_momentum)
        self.outer = self.outer_lr != 1.0 or self.outer_momentum != 0.0
        self.replica = replica
        self.node = None  # replica "node": the node's ranks (an ArrayComm)
        self.synchronisations = 0
        # whether the ranks' parameters, and their optimizer states, differ
        self._params_apart = self._state_apart = False
        self._resumed = {}  # a resumed checkpoint of this strategy, for setup

    # ---------------------------------------------------------------- training
    def setup(self, model):
        super().setup(model)
        self.optimizer = model.optimizer
        self.arrays.broadcast(model.params.data, root=0)
        if self.outer:
            self.anchor = model.backend.xp.array(model.params.data)
            self.momentum = model.backend.xp.zeros_like(model.params.data)
        if self.replica == "node" and self.size > 1 and self.node is None:
            node = self.comm.node()
            self.node, self.node_ranks = ArrayComm(node, model.backend), node.ranks
        self._restore(model)

    def synchronous(self) -> bool:
        """Whether this step exchanges gradients (warm-up, or `sync_every = 1`)."""
        return self.sync_every == 1 or self.optimizer.iterations < self.warmup_steps

    def gradient_scale(self, local_samples, global_samples):
        if self.synchronous():
            return local_samples / global_samples
        if self.node is not None:  # its share of its node's samples
            return local_samples / self._node_samples(global_samples)
        return 1.0  # this rank's own mean gradient

    def _node_samples(self, count: int) -> int:
        """How many of a global batch of `count` samples this rank's node trains."""
        return sum(count * (rank + 1) // self.size - count * rank // self.size
                   for rank in self.node_ranks)

    def apply_gradients(self, model, local_samples, global_samples):
        if self.synchronous():
            if self.size > 1:
                self.arrays.allreduce_sum(model.params.grad)
            model.optimizer.apply(model.params)
            if self.outer and not self._params_apart:
                self.anchor[...] = model.params.data
            return
        before = model.optimizer.iterations
        if self.node is not None:
            self.node.allreduce_sum(model.params.grad)
        if model.optimizer.skip_nonfinite:
            self._agree_finite(model)
        model.optimizer.apply(model.params)
        if model.optimizer.iterations == before:  # every rank skipped it
            return
        self._params_apart = self._state_apart = True
        if (model.optimizer.iterations - self.warmup_steps) % self.sync_every == 0:
            self._synchronise(model)
            if self.average_optimizer:
                self._average_optimizer(model)

    def _agree_finite(self, model) -> None:
        """A step one rank skips, every rank skips: the ranks' step counts (and so the
        learning-rate schedules and synchronisations) stay equal."""
        flag = np.array([0.0 if math.isfinite(global_norm(model.params.grad)) else 1.0])
        if self.size > 1:
            self.comm.allreduce_max(flag)
        if flag[0]:
            model.params.grad[...] = math.nan

    def _synchronise(self, model) -> None:
        """Average the parameters, then the outer step."""
        self.synchronisations += 1
        data = model.params.data
        self._average(data)
        if self.outer:
            delta = model.params.grad  # free after the step: the outer gradient
            delta[...] = self.anchor
            delta -= data
            if self.outer_momentum:
                self.momentum *= self.outer_momentum
                self.momentum += delta
                delta += self.outer_momentum * self.momentum  # Nesterov
            delta *= self.outer_lr
            self.anchor -= delta
            data[...] = self.anchor
        self._params_apart = False

    def _average_optimizer(self, model) -> None:
        for buffer in model.optimizer.state().values():
            self._average(buffer)
        self._state_apart = False

    def _average(self, buffer) -> None:
        if self.size > 1:
            self.arrays.allreduce_sum(buffer)
            buffer *= 1.0 / self.size

    def end_epoch(self, model):
        if self._params_apart:
            self._synchronise(model)
        if self._state_apart:
            self._average_optimizer(model)

    # ------------------------------------------------------------- checkpoints
    def rank_state(self, model):
        return self._rank_targets(model) if self._params_apart or self._state_apart else {}

    def shared_state(self, model):
        return {"outer_anchor": self.anchor, "outer_momentum": self.momentum} if self.outer else {}

    def restore_state(self, found, model) -> None:
        if found.attrs["strategy"] != self.name:
            self._resumed = {}
            return
        shape = model.params.data.shape
        found.check_strategy_shapes({"outer_anchor": shape, "outer_momentum": shape, **{
            f"{name}_by_rank": target.shape for name, target in self._rank_targets(model).items()}})
        self._resumed = found

    def _restore(self, model) -> None:
        """After setup, from a resumed checkpoint of this strategy (see the module's
        docstring)."""
        found, self._resumed = self._resumed, {}
        if not found:
            return
        names = found.shapes.get("strategy", {})
        xp = model.backend.xp
        for name, target in self.shared_state(model).items():
            if name in names:
                target[...] = xp.asarray(found.strategy_tensor(name))
        same_world = found.attrs["world_size"] == self.size
        for name, target in self._rank_targets(model).items():
            if f"{name}_by_rank" not in names:
                continue
            if same_world:
                value = found.strategy_tensor(f"{name}_by_rank", row=self.rank)
            else:
                value = found.strategy_tensor(f"{name}_by_rank").mean(axis=0, dtype=np.float64)
            target[...] = xp.asarray(value, dtype=target.dtype)
            self._params_apart = self._state_apart = same_world

    def _rank_targets(self, model) -> dict:
        return {"params": model.params.data, **{
            f"optimizer.{slot.replace('/', '.')}": buffer
            for slot, buffer in model.optimizer.state().items()}}

    def report(self):
        return {"synchronisations": self.synchronisations}


def _whole(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"local_sgd: {name} must be a whole number of at least {low}; "
                          f"received: {name}={value!r}")


def _number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))
