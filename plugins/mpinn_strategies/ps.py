"""Rank 0 as parameter server; ranks 1..N-1 train and exchange by push/pull.

Workers push gradients tagged with the model version they were computed on and pull
fresh parameters; the server alone holds the optimizer state, applies updates and
versions the model. Messages are a small float64 header plus the flat buffer, on the
strategy's own (duplicated) communicator.

Modes:
- `sync`: per step the server waits for one gradient from every worker, sums their
  shares of the global batch, applies one update and answers everyone. The result equals
  `allreduce` over the workers, up to float rounding.
- `async`: every push is applied as it arrives (each worker's shard of a global batch is
  one update). With `staleness = s` a worker may be at most s pushes ahead of the slowest
  worker (s = 0 moves in lock step); without it there is no bound (Downpour-style).
  `staleness_aware_lr` divides an update's learning rate by the gradient's version lag.

Two measures of staleness, which the server's report keeps apart:
- lead: how many pushes a worker is ahead of the slowest one; `staleness` bounds it
  (`lead_bound`), `largest_lead` is the most the server let through;
- version lag: how many updates the server applied between the parameters a gradient was
  computed on and the gradient's own update (`version_lag_histogram`). `staleness` does
  not bound it: while one worker computes, the others keep pushing, so the lag grows with
  the number of workers; lags of 6 are seen with two workers and `staleness = 2`.

Every epoch ends with all workers done and the server's parameters broadcast to everyone,
so validation and the epoch's figures use one model; the trained model is the server's.
"""

import time
from collections import Counter

import numpy as np

from mpinn.dist import Strategy
from mpinn.errors import ConfigError, choose

PUSH, GRADIENT, REPLY, PARAMETERS = 1, 2, 3, 4  # message tags


class ParameterServerStrategy(Strategy):
    name = "ps"
    lockstep = False  # the server counts updates, the workers their own steps

    def __init__(self, comm, mode: str = "async", staleness: "int | None" = None,
                 staleness_aware_lr: bool = False):
        super().__init__(comm)
        choose("ps mode", mode, ("sync", "async"))
        if staleness is not None and (isinstance(staleness, bool)
                                      or not isinstance(staleness, int) or staleness < 0):
            raise ConfigError(f"ps: staleness must be an integer >= 0 (omit it for no bound). "
                              f"Received: staleness={staleness!r}")
        if mode == "sync" and (staleness is not None or staleness_aware_lr):
            raise ConfigError("ps: staleness and staleness_aware_lr apply to mode 'async' only")
        if comm.size < 2:
            raise ConfigError("strategy 'ps' needs at least 2 ranks (rank 0 serves, the others "
                              "train): run it under mpirun -n 2 or more, or use 'allreduce'")
        self.mode, self.staleness = mode, staleness
        self.staleness_aware_lr = bool(staleness_aware_lr)
        self.serves = comm.rank == 0
        self.workers = comm.size - 1
        self.header = np.zeros(3)  # [version, samples, unused]
        self.version = 0
        self.updates_by_worker = Counter()
        self.version_lags = Counter()
        self.largest_lead = 0
        self.busy_seconds = self.serving_seconds = 0.0

    # ------------------------------------------------------------------ both sides
    def setup(self, model):
        super().setup(model)
        self.arrays.broadcast(model.params.data, root=0)
        self._incoming = model.backend.xp.empty_like(model.params.grad)

    def train_shard(self, count):
        if self.serves:
            return 0, 0
        worker = self.rank - 1
        return count * worker // self.workers, count * (worker + 1) // self.workers

    def gradient_scale(self, local_samples, global_samples):
        if self.mode == "sync":
            return local_samples / global_samples
        return 1.0  # async: each push is an update of its own

    def progress_steps(self, steps):
        return steps * self.workers if self.serves and self.mode == "async" else steps

    def end_epoch(self, model):
        self.arrays.broadcast(model.params.data, root=0)

    # ----------------------------------------------------------------------- worker
    def apply_gradients(self, model, local_samples, global_samples):
        self.header[:] = (self.version, local_samples, 0)
        self.comm.send(self.header, dest=0, tag=PUSH)
        self.arrays.send(model.params.grad, dest=0, tag=GRADIENT)
        self.comm.recv(self.header, source=0, tag=REPLY)
        self.arrays.recv(model.params.data, source=0, tag=PARAMETERS)
        self.version = int(self.header[0])

    # ----------------------------------------------------------------------- server
    def serve_epoch(self, model, steps, hooks):
        started = time.perf_counter()
        if self.mode == "sync":
            self._serve_sync(model, steps, hooks)
        else:
            self._serve_async(model, steps, hooks)
        self.serving_seconds += time.perf_counter() - started

    def _receive_push(self, into) -> tuple[int, int, int]:
        """(worker, version the gradient was computed on, its samples)."""
        worker = self.comm.recv(self.header, tag=PUSH)
        version, samples = int(self.header[0]), int(self.header[1])
        self.arrays.recv(into, source=worker, tag=GRADIENT)
        return worker, version, samples

    def _reply(self, model, worker):
        self.header[:] = (self.version, 0, 0)
        self.comm.send(self.header, dest=worker, tag=REPLY)
        self.arrays.send(model.params.data, dest=worker, tag=PARAMETERS)

    def _serve_sync(self, model, steps, hooks):
        grad = model.params.grad
        for step in range(steps):
            for arrival in range(self.workers):
                worker, version, _ = self._receive_push(grad if arrival == 0 else self._incoming)
                busy = time.perf_counter()
                if arrival:
                    grad += self._incoming
                self.updates_by_worker[worker] += 1
                self.version_lags[self.version - version] += 1
                self.busy_seconds += time.perf_counter() - busy
            busy = time.perf_counter()
            model.optimizer.apply(model.params)
            self.version += 1
            for worker in range(1, self.comm.size):
                self._reply(model, worker)
            self.busy_seconds += time.perf_counter() - busy
            for hook in hooks:
                hook.on_train_batch_end(step, {})

    def _serve_async(self, model, steps, hooks):
        pushes = dict.fromkeys(range(1, self.comm.size), 0)  # this epoch, per worker
        waiting = []
        for update in range(steps * self.workers):
            worker, version, samples = self._receive_push(model.params.grad)
            busy = time.perf_counter()
            lag = self.version - version
            if samples:
                scale = 1 / max(lag, 1) if self.staleness_aware_lr else 1.0
                model.optimizer.apply(model.params, lr_scale=scale)
                self.version += 1
            self.updates_by_worker[worker] += 1
            self.version_lags[lag] += 1
            pushes[worker] += 1
            waiting.append(worker)
            waiting = self._release(model, waiting, pushes)
            self.busy_seconds += time.perf_counter() - busy
            for hook in hooks:
                hook.on_train_batch_end(update, {})
        if waiting:
            raise RuntimeError(f"ps: workers {waiting} still wait at the end of the epoch")

    def _release(self, model, waiting, pushes) -> list[int]:
        """Answer the waiting workers that are within the staleness bound; the rest wait."""
        slowest = min(pushes.values())
        still = []
        for worker in waiting:
            lead = pushes[worker] - slowest
            if self.staleness is not None and lead > self.staleness:
                still.append(worker)
                continue
            self.largest_lead = max(self.largest_lead, lead)
            self._reply(model, worker)
        return still

    def report(self):
        if not self.serves:
            return {}
        return {
            "mode": self.mode, "lead_bound": self.staleness, "largest_lead": self.largest_lead,
            "updates_applied": self.version,
            "updates_by_worker": {str(w): n for w, n in sorted(self.updates_by_worker.items())},
            "version_lag_histogram": {str(lag): n for lag, n in sorted(self.version_lags.items())},
            "server_busy_share": round(self.busy_seconds / max(self.serving_seconds, 1e-9), 4),
        }
