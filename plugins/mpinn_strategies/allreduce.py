"""Synchronous data parallelism: every rank trains its shard of each global batch, the
gradients are averaged with one Allreduce on the flat gradient buffer, and every rank
applies the same optimizer step, so all ranks hold the same parameters throughout.

`compression` puts fewer bytes on the wire, with error feedback (compression.py):
"float16" or "bfloat16" (half the bytes), or "powersgd" (Dense kernels as rank-r
products, `powersgd_rank`). `overlap` sends the gradients in buckets of `bucket_mb` while
backward still computes (overlap.py). `reproducible` gives the same parameters bit for
bit on any number of ranks (reproducible.py: fixed chunks of `chunk_size` samples,
exact fixed-point sums). `by_node` sums inside each node through shared
memory and across nodes once per node (by_node.py), with float16/bfloat16 compression
across the nodes where set: "auto" (the default) where the job spans several nodes with
several ranks on a node and it can (host arrays, as many ranks on every node, room in
/dev/shm, no overlap, no powersgd), true to insist, false for one flat exchange."""

from mpinn import threads
from mpinn.dist import Strategy
from mpinn.errors import ConfigError, choose

from .by_node import NodeExchange
from .compression import HalfPrecision, PowerSGD
from .overlap import OverlappedExchange
from .reproducible import BLAS_THREADS, ChunkedExactSum, check_options

COMPRESSIONS = ("none", "float16", "bfloat16", "powersgd")


class AllreduceStrategy(Strategy):
    name = "allreduce"

    def __init__(self, comm, compression: str = "none", powersgd_rank: "int | None" = None,
                 overlap: bool = False, bucket_mb: float = 4.0,
                 by_node: "bool | str" = "auto", reproducible: bool = False,
                 chunk_size: int = 16):
        super().__init__(comm)
        if not isinstance(overlap, bool):
            raise ConfigError(f"allreduce: overlap must be true or false; received: {overlap!r}")
        if not (isinstance(by_node, bool) or by_node == "auto"):
            raise ConfigError("allreduce: by_node must be true, false or 'auto'; received: "
                              f"by_node={by_node!r}")
        if by_node is True and (overlap or compression == "powersgd"):
            raise ConfigError("allreduce: by_node goes with overlap = false and compression "
                              f"'none', 'float16' or 'bfloat16'; received: overlap={overlap!r}, "
                              f"compression={compression!r}")
        if overlap and compression != "none":
            raise ConfigError("allreduce: overlap goes with compression 'none' only; "
                              f"received: compression={compression!r}")
        if (isinstance(bucket_mb, bool) or not isinstance(bucket_mb, int | float)
                or not 0 < bucket_mb < 2**20):
            raise ConfigError("allreduce: bucket_mb must be a number above 0; "
                              f"received: bucket_mb={bucket_mb!r}")
        self.overlapped = None
        if overlap and self.size > 1:
            self.overlapped = OverlappedExchange(int(bucket_mb * 2**20))
        choose("allreduce compression", compression, COMPRESSIONS)
        if powersgd_rank is not None and compression != "powersgd":
            raise ConfigError("allreduce: powersgd_rank applies to compression 'powersgd' "
                              f"only; received: compression={compression!r}")
        rank = 4 if powersgd_rank is None else powersgd_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError("allreduce: powersgd_rank must be a whole number of at least 1; "
                              f"received: powersgd_rank={powersgd_rank!r}")
        check_options("allreduce", reproducible, chunk_size)
        if reproducible and (overlap or compression != "none" or by_node is True):
            raise ConfigError("allreduce: reproducible goes with overlap = false, compression "
                              f"'none' and by_node 'auto' or false; received: overlap={overlap!r}"
                              f", compression={compression!r}, by_node={by_node!r}")
        self.exact = ChunkedExactSum(chunk_size, (self.rank, self.size)) if reproducible else None
        if reproducible:
            self.blas_threads = BLAS_THREADS
        self.compressor = None
        if self.size > 1 and compression == "powersgd":
            self.compressor = PowerSGD(rank)
        elif self.size > 1 and compression != "none":
            self.compressor = HalfPrecision(compression)
        self._resumed = None
        wanted = by_node is True or (by_node == "auto" and not overlap and not reproducible
                                     and compression != "powersgd")
        self.node_exchange = NodeExchange(by_node is True) if wanted and self.size > 1 else None
        self.by_node = False  # whether this fit's exchange goes node by node

    @classmethod
    def on_one_rank(cls, comm, options):
        return None if options.get("reproducible") else super().on_one_rank(comm, options)

    @property
    def exact_sums(self):
        return self.exact is not None

    def setup(self, model):
        super().setup(model)
        self.arrays.broadcast(model.params.data, root=0)
        if self.exact is not None:
            threads.apply(threads.ThreadPlan(*self.blas_threads))
            self.exact.setup(model, self.comm, self.arrays)
        if self.compressor is not None:
            self.compressor.setup(self, model)
            if self._resumed is not None:
                self.compressor.restore(self._resumed)
        self._resumed = None
        self.by_node = self.node_exchange is not None and self.node_exchange.setup(self, model)
        if self.overlapped is not None and self.arrays.direct:
            self.overlapped.setup(model, self.arrays)
            self.layer_done = self.overlapped.layer_done
        else:  # device arrays that MPI cannot read: one exchange after backward
            self.layer_done = None

    def notes(self, batch_size):
        note = None if self.exact is None else self.exact.note(batch_size)
        return [note] if note else []

    def train_shard(self, count):
        return self.shard(count) if self.exact is None else self.exact.shard(count)

    def compute_gradients(self, model, x, y, scale, sums):
        if self.exact is None:
            super().compute_gradients(model, x, y, scale, sums)
        else:
            self.exact.compute(model, x, y, scale, sums)

    def apply_gradients(self, model, local_samples, global_samples):
        self.exchange(model)
        model.optimizer.apply(model.params)

    def exchange(self, model):
        """Sum every rank's share of the mean gradient: one in-place Allreduce, or the
        compressor's exchange."""
        if self.layer_done is not None:
            self.overlapped.finish()
        elif self.exact is not None:
            self.exact.exchange(model)
        elif self.by_node:
            self.node_exchange.exchange(model)
        elif self.compressor is not None:
            self.compressor.exchange(model.params.grad)
        elif self.size > 1:
            self.arrays.allreduce_sum(model.params.grad)

    def finish(self, model):
        if self.overlapped is not None:
            self.overlapped.close()
        if self.by_node:
            self.node_exchange.close(model)
        if self.exact is not None:
            self.exact.close(model)

    def report(self):
        return {"by_node": True} if self.by_node else {}

    def end_epoch(self, model):
        if self.compressor is not None:
            self.compressor.end_epoch()
        if self.by_node:
            self.node_exchange.end_epoch()

    def rank_state(self, model):
        return {} if self.compressor is None else self.compressor.rank_state()

    def shared_state(self, model):
        found = {} if self.compressor is None else self.compressor.shared_state()
        return found if self.exact is None else {**found,
                                                 **self.exact.shared_state(model.params.dtype)}

    def restore_state(self, found, model):
        if self.compressor is not None:
            found.check_strategy_shapes(self.compressor.expected_shapes(model))
        if self.exact is not None:  # checked here, with the rest of setup, on every rank
            found.check_strategy_shapes({"fixed_point_largest": (1,)})
            self.exact.restore(found)
        self._resumed = found
