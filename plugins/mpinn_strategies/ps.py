"""Parameter servers: ranks 0..k-1 serve (k = `servers`, 1 by default), the others train.

The flat parameter buffer is cut into k contiguous slices; server s owns slice s, its
optimizer state and its version (how many updates it applied). Workers push gradients
tagged with the versions they were computed on and pull fresh parameters; servers alone
apply updates. Messages are a small float64 header plus a slice of the flat buffer, on
the strategy's own (duplicated) communicator.

Modes:
- `sync`: per step, for each slice, one Reduce sums the workers' gradients (each its share
  of the global batch) on the slice's server and one Bcast returns the updated slice:
  O(S log N) bytes through the servers instead of O(S N). The result equals `allreduce`
  over the workers, up to float rounding (bit for bit with one worker and one server).
- `async`: every push is applied as it arrives (each worker's shard of a global batch is
  one update). With `staleness = s` a worker may be at most s pushes ahead of the slowest
  worker (s = 0 moves in lock step); without it there is no bound (Downpour-style).
  `staleness_aware_lr` divides an update's learning rate by the gradient's version lag.
  Downpour's intervals: `push_every = n` pushes the mean gradient of n steps' samples,
  `pull_every = m` takes parameters with every m-th reply only (the others carry the
  version alone), so the bound still holds.

Async, at speed:
- a worker never idles while its push travels: it pushes a copy of its gradient, posts
  the receives of the replies and computes its next batch on the parameters it has; the
  replies are taken when the next push is due. So a gradient is computed on parameters
  one reply older than in lock step. `staleness = 0` keeps lock step: push, wait for the
  replies, then compute.
- a server never blocks on one worker: a receive is posted for every worker at once (no
  any-source receive), the first push to arrive is applied, and its reply goes out from a
  snapshot of the slice kept for that worker, without waiting for the worker to take it.
  A worker's buffers are reused only once it has pushed again, that is, once it has taken
  the reply (it has at most one push in flight). A server holds two buffers the size of
  its slice per worker.

Consistency across slices: each server applies every push, so at an epoch's end all
slices have applied the same pushes and the same number of steps; within an epoch they
may apply two workers' pushes in different orders, so the parameters a worker pulls mix
slices of versions that may differ by the pushes in flight. A worker waits for the
replies of all k servers, each of which holds it back by the same rule, so the staleness
bound holds across slices. Clipping and the finite check use the whole gradient's norm:
in async the worker sends it in the header, in sync the servers sum their slices' parts.

Two measures of staleness, which the servers' report keeps apart:
- lead: how many pushes a worker is ahead of the slowest one; `staleness` bounds it
  (`lead_bound`), `largest_lead` is the most any server let through;
- version lag: how many updates a server applied between the parameters a gradient was
  computed on and the gradient's own update (`version_lag_histogram`, over all servers).
  `staleness` does not bound it: while one worker computes, the others keep pushing, so
  the lag grows with the number of workers; lags of 6 are seen with two workers and
  `staleness = 2`.

Every epoch ends with all workers done, each server's slice broadcast to everyone and
the optimizer state gathered on rank 0, so validation, the epoch's figures and rank 0's
checkpoints hold one whole model; the trained model is the servers'.
"""

import json
import math
import time
from collections import Counter

import numpy as np

from mpinn.dist import Strategy
from mpinn.errors import ConfigError, choose

PUSH, GRADIENT, REPLY, PARAMETERS, STATE = 1, 2, 3, 4, 5  # message tags
HEADER = 4  # pushed: [version, samples, squared gradient norm, pull]; replied: [version, ...]


class ParameterServerStrategy(Strategy):
    name = "ps"
    lockstep = False  # the servers count updates, the workers their own steps

    def __init__(self, comm, mode: str = "async", staleness: "int | None" = None,
                 staleness_aware_lr: bool = False, servers: int = 1, push_every: int = 1,
                 pull_every: int = 1):
        super().__init__(comm)
        choose("ps mode", mode, ("sync", "async"))
        if staleness is not None:
            _count("staleness", staleness, 0, " (omit it for no bound)")
        for name, value in (("servers", servers), ("push_every", push_every),
                            ("pull_every", pull_every)):
            _count(name, value, 1)
        if mode == "sync" and (staleness is not None or staleness_aware_lr
                               or push_every != 1 or pull_every != 1):
            raise ConfigError("ps: staleness, staleness_aware_lr, push_every and pull_every "
                              "apply to mode 'async' only")
        if comm.size < 2:
            raise ConfigError("strategy 'ps' needs at least 2 ranks (rank 0 serves, the others "
                              "train): run it under mpirun -n 2 or more, or use 'allreduce'")
        if servers >= comm.size:
            raise ConfigError(f"ps: servers = {servers} leaves no rank to train on "
                              f"{comm.size} ranks; use at most {comm.size - 1}")
        self.mode, self.staleness = mode, staleness
        self.staleness_aware_lr = bool(staleness_aware_lr)
        self.servers, self.push_every, self.pull_every = servers, push_every, pull_every
        self.overlap = mode == "async" and staleness != 0  # a worker computes during a push
        self.serves = comm.rank < servers
        self.workers = comm.size - servers
        self.version = 0  # a server's: updates applied to its slice
        self.updates_by_worker = Counter()
        self.version_lags = Counter()
        self.largest_lead = 0
        self.serving_seconds = 0.0
        self.seconds = Counter()  # a server's: receiving, in the optimizer, replying
        self._records: list[dict] = []  # every server's, gathered on rank 0 at the end

    # ------------------------------------------------------------------ every rank
    def setup(self, model):
        super().setup(model)
        size = model.params.size
        self.bounds = [(size * s // self.servers, size * (s + 1) // self.servers)
                       for s in range(self.servers)]
        self.arrays.broadcast(model.params.data, root=0)
        self._needs_norm = model.optimizer.uses_global_norm
        self._in_flight = None  # a worker's push whose replies it has not taken
        if self.serves:
            start, stop = self.bounds[self.rank]
            self.part = model.params.part(start, stop)
            self.optimizer = model.optimizer.sliced(self.part, start, stop)
            model.params.grad[...] = 0  # a server adds zeros to the workers' sums
            if self.mode == "async":
                self._pushes = {worker: _Push(self.arrays, self.part.grad, 1)
                                for worker in range(self.servers, self.size)}
        else:
            if self.mode == "async":
                self._push = _Push(self.arrays, model.params.grad, self.servers)
                self._pushed = 0  # this epoch
                self._summed_steps = self._summed_samples = 0
                if self.push_every > 1:
                    self._sum = model.backend.xp.empty_like(model.params.grad)
        self._share_versions()

    def train_shard(self, count):
        if self.serves:
            return 0, 0
        worker = self.rank - self.servers
        return count * worker // self.workers, count * (worker + 1) // self.workers

    def gradient_scale(self, local_samples, global_samples):
        if self.mode == "sync":
            return local_samples / global_samples
        # async: each push is an update of its own; summed over the steps of a push
        return local_samples if self.push_every > 1 else 1.0

    def progress_steps(self, steps):
        if self.serves and self.mode == "async":
            return self._pushes_per_worker(steps) * self.workers
        return steps

    def _pushes_per_worker(self, steps: int) -> int:
        return -(-steps // self.push_every)

    def end_epoch(self, model):
        if not self.serves and self.mode == "async":
            if self._summed_steps:
                self._push_sum(model)
            if self._in_flight is not None:
                self._take_replies(model)
            self._pushed = 0
        for server, (start, stop) in enumerate(self.bounds):
            self.arrays.broadcast(model.params.data[start:stop], root=server)
        if self.serves:
            self._gather_optimizer(model)
        self._share_versions()

    def _share_versions(self):
        """Every rank learns the servers' versions: those of the parameters it now holds."""
        versions = np.zeros(self.servers)
        if self.serves:
            versions[self.rank] = self.version
        self.comm.allreduce_max(versions)
        self.versions = versions  # a worker's: of the slices it trains on

    def _gather_optimizer(self, model):
        """Rank 0's optimizer gets every server's slice of the state and the step count."""
        model.optimizer.iterations = self.optimizer.iterations
        model.optimizer.skipped = self.optimizer.skipped
        for _, flat in sorted(model.optimizer.state().items()):
            self.arrays.gather_parts(flat, self.bounds, tag=STATE)

    def finish(self, model):
        record = self._record() if self.serves else {}
        found = self.comm.allgather_bytes(json.dumps(record).encode())
        self._records = [json.loads(text) for text in found[:self.servers]]

    # ----------------------------------------------------------------------- worker
    def apply_gradients(self, model, local_samples, global_samples):
        if self.mode == "sync":
            self._exchange_sync(model)
        elif self.push_every == 1:
            self._push_gradient(model, model.params.grad, local_samples)
        else:
            if self._summed_steps:
                self._sum += model.params.grad
            else:
                self._sum[...] = model.params.grad
            self._summed_steps += 1
            self._summed_samples += local_samples
            if self._summed_steps == self.push_every:
                self._push_sum(model)

    def _push_sum(self, model):
        """Push the mean gradient of the samples summed since the last push."""
        if self._summed_samples:
            self._sum *= 1 / self._summed_samples
        self._push_gradient(model, self._sum, self._summed_samples)
        self._summed_steps = self._summed_samples = 0

    def _push_gradient(self, model, gradient, samples):
        push, computed_on = self._push, self.versions
        if self._in_flight is not None:
            self._take_replies(model)  # its parameters are for the next gradient
        self._pushed += 1
        pull = self._pushed % self.pull_every == 0
        squared_norm = float(model.backend.xp.vdot(gradient, gradient)) if self._needs_norm \
            else 0.0
        push.headers[:, 0] = computed_on
        push.headers[:, 1:] = (samples, squared_norm, pull)
        self.arrays.to_buffer(gradient, push.buffer)
        push.sends, push.receives, push.pull = [], [], pull
        for server, (start, stop) in enumerate(self.bounds):
            push.sends += [self.comm.isend(push.headers[server], dest=server, tag=PUSH),
                           self.comm.isend(push.buffer[start:stop], dest=server, tag=GRADIENT)]
            push.receives.append(self.comm.irecv(push.reply_headers[server], source=server,
                                                 tag=REPLY))
            if pull:
                push.receives.append(self.comm.irecv(push.parameters[start:stop],
                                                     source=server, tag=PARAMETERS))
        self._in_flight = push
        if not self.overlap:
            self._take_replies(model)

    def _take_replies(self, model):
        """Wait for every server's reply to the push in flight; with parameters, train on
        them from now."""
        push, self._in_flight = self._in_flight, None
        self.comm.wait_all(push.receives, "receive")
        self.comm.wait_all(push.sends, "send")
        if push.pull:
            self.arrays.from_buffer(push.parameters, model.params.data)
            self.versions = push.reply_headers[:, 0].copy()

    # ------------------------------------------------------------------ sync, both
    def _exchange_sync(self, model):
        """One step: the slices' gradients summed on their servers, which step them, and
        the slices sent back to every rank."""
        grad, clock = model.params.grad, _Clock(self.seconds)
        for server, (start, stop) in enumerate(self.bounds):
            self.arrays.reduce_sum(grad[start:stop], root=server)
        norm = self._sync_norm(model) if self.servers > 1 and self._needs_norm else None
        clock.lap("receive")
        if self.serves:
            self.optimizer.apply(self.part, norm=norm)
            self.part.grad[...] = 0
            self.version += 1
            self.updates_by_worker.update(range(self.servers, self.size))
            self.version_lags[0] += self.workers
        clock.lap("optimizer")
        for server, (start, stop) in enumerate(self.bounds):
            self.arrays.broadcast(model.params.data[start:stop], root=server)
        clock.lap("reply")

    def _sync_norm(self, model) -> float:
        """The summed gradient's L2 norm, from the servers' slices."""
        xp = model.backend.xp
        squared = np.array([float(xp.vdot(self.part.grad, self.part.grad))
                            if self.serves else 0.0])
        self.comm.allreduce_sum(squared)
        return math.sqrt(squared[0])

    # ----------------------------------------------------------------------- server
    def serve_epoch(self, model, steps, hooks):
        started = time.perf_counter()
        if self.mode == "sync":
            for step in range(steps):
                self._exchange_sync(model)
                for hook in hooks:
                    hook.on_train_batch_end(step, {})
        else:
            self._serve_async(model, self._pushes_per_worker(steps), hooks)
        self.serving_seconds += time.perf_counter() - started

    def _serve_async(self, model, pushes_due, hooks):
        pushes = dict.fromkeys(self._pushes, 0)  # this epoch, per worker
        for worker, push in self._pushes.items():
            push.post_receives(self.comm, worker)
        order = list(self._pushes)  # worker of each posted gradient receive, in order
        waiting, clock = [], _Clock(self.seconds)
        for update in range(pushes_due * self.workers):
            index = self.comm.wait_any([self._pushes[worker].receives[1] for worker in order],
                                       "receive")
            worker = order[index]
            push = self._pushes[worker]
            self.comm.wait_all(push.receives, "receive")
            clock.lap("receive")
            version, samples, squared_norm, pull = push.headers[0]
            lag = self.version - int(version)
            if samples:
                self.optimizer.apply(
                    self.part, grad=self._gradient(push.buffer),
                    lr_scale=1 / max(lag, 1) if self.staleness_aware_lr else 1.0,
                    norm=math.sqrt(squared_norm) if self._needs_norm else None)
                self.version += 1
            clock.lap("optimizer")
            self.updates_by_worker[worker] += 1
            self.version_lags[lag] += 1
            push.pull = bool(pull)
            pushes[worker] += 1
            if pushes[worker] < pushes_due:
                push.post_receives(self.comm, worker)
            else:
                order.remove(worker)
            waiting.append(worker)
            waiting = self._release(waiting, pushes)
            clock.lap("reply")
            for hook in hooks:
                hook.on_train_batch_end(update, {})
            clock.lap(None)
        if waiting:
            raise RuntimeError(f"ps: workers {waiting} still wait at the end of the epoch")
        for push in self._pushes.values():  # the last replies, before the broadcast
            self.comm.wait_all(push.sends, "send")

    def _gradient(self, buffer):
        """A pushed gradient slice as an array of the backend (its buffer where it is one)."""
        if self.arrays.direct:
            return buffer
        self.arrays.from_buffer(buffer, self.part.grad)
        return self.part.grad

    def _release(self, waiting, pushes) -> list[int]:
        """Answer the waiting workers that are within the staleness bound; the rest wait."""
        slowest = min(pushes.values())
        still = []
        for worker in waiting:
            lead = pushes[worker] - slowest
            if self.staleness is not None and lead > self.staleness:
                still.append(worker)
                continue
            self.largest_lead = max(self.largest_lead, lead)
            self._pushes[worker].reply(self, worker)
        return still

    def _record(self) -> dict:
        return {"version": self.version, "largest_lead": self.largest_lead,
                "updates_by_worker": self.updates_by_worker, "lags": self.version_lags,
                "serving": self.serving_seconds, "seconds": self.seconds}

    def report(self):
        """The servers' records (rank 0, after training): leads and shares are the
        largest of any server's, lag counts summed over servers, times the busiest's."""
        if self.rank != 0 or not self._records:
            return {}
        records = self._records
        lags = sum((Counter({int(lag): n for lag, n in r["lags"].items()}) for r in records),
                   Counter())
        busiest = max(records, key=lambda r: r["seconds"].get("optimizer", 0)
                      + r["seconds"].get("reply", 0))
        return {
            "mode": self.mode, "servers": self.servers, "lead_bound": self.staleness,
            "largest_lead": max(r["largest_lead"] for r in records),
            "updates_applied": records[0]["version"],
            "updates_by_worker": {w: n for w, n in sorted(records[0]["updates_by_worker"].items(),
                                                          key=lambda item: int(item[0]))},
            "version_lag_histogram": {str(lag): n for lag, n in sorted(lags.items())},
            "server_busy_share": round(max(
                (r["seconds"].get("optimizer", 0) + r["seconds"].get("reply", 0))
                / max(r["serving"], 1e-9) for r in records), 4),
            "server_seconds": {part: round(busiest["seconds"].get(part, 0.0), 3)
                               for part in ("receive", "optimizer", "reply")},
        }


def _count(name: str, value, low: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"ps: {name} must be an integer >= {low}{hint}. "
                          f"Received: {name}={value!r}")


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
    requests in flight on them. A worker pushes `buffer` (a copy of its gradient, one
    header per server) and receives `parameters`; a server receives into `buffer` (its
    slice) and replies from `parameters` (a snapshot of its slice)."""

    def __init__(self, arrays, like, servers: int):
        self.headers, self.reply_headers = np.zeros((servers, HEADER)), np.zeros((servers, HEADER))
        self.buffer, self.parameters = arrays.buffer_like(like), arrays.buffer_like(like)
        self.sends: list = []
        self.receives: list = []
        self.pull = True  # whether the reply carries parameters

    def post_receives(self, comm, worker: int) -> None:
        self.receives = [comm.irecv(self.headers[0], source=worker, tag=PUSH),
                         comm.irecv(self.buffer, source=worker, tag=GRADIENT)]

    def reply(self, strategy, worker: int) -> None:
        strategy.comm.wait_all(self.sends, "send")  # taken long ago: the worker pushed since
        self.reply_headers[0, 0] = strategy.version
        self.sends = [strategy.comm.isend(self.reply_headers[0], dest=worker, tag=REPLY)]
        if self.pull:
            strategy.arrays.to_buffer(strategy.part.data, self.parameters)
            self.sends.append(strategy.comm.isend(self.parameters, dest=worker,
                                                  tag=PARAMETERS))
