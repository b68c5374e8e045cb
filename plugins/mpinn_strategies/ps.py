"""Rank 0 as parameter server; ranks 1..N-1 train and exchange by push/pull.

Workers push gradients tagged with the model version they were computed on and pull
fresh parameters; the server alone holds the optimizer state, applies updates and
versions the model. Messages are a small float64 header plus the flat buffer, on the
strategy's own (duplicated) communicator.

Modes:
- `sync`: per step the workers' gradients (each its share of the global batch) are
  summed onto the server by one Reduce, the server applies one update and one Bcast
  returns the parameters: O(S log N) bytes through rank 0 instead of O(S N). The result
  equals `allreduce` over the workers, up to float rounding (bit for bit with one worker).
- `async`: every push is applied as it arrives (each worker's shard of a global batch is
  one update). With `staleness = s` a worker may be at most s pushes ahead of the slowest
  worker (s = 0 moves in lock step); without it there is no bound (Downpour-style).
  `staleness_aware_lr` divides an update's learning rate by the gradient's version lag.

Async, at speed:
- a worker never idles while its push travels: it pushes a copy of its gradient, posts
  the receive of the reply, and computes its next batch on the parameters it has; the
  reply is taken (copied in) when the next push is due. So a gradient is computed on
  parameters one reply older than in lock step. `staleness = 0` keeps lock step: push,
  wait for the reply, then compute.
- the server never blocks on one worker: a receive is posted for every worker at once
  (no any-source receive), the first push to arrive is applied, and its reply goes out
  from a snapshot of the parameters kept for that worker, without waiting for the worker
  to take it. A worker's buffers are reused only once it has pushed again, that is, once
  it has taken the reply (it has at most one push in flight). The server holds two
  buffers the size of the model per worker.

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
        self.overlap = mode == "async" and staleness != 0  # a worker computes during a push
        self.serves = comm.rank == 0
        self.workers = comm.size - 1
        self.version = 0
        self.updates_by_worker = Counter()
        self.version_lags = Counter()
        self.largest_lead = 0
        self.serving_seconds = 0.0
        self.seconds = Counter()  # the server's: receiving, in the optimizer, replying
        self._in_flight = None  # a worker's push whose reply it has not taken

    # ------------------------------------------------------------------ both sides
    def setup(self, model):
        super().setup(model)
        self.arrays.broadcast(model.params.data, root=0)
        if self.mode == "async":
            self._pushes = {worker: _Push(self.arrays, model.params.grad) for worker in
                            (range(1, self.comm.size) if self.serves else [self.rank])}

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
        if self._in_flight is not None:
            self._take_reply(model)
        self.arrays.broadcast(model.params.data, root=0)

    # ----------------------------------------------------------------------- worker
    def apply_gradients(self, model, local_samples, global_samples):
        if self.mode == "sync":
            self.arrays.reduce_sum(model.params.grad, root=0)
            self.arrays.broadcast(model.params.data, root=0)
            self.version += 1
            return
        push, computed_on = self._pushes[self.rank], self.version
        if self._in_flight is not None:
            self._take_reply(model)
        push.header[:] = (computed_on, local_samples, 0)
        self.arrays.to_buffer(model.params.grad, push.buffer)
        push.sends = [self.comm.isend(push.header, dest=0, tag=PUSH),
                      self.comm.isend(push.buffer, dest=0, tag=GRADIENT)]
        push.receives = [self.comm.irecv(push.reply_header, source=0, tag=REPLY),
                         self.comm.irecv(push.parameters, source=0, tag=PARAMETERS)]
        self._in_flight = push
        if not self.overlap:
            self._take_reply(model)

    def _take_reply(self, model):
        """Wait for the reply to the push in flight and train on its parameters from now."""
        push, self._in_flight = self._in_flight, None
        self.comm.wait_all(push.receives, "receive")
        self.comm.wait_all(push.sends, "send")
        self.arrays.from_buffer(push.parameters, model.params.data)
        self.version = int(push.reply_header[0])

    # ----------------------------------------------------------------------- server
    def serve_epoch(self, model, steps, hooks):
        started = time.perf_counter()
        if self.mode == "sync":
            self._serve_sync(model, steps, hooks)
        else:
            self._serve_async(model, steps, hooks)
        self.serving_seconds += time.perf_counter() - started

    def _serve_sync(self, model, steps, hooks):
        grad, clock = model.params.grad, _Clock(self.seconds)
        for step in range(steps):
            grad[...] = 0  # the server's own share of the sum
            self.arrays.reduce_sum(grad, root=0)
            clock.lap("receive")
            model.optimizer.apply(model.params)
            clock.lap("optimizer")
            self.version += 1
            for worker in range(1, self.comm.size):
                self.updates_by_worker[worker] += 1
            self.version_lags[0] += self.workers
            self.arrays.broadcast(model.params.data, root=0)
            clock.lap("reply")
            for hook in hooks:
                hook.on_train_batch_end(step, {})
            clock.lap(None)

    def _serve_async(self, model, steps, hooks):
        pushes = dict.fromkeys(self._pushes, 0)  # this epoch, per worker
        for worker, push in self._pushes.items():
            push.post_receives(self, worker)
        order = list(self._pushes)  # worker of each posted gradient receive, in order
        waiting, clock = [], _Clock(self.seconds)
        for update in range(steps * self.workers):
            index = self.comm.wait_any([self._pushes[worker].receives[1] for worker in order],
                                       "receive")
            worker = order[index]
            push = self._pushes[worker]
            self.comm.wait_all(push.receives, "receive")
            clock.lap("receive")
            version, samples = int(push.header[0]), int(push.header[1])
            lag = self.version - version
            if samples:
                scale = 1 / max(lag, 1) if self.staleness_aware_lr else 1.0
                model.optimizer.apply(model.params, lr_scale=scale,
                                      grad=self._gradient(model, push.buffer))
                self.version += 1
            clock.lap("optimizer")
            self.updates_by_worker[worker] += 1
            self.version_lags[lag] += 1
            pushes[worker] += 1
            if pushes[worker] < steps:
                push.post_receives(self, worker)
            else:
                order.remove(worker)
            waiting.append(worker)
            waiting = self._release(model, waiting, pushes)
            clock.lap("reply")
            for hook in hooks:
                hook.on_train_batch_end(update, {})
            clock.lap(None)
        if waiting:
            raise RuntimeError(f"ps: workers {waiting} still wait at the end of the epoch")
        for push in self._pushes.values():  # the last replies, before the broadcast
            self.comm.wait_all(push.sends, "send")

    def _gradient(self, model, buffer):
        """A pushed gradient as an array of the backend (its buffer where it is one)."""
        if self.arrays.direct:
            return buffer
        self.arrays.from_buffer(buffer, model.params.grad)
        return model.params.grad

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
            self._pushes[worker].reply(self, model, worker)
        return still

    def report(self):
        if not self.serves:
            return {}
        return {
            "mode": self.mode, "lead_bound": self.staleness, "largest_lead": self.largest_lead,
            "updates_applied": self.version,
            "updates_by_worker": {str(w): n for w, n in sorted(self.updates_by_worker.items())},
            "version_lag_histogram": {str(lag): n for lag, n in sorted(self.version_lags.items())},
            "server_busy_share": round((self.seconds["optimizer"] + self.seconds["reply"])
                                       / max(self.serving_seconds, 1e-9), 4),
            "server_seconds": {part: round(self.seconds[part], 3)
                               for part in ("receive", "optimizer", "reply")},
        }


class _Clock:
    """Adds the time since the last lap to `seconds[part]` at each lap (part None: to none)."""

    def __init__(self, seconds: Counter):
        self.seconds, self.last = seconds, time.perf_counter()

    def lap(self, part: "str | None") -> None:
        now = time.perf_counter()
        if part is not None:
            self.seconds[part] += now - self.last
        self.last = now


class _Push:
    """The buffers of one worker's pushes and their replies, on either side, and the
    requests in flight on them. A worker pushes `buffer` (a copy of its gradient) and
    receives `parameters`; the server receives into `buffer` and replies from
    `parameters` (a snapshot)."""

    def __init__(self, arrays, like):
        self.header, self.reply_header = np.zeros(3), np.zeros(3)  # [version, samples, 0]
        self.buffer, self.parameters = arrays.buffer_like(like), arrays.buffer_like(like)
        self.sends: list = []
        self.receives: list = []

    def post_receives(self, strategy, worker: int) -> None:
        self.receives = [strategy.comm.irecv(self.header, source=worker, tag=PUSH),
                         strategy.comm.irecv(self.buffer, source=worker, tag=GRADIENT)]

    def reply(self, strategy, model, worker: int) -> None:
        strategy.comm.wait_all(self.sends, "send")  # taken long ago: the worker pushed since
        self.reply_header[:] = (strategy.version, 0, 0)
        strategy.arrays.to_buffer(model.params.data, self.parameters)
        self.sends = [strategy.comm.isend(self.reply_header, dest=worker, tag=REPLY),
                      strategy.comm.isend(self.parameters, dest=worker, tag=PARAMETERS)]
