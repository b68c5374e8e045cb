"""Parameter servers: ranks 0..k-1 serve (k = `servers`, 1 by default), the others train.

The flat parameter buffer is cut into k contiguous slices; server s owns slice s, its
optimizer state and its version (how many updates it applied). Workers push gradients
tagged with the versions they were computed on and pull fresh parameters; servers alone
apply updates. Messages are a small float64 header plus a slice of the flat buffer, on
the strategy's own (duplicated) communicator.

Modes:
- `sync`: per step the workers' gradients (each its share of the global batch) are
  summed on the servers, which step their slices. With every rank on one node, host
  arrays and room in /dev/shm, in MPI shared memory: the parameters live once (every
  rank's model trains on them), each worker's gradient lives where the servers read it,
  and a step is two tiny Allreduces as barriers with the sums and updates between them,
  in place (before the first, workers claim the parameters' cache lines where that
  pays: cache_lines.py). Else one Allreduce sums the gradients (the servers add zeros) and one Bcast
  per slice returns the parameters: O(S) bytes through each server instead of O(S N);
  an Allreduce, not a Reduce to the servers, since MPICH 5 reduces 23 MB on 2 ranks in
  22 ms but allreduces it in 5 (Open MPI: 10 and 10). Either way the result equals
  `allreduce` over the workers up to float rounding (bit for bit with one worker).
  `reproducible = true` trains the workers in reproducible.py's chunks, and its int64
  sums take the Allreduce's place (also on one node): the same bits on any number of
  workers, and as `allreduce`'s reproducible mode.
- `async`: every push is applied as it arrives (each worker's shard of a global batch is
  one update). With `staleness = s` a worker may be at most s pushes ahead of the slowest
  worker (s = 0 moves in lock step); without it there is no bound (Downpour-style).
  `staleness_aware_lr` divides an update's learning rate by the gradient's version lag.
  Downpour's intervals: `push_every = n` pushes the mean gradient of n steps' samples,
  `pull_every = m` takes parameters with every m-th reply only (the others carry the
  version alone), so the bound still holds.

Async, at speed:
- a worker never idles while its push travels: it pushes its gradient, posts the
  receives of the replies and computes its next batch on the parameters it has, into a
  spare gradient buffer; the replies are taken when the next push is due, and the
  buffer the parameters arrived in becomes the model's (double buffering by swapping,
  no copies where MPI reads the model's arrays). So a gradient is computed on
  parameters one reply older than in lock step. `staleness = 0` keeps lock step: push,
  wait for the replies, then compute.
- a server never blocks on one worker: a receive is posted for every worker at once (no
  any-source receive), the first push to arrive is applied, and its reply goes out
  without waiting for the worker to take it. A worker on the server's node keeps its
  parameters (host arrays) in two halves of MPI shared memory, where every node's
  /dev/shm has room for them (see Comm.shared_memory): the server copies its
  slice straight into the half the push named spare (one copy, the server's; the worker
  copies nothing), then sends the header. A worker elsewhere gets a message sent from a
  snapshot of the slice kept for it. A worker's buffers are reused only once it has
  pushed again, that is, once it has taken the reply (it has at most one push in
  flight). A server holds one buffer the size of its slice per worker, two for a worker
  on another node.

Consistency across slices: each server applies every push, so at an epoch's end all
slices have applied the same pushes and the same number of steps; within an epoch they
may apply two workers' pushes in different orders, so the parameters a worker pulls mix
slices of versions that may differ by the pushes in flight. A worker waits for the
replies of all k servers, each of which holds it back by the same rule, so the staleness
bound holds across slices. Clipping and the finite check use the whole gradient's norm:
in async the worker sends it in the header, in sync every server holds the whole sum.

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
import time
from collections import Counter

import numpy as np

from mpinn import threads
from mpinn.dist import Strategy
from mpinn.errors import ConfigError, LayoutError, choose
from mpinn.optim import global_norm

from . import cache_lines
from .allreduce import AllreduceStrategy
from .compression import CompressedPushes, half_codec
from .reproducible import BLAS_THREADS, ChunkedExactSum, check_options

PUSH, GRADIENT, REPLY, PARAMETERS, STATE = 1, 2, 3, 4, 5  # message tags
# pushed: [version, samples, gradient norm, pull, spare half, half-precision scale];
# replied: [version]
HEADER = 6
COMPRESSIONS = ("none", "float16", "bfloat16")


class ParameterServerStrategy(Strategy):
    name = "ps"
    lockstep = False  # the servers count updates, the workers their own steps

    def __init__(self, comm, mode: str = "async", staleness: "int | None" = None,
                 staleness_aware_lr: bool = False, servers: int = 1, push_every: int = 1,
                 pull_every: int = 1, compression: str = "none", reproducible: bool = False,
                 chunk_size: int = 16):
        super().__init__(comm)
        choose("ps mode", mode, ("sync", "async"))
        choose("ps compression", compression, COMPRESSIONS)
        if staleness is not None:
            _count("staleness", staleness, 0, " (omit it for no bound)")
        for name, value in (("servers", servers), ("push_every", push_every),
                            ("pull_every", pull_every)):
            _count(name, value, 1)
        if mode == "sync" and (staleness is not None or staleness_aware_lr
                               or push_every != 1 or pull_every != 1 or compression != "none"):
            raise ConfigError("ps: staleness, staleness_aware_lr, push_every, pull_every and "
                              "compression apply to mode 'async' only")
        check_options("ps", reproducible, chunk_size)
        if reproducible and mode != "sync":
            raise ConfigError("ps: reproducible applies to mode 'sync' only; received: "
                              f"mode={mode!r}")
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
        self.compression = compression
        self.compressed = None  # a worker's CompressedPushes
        self.codec = None  # a server's half-precision codec, with compression
        self._resumed = None
        self._records: list[dict] = []  # every server's, gathered on rank 0 at the end
        self.exact = None  # reproducible.py's chunks and exact sums, where reproducible
        if reproducible:
            self.exact = ChunkedExactSum(chunk_size, (comm.rank - servers, self.workers))
            self.blas_threads = BLAS_THREADS

    @classmethod
    def on_one_rank(cls, comm, options):
        """Reproducible sync on one rank: allreduce's reproducible mode, which trains the
        same chunks alike."""
        if options.get("reproducible") is True and options.get("mode") == "sync":
            return AllreduceStrategy(comm, reproducible=True,
                                     chunk_size=options.get("chunk_size", 16))
        return super().on_one_rank(comm, options)

    @property
    def exact_sums(self):
        return self.exact is not None

    def notes(self, batch_size):
        note = None if self.exact is None else self.exact.note(batch_size)
        return [note] if note else []

    # ------------------------------------------------------------------ every rank
    def setup(self, model):
        super().setup(model)
        size = model.params.size
        self.bounds = [(size * s // self.servers, size * (s + 1) // self.servers)
                       for s in range(self.servers)]
        self.arrays.broadcast(model.params.data, root=0)
        self._needs_norm = model.optimizer.uses_global_norm
        self._in_flight = None  # a worker's push whose replies it has not taken
        self.shared = None  # MPI shared memory, where the model's arrays are host arrays
        self.claims = False  # whether workers claim the shared parameters (cache_lines)
        self._claimed = None  # a worker's part of them, where they do
        if self.exact is not None:  # by messages: the sum is the exchanged integers'
            threads.apply(threads.ThreadPlan(*self.blas_threads))
            self.exact.setup(model, self.comm, self.arrays)
        elif self.arrays.direct and model.backend.device is None:
            if self.mode == "async":  # on each node: the workers' parameters, in halves
                self.shared = self.comm.shared_memory(
                    0 if self.serves else 2 * model.params.data.nbytes)
            elif self.comm.local_size == self.size:  # one node: see _share_the_model
                self._share_the_model(model)
        if self.compression != "none" and not self.arrays.direct:
            raise LayoutError("ps: compression needs arrays MPI reads directly (host arrays, "
                              "or CUDA-aware MPI)")
        if self.serves:
            start, stop = self.bounds[self.rank]
            self.part = model.params.part(start, stop)
            self.optimizer = model.optimizer.sliced(self.part, start, stop)
            model.params.grad[...] = 0  # a server adds zeros to the workers' sums
            if self.mode == "async":
                compressed = self.compression != "none"
                self.codec = half_codec(model, self.compression) if compressed else None
                self._pushes = {worker: _Inbox(self.arrays, self.part.grad,
                                               self._halves(model, worker), compressed)
                                for worker in range(self.servers, self.size)}
        elif self.mode == "async":
            self._push = _Outbox(self.arrays, model, self.servers, self.overlap,
                                 self._halves(model, self.rank))
            self._pushed = 0  # this epoch
            self._summed_steps = self._summed_samples = 0
            if self.push_every > 1:
                self._sum = model.backend.xp.empty_like(model.params.grad)
            if self.compression != "none":
                self.compressed = CompressedPushes(self.compression)
                self.compressed.setup(model)
                if self._resumed is not None:
                    self.compressed.restore(self._resumed, self.rank, self.servers, self.size)
        self._resumed = None
        self._share_versions()

    def _share_the_model(self, model):
        """sync on one node: the parameters live once, in rank 0's shared memory, and every
        rank's model trains on them; each worker's gradient lives in its own. A step is
        then two tiny Allreduces (the barriers of _exchange_shared) with the servers'
        sums and updates between them, in place: nothing is copied or sent."""
        nbytes = model.params.data.nbytes if self.rank == 0 or not self.serves else 0
        self.shared = self.comm.shared_memory(nbytes)
        if self.shared is None:  # no room on some node: by messages
            return
        size, dtype = model.params.size, model.params.data.dtype
        parameters = self.shared.array(0, size, dtype)
        if self.rank == 0:
            parameters[...] = model.params.data
        if not self.serves:
            model.swap_buffers(grad=self.shared.array(self.rank, size, dtype))
        self._barrier()
        model.swap_buffers(data=parameters)
        self._gradients = [self.shared.array(worker, size, dtype)
                           for worker in range(self.servers, self.size)]
        worker = self.rank - self.servers
        written = None if not self.serves else slice(*self.bounds[self.rank])
        claimed = None if self.serves else slice(size * worker // self.workers,
                                                 size * (worker + 1) // self.workers)
        self.claims = cache_lines.claiming_pays(parameters, written, claimed, self._barrier,
                                                self._agree)
        if self.claims and claimed is not None:
            self._claimed = parameters[claimed]

    def _agree(self, vote: bool) -> bool:
        """Rank 0's vote, taken by every rank."""
        votes = np.array([float(vote)])
        self.comm.broadcast(votes, root=0)
        return bool(votes[0])

    def _barrier(self):
        """Every rank's writes to shared memory so far are seen by all from here on."""
        self.shared.sync()
        self.comm.allreduce_sum(np.zeros(1))
        self.shared.sync()

    def _halves(self, model, worker: int):
        """The two parameter buffers of `worker` in shared memory, where this rank reaches
        them (None: it does not)."""
        if self.shared is None or not self.shared.near(worker):
            return None
        return self.shared.array(worker, (2, model.params.size), model.params.data.dtype)

    def train_shard(self, count):
        if self.serves:
            return 0, 0
        if self.exact is not None:
            return self.exact.shard(count)
        worker = self.rank - self.servers
        return count * worker // self.workers, count * (worker + 1) // self.workers

    def compute_gradients(self, model, x, y, scale, sums):
        if self.exact is None:
            super().compute_gradients(model, x, y, scale, sums)
        else:
            self.exact.compute(model, x, y, scale, sums)

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
        if self.mode == "async" or self.shared is None:  # else all ranks hold one model
            for server, (start, stop) in enumerate(self.bounds):
                self.arrays.broadcast(model.params.data[start:stop], root=server)
        if self.serves:
            self._gather_optimizer(model)
        if self.compression != "none" and self.mode == "async":
            self.gather_state(model)  # the workers' residuals, for rank 0's checkpoint
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
        if self.exact is not None:
            self.exact.close(model)
        if self.shared is not None:  # the model keeps its buffers once the memory is gone
            model.swap_buffers(data=model.params.data.copy(), grad=model.params.grad.copy())
            self.shared.free()
            self.shared = None

    # ------------------------------------------------------------- checkpoints
    def rank_state(self, model):
        """With compression, each worker's residual (a server's: zeros), gathered at every
        epoch's end, so that rank 0's checkpoints resume exactly."""
        if self.compression == "none" or self.mode != "async":
            return {}
        if self.compressed is not None:
            return {"residual": self.compressed.residual}
        return {"residual": model.backend.xp.zeros_like(model.params.grad)}

    def shared_state(self, model):
        return {} if self.exact is None else self.exact.shared_state(model.params.dtype)

    def restore_state(self, found, model):
        if self.compression != "none" and found.attrs["strategy"] == self.name:
            found.check_strategy_shapes({"residual_by_rank": model.params.grad.shape})
            self._resumed = found
        if self.exact is not None:  # checked here, with the rest of setup, on every rank
            found.check_strategy_shapes({"fixed_point_largest": (1,)})
            self.exact.restore(found)

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
        scale = 1.0
        if self.compressed is not None:
            scale = self.compressed.encode(gradient)  # gradient + residual, in half
            outgoing = self.compressed.wire
        else:
            outgoing = push.outgoing(model, gradient)
        norm = global_norm(gradient) if self._needs_norm else 0.0
        push.headers[:, 0] = computed_on
        push.headers[:, 1:] = (samples, norm, pull, push.spare, scale)
        self.arrays.sent_bytes += outgoing.nbytes
        incoming = push.incoming(model) if pull else None
        push.sends, push.receives, push.pull = [], [], pull
        for server, (start, stop) in enumerate(self.bounds):
            push.sends += [self.comm.isend(push.headers[server], dest=server, tag=PUSH),
                           self.comm.isend(outgoing[start:stop], dest=server, tag=GRADIENT)]
            push.receives.append(self.comm.irecv(push.reply_headers[server], source=server,
                                                 tag=REPLY))
            if pull and not (push.halves is not None and self.shared.near(server)):
                push.receives.append(self.comm.irecv(incoming[start:stop], source=server,
                                                     tag=PARAMETERS))
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
            push.arrived(model, self.shared)
            self.versions = push.reply_headers[:, 0].copy()

    # ------------------------------------------------------------------ sync, both
    def _exchange_sync(self, model):
        """One step: one Allreduce sums the workers' gradients (the servers add zeros),
        each server steps its slice and broadcasts it."""
        if self.shared is not None:
            self._exchange_shared(model)
            return
        grad, clock = model.params.grad, _Clock(self.seconds)
        if self.exact is not None:
            self.exact.exchange(model)
            grad = model.params.grad
        else:
            self.arrays.allreduce_sum(grad)
        clock.lap("receive")
        if self.serves:
            norm = global_norm(grad) if self.servers > 1 and self._needs_norm else None
            self.optimizer.apply(self.part, norm=norm)
            self.version += 1
            self.updates_by_worker.update(range(self.servers, self.size))
            self.version_lags[0] += self.workers
        clock.lap("optimizer")
        for server, (start, stop) in enumerate(self.bounds):
            self.arrays.broadcast(model.params.data[start:stop], root=server)
        if self.serves:
            grad[...] = 0  # the server's share of the next sum
        clock.lap("reply")

    def _exchange_shared(self, model):
        """One step on one node: once every worker's gradient is written, each server sums
        its slice of them (in the first worker's buffer, in worker order) and steps its
        slice of the shared parameters in place; then every rank reads them. A worker
        that claims its part of them (cache_lines) does so first."""
        clock = _Clock(self.seconds)
        if self._claimed is not None:
            cache_lines.claim(self._claimed)
        self._barrier()
        clock.lap("receive")
        norm = None
        if self.serves:
            start, stop = self.bounds[self.rank]
            total = self._gradients[0][start:stop]
            for gradient in self._gradients[1:]:
                total += gradient[start:stop]
        if self.servers > 1 and self._needs_norm:
            squares = np.array([float(np.vdot(total, total)) if self.serves else 0.0])
            self.comm.allreduce_sum(squares)
            norm = float(np.sqrt(squares[0]))
        if self.serves:
            self.optimizer.apply(self.part, grad=total, norm=norm)
            self.version += 1
            self.updates_by_worker.update(range(self.servers, self.size))
            self.version_lags[0] += self.workers
        clock.lap("optimizer")
        self._barrier()
        clock.lap("reply")

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
            version, samples, norm, pull, half, scale = push.headers[0]
            lag = self.version - int(version)
            if samples:
                self.optimizer.apply(
                    self.part, grad=self._gradient(push.buffer, scale),
                    lr_scale=1 / max(lag, 1) if self.staleness_aware_lr else 1.0,
                    norm=norm if self._needs_norm else None)
                self.version += 1
            clock.lap("optimizer")
            self.updates_by_worker[worker] += 1
            self.version_lags[lag] += 1
            push.pull, push.half = bool(pull), int(half)
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

    def _gradient(self, buffer, scale: float):
        """A pushed gradient slice as an array of the backend (its buffer where it is one,
        decoded from half precision where the pushes are)."""
        if self.codec is not None:
            self.codec.decode(buffer, scale, self.part.grad)
            return self.part.grad
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
            **({"workers_claim_lines": self.claims} if self.mode == "sync" else {}),
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


class _Inbox:
    """A server's buffers for one worker: the pushed gradient slice (`buffer`), where its
    replies' parameters go, and the requests in flight on them. A worker on this node
    gets its slice written straight into its spare half of shared memory (`halves`); one
    elsewhere gets a message, sent from a snapshot of the slice (`parameters`)."""

    def __init__(self, arrays, like, halves=None, compressed: bool = False):
        self.headers, self.reply_headers = np.zeros((1, HEADER)), np.zeros((1, HEADER))
        self.buffer = (arrays.backend.xp.empty(like.size, "uint16") if compressed
                       else arrays.buffer_like(like))  # the pushed gradient slice
        self.halves = halves
        self.parameters = arrays.buffer_like(like) if halves is None else None
        self.sends: list = []
        self.receives: list = []
        self.pull, self.half = True, 0  # of the push being answered

    def post_receives(self, comm, worker: int) -> None:
        self.receives = [comm.irecv(self.headers[0], source=worker, tag=PUSH),
                         comm.irecv(self.buffer, source=worker, tag=GRADIENT)]

    def reply(self, strategy, worker: int) -> None:
        strategy.comm.wait_all(self.sends, "send")  # taken long ago: the worker pushed since
        self.sends = []
        if self.pull and self.halves is not None:
            start, stop = strategy.bounds[strategy.rank]
            np.copyto(self.halves[self.half][start:stop], strategy.part.data)
            strategy.shared.sync()  # written before the header says so
        elif self.pull:
            strategy.arrays.to_buffer(strategy.part.data, self.parameters)
            strategy.arrays.sent_bytes += self.parameters.nbytes
            self.sends.append(strategy.comm.isend(self.parameters, dest=worker,
                                                  tag=PARAMETERS))
        self.reply_headers[0, 0] = strategy.version
        self.sends.append(strategy.comm.isend(self.reply_headers[0], dest=worker, tag=REPLY))


class _Outbox:
    """A worker's pushes to the k servers: one header per server each way, the buffers in
    flight and the requests on them. Nothing is copied where MPI reads the model's arrays:
    - host arrays: the model's parameters live in one of two halves of shared memory;
      servers on this node write the other (`spare`) half directly, the others send into
      it, and the halves swap when all replies are in;
    - device arrays MPI reads: the parameters come in where the model keeps them in lock
      step, or into a spare buffer swapped in when overlapped;
    - overlapped, the model computes its next gradient into a spare buffer swapped in
      while the last one is sent (`gradient`: the one in flight).
    Else both pass through host buffers."""

    def __init__(self, arrays, model, servers: int, overlap: bool, halves=None):
        like = model.params.grad
        self.arrays, self.halves, self.spare = arrays, halves, 0
        self.headers, self.reply_headers = np.zeros((servers, HEADER)), np.zeros((servers, HEADER))
        self.gradient = self.parameters = None  # sent and received where the model keeps them
        if not arrays.direct or overlap:
            self.gradient = arrays.buffer_like(like)
        if not arrays.direct or (overlap and halves is None):
            self.parameters = arrays.buffer_like(like)
        if halves is not None:
            halves[0] = model.params.data
            model.swap_buffers(data=halves[0])
            self.spare = 1
        self.sends: list = []
        self.receives: list = []
        self.pull = True

    def outgoing(self, model, gradient):
        """The buffer that sends `gradient` (the model's, or an accumulated one)."""
        if self.gradient is None:
            return gradient
        if self.arrays.direct and gradient is model.params.grad:
            _, self.gradient = model.swap_buffers(grad=self.gradient)  # compute into the spare
            return self.gradient
        self.arrays.to_buffer(gradient, self.gradient)
        return self.gradient

    def incoming(self, model):
        """The buffer the parameters are received into."""
        if self.halves is not None:
            return self.halves[self.spare]
        return model.params.data if self.parameters is None else self.parameters

    def arrived(self, model, shared) -> None:
        """The parameters received are the model's from now on."""
        if self.halves is not None:
            shared.sync()  # what the servers wrote before their headers
            model.swap_buffers(data=self.halves[self.spare])
            self.spare = 1 - self.spare
        elif self.parameters is None:
            return
        elif self.arrays.direct:
            self.parameters, _ = model.swap_buffers(data=self.parameters)
        else:
            self.arrays.from_buffer(self.parameters, model.params.data)
