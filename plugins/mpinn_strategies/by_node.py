"""The allreduce strategy's exchange node by node (`by_node`): inside a node through
shared memory, across nodes by one Allreduce per slice, so that each node sends the
gradient over the network once however many ranks it runs (a flat Allreduce sends it
once per rank whose ring neighbour is on another node, unless the MPI library arranges
its ranks by node itself, as MPICH does).

Every rank computes its gradient straight into its own part of an MPI shared-memory
window of its node, into one of two buffers in turn. With L ranks on every node, the
flat buffer is cut into L slices; then, per step:
1. a node barrier: every gradient of the node is written;
2. local rank j sums slice j of the node's gradients into its own (its own first, then
   the others in local rank order: the same sum on every run);
3. local rank j sums its slice with the other nodes' local ranks j (one Allreduce of S/L
   per rank, all L at once: the node's bytes on the network are S, both ways; with
   float16/bfloat16 `compression`, a half-precision exchange of the slice, half the
   bytes, see below);
4. a node barrier, then every rank assembles the sum in its other buffer (its own slice
   and the others', copied from their owners) and trains on that one from now on: the
   buffer the others read from is not written again before the next step's barriers,
   by which time they are done with it.
The result equals a flat Allreduce's up to float rounding. It needs host arrays, the
same number of ranks on every node and room in /dev/shm: where one lacks, the exchange is
one flat Allreduce, or, where the job insists (`by_node = true`), the first two are a
LayoutError. "auto" goes node by node only where the job spans several nodes and some
node runs several ranks: on one node MPI's own shared-memory Allreduce is as fast
(MPICH, 2 ranks: within 6%), and with one rank per node both ways are one.

Compressed, only what crosses the network is rounded: local rank j adds its residual's
slice j to the node's sum of slice j (as the flat exchange adds it to the rank's
gradient) and keeps that sum's roundings in it, so a rank's residual is nonzero on its
own slice alone. It is the compressor's residual (compression.py), full-sized, so that
checkpoints and the epoch-end sum onto rank 0 are the flat exchange's; the parts of it
outside a rank's slice (rank 0's after an epoch, anyone's after a resume) join the
rank's gradient before the node's sum, at the next step.
"""

import numpy as np

from mpinn.dist.arrays import ArrayComm
from mpinn.errors import LayoutError

from .compression import HalfExchange


class NodeExchange:
    def __init__(self, required: bool):
        self.required = required  # a layout it cannot serve is an error, not a fallback

    def setup(self, strategy, model) -> bool:
        """Move the model's gradient into shared memory; False (nothing changed) where it
        cannot (see the module's docstring)."""
        comm, grad = strategy.comm, model.params.grad
        sizes = np.array([comm.local_size, -comm.local_size], np.float64)
        comm.allreduce_max(sizes)
        nodes = np.array([float(comm.local_rank == 0)])
        comm.allreduce_sum(nodes)
        if not self.required and not 1 < nodes[0] < comm.size:
            return False  # one node (MPI's own shared memory), or one rank per node
        problem = None
        if sizes[0] != -sizes[1]:
            problem = (f"by_node needs as many ranks on every node; found {-sizes[1]:.0f} to "
                       f"{sizes[0]:.0f}")
        elif model.backend.device is not None:
            problem = ("by_node needs host arrays (the numpy backend): the ranks of a node "
                       "share their gradients in host memory")
        if problem and self.required:
            raise LayoutError(f"allreduce: {problem}")
        if problem:
            return False
        self.shared = comm.shared_memory(2 * grad.nbytes)
        if self.shared is None:
            return False
        self.node, self.cross = comm.node(), comm.split(comm.local_rank)
        ranks = sorted(self.shared.node_ranks, key=self.shared.node_ranks.get)
        self.buffers = [self.shared.array(rank, (2, grad.size), grad.dtype) for rank in ranks]
        self.turn = 0  # which of the two buffers this step's gradients are in
        mine = self.buffers[comm.local_rank][0]
        mine[...] = grad
        model.swap_buffers(grad=mine)
        count = len(ranks)
        self.bounds = [(grad.size * j // count, grad.size * (j + 1) // count)
                       for j in range(count)]
        self.local_rank, self.arrays = comm.local_rank, strategy.arrays
        self.compressor, self.across = strategy.compressor, None
        if self.compressor is not None:  # HalfPrecision: allreduce refuses the others
            start, stop = self.bounds[self.local_rank]
            self.cross_arrays = ArrayComm(self.cross, model.backend)
            self.across = HalfExchange(self.compressor.kind, self.compressor.codec, self.cross,
                                       self.cross_arrays, grad[start:stop])
        self.unsettled = True  # the residual may hold pending sums outside this slice
        return True

    def exchange(self, model) -> None:
        """Every rank's gradient summed, in the model's other gradient buffer."""
        grad, gradients = model.params.grad, [buffer[self.turn] for buffer in self.buffers]
        start, stop = self.bounds[self.local_rank]
        if self.across is not None and self.unsettled:
            self._settle(grad, start, stop)
        self._barrier()
        mine = grad[start:stop]
        for index, gradient in enumerate(gradients):
            if index != self.local_rank:
                mine += gradient[start:stop]
        if self.across is not None:
            self.across.exchange(mine, self.compressor.residual[start:stop])
            self.arrays.sent_bytes += self.cross_arrays.sent_bytes
            self.cross_arrays.sent_bytes = 0
            self.compressor.apart = True
        elif self.cross.size > 1:
            self.cross.allreduce_sum(mine)  # counted as ArrayComm counts (a ring's bytes)
            self.arrays.sent_bytes += 2 * mine.nbytes * (self.cross.size - 1) // self.cross.size
        self._barrier()
        self.turn = 1 - self.turn
        summed = self.buffers[self.local_rank][self.turn]
        for owner, (first, last) in enumerate(self.bounds):
            summed[first:last] = gradients[owner][first:last]
        model.swap_buffers(grad=summed)

    def _settle(self, grad, start: int, stop: int) -> None:
        """The residual outside this rank's slice joins its gradient (see the module's
        docstring); its slice waits for the node's sum, as at every step."""
        residual = self.compressor.residual
        for part in (slice(0, start), slice(stop, grad.size)):
            grad[part] += residual[part]
            residual[part] = 0
        self.unsettled = False

    def end_epoch(self) -> None:
        """After the compressor's epoch end: rank 0 holds every pending sum."""
        self.unsettled = True

    def _barrier(self) -> None:
        """The node's writes to shared memory so far are seen by all its ranks."""
        self.shared.sync()
        self.node.allreduce_sum(np.zeros(1))
        self.shared.sync()

    def close(self, model) -> None:
        """After training (collective): the model keeps its gradient buffer, the shared
        memory and the sub-communicators go."""
        model.swap_buffers(grad=model.params.grad.copy())
        self.shared.free()
        self.node.free()
        self.cross.free()
