"""MPI on a backend's arrays: the one place where device memory meets MPI.

Host arrays, and device arrays where the MPI library reads device memory (CUDA-aware
MPI), go to MPI as they are. Other device arrays pass through a host buffer, one per
size and dtype, allocated on first use and kept. Queued device work is always finished
before MPI touches a buffer.
"""

from .comm import Comm


class ArrayComm:
    """`comm`'s collectives and messages on arrays of `backend`, in place."""

    def __init__(self, comm: Comm, backend):
        self.comm, self.backend = comm, backend
        self.direct = backend.device is None or comm.reaches(backend.device)
        self._host_buffers: dict = {}
        # what this rank sends for its collectives, counted as ring algorithms send: an
        # Allreduce of n bytes on p ranks 2 (p - 1) / p n, an Alltoall or an Allgather
        # (p - 1) / p n, a broadcast n from its root
        self.sent_bytes = 0

    def allreduce_sum(self, array) -> None:
        self.sent_bytes += 2 * self._share(array.nbytes)
        buffer = self._outgoing(array)
        self.comm.allreduce_sum(buffer)
        self._arrived(buffer, array)

    def iallreduce_sum(self, array):
        """Start an in-place sum of an array MPI reads directly (`direct`); the request."""
        self.sent_bytes += 2 * self._share(array.nbytes)
        return self.comm.iallreduce_sum(array)

    def alltoall(self, send, receive) -> None:
        """Comm.alltoall on arrays of the backend."""
        self.sent_bytes += self._share(send.nbytes)
        incoming = self._incoming(receive, role="receive")
        self.comm.alltoall(self._outgoing(send), incoming)
        self._arrived(incoming, receive)

    def allgather(self, array) -> None:
        """Comm.allgather (in place) on an array of the backend."""
        self.sent_bytes += self._share(array.nbytes)
        buffer = self._outgoing(array)
        self.comm.allgather(buffer)
        self._arrived(buffer, array)

    def _share(self, nbytes: int) -> int:
        return nbytes * (self.comm.size - 1) // self.comm.size

    def broadcast(self, array, root: int = 0) -> None:
        self.sent_bytes += array.nbytes if self.comm.rank == root else 0
        if self.comm.rank == root:
            self.comm.broadcast(self._outgoing(array), root=root)
        else:
            buffer = self._incoming(array)
            self.comm.broadcast(buffer, root=root)
            self._arrived(buffer, array)

    def gather_parts(self, array, bounds, tag: int) -> None:
        """Rank s (s < len(bounds)) holds `array[start:stop]` for its `bounds[s]`; rank 0
        receives the others' parts into its `array`, in place. By messages: the ranks
        beyond the parts take no part."""
        rank = self.comm.rank
        if rank == 0:
            parts = [array[start:stop] for start, stop in bounds[1:]]
            buffers = [self._message_buffer(part) for part in parts]
            self.comm.wait_all([self.comm.irecv(buffer, source=source, tag=tag)
                                for source, buffer in enumerate(buffers, 1)], "receive")
            for buffer, part in zip(buffers, parts, strict=True):
                if buffer is not part:
                    self.from_buffer(buffer, part)
        elif rank < len(bounds):
            part = array[slice(*bounds[rank])]
            buffer = self._message_buffer(part)
            if buffer is not part:
                self.to_buffer(part, buffer)
            self.comm.wait_all([self.comm.isend(buffer, dest=0, tag=tag)], "send")

    def _message_buffer(self, array):
        """`array` itself where MPI reaches it, else a host buffer of its own."""
        self.backend.synchronize()
        return array if self.direct else self.buffer_like(array)

    def buffer_like(self, array):
        """A buffer of its own for messages of `array`'s size, which MPI may read and write
        while the backend computes (for nonblocking sends and receives): a backend array
        where MPI reaches the backend's memory, else a host one."""
        if self.direct:
            return self.backend.xp.empty_like(array)
        return self.backend.host_empty(array.shape, array.dtype)

    def to_buffer(self, array, buffer) -> None:
        """Copy `array` into a buffer from `buffer_like`, finished before this returns."""
        if self.direct:
            buffer[...] = array
            self.backend.synchronize()
        else:
            self.backend.to_host(array, out=buffer)

    def from_buffer(self, buffer, array) -> None:
        """Copy a buffer from `buffer_like` into `array`."""
        if self.direct:
            array[...] = buffer
        else:
            self.backend.from_host(buffer, out=array)

    def _incoming(self, array, role: str = ""):
        """A buffer MPI may write for `array`, once nothing queued still uses `array`
        (host buffers are shared by size and dtype, and `role`)."""
        self.backend.synchronize()
        return array if self.direct else self._host_buffer(array, role)

    def _outgoing(self, array):
        """A buffer holding `array`'s values, for MPI to read."""
        buffer = self._incoming(array)
        if buffer is not array:
            self.backend.to_host(array, out=buffer)
        return buffer

    def _arrived(self, buffer, array) -> None:
        if buffer is not array:
            self.backend.from_host(buffer, out=array)

    def _host_buffer(self, array, role: str = ""):
        key = (array.size, str(array.dtype), role)
        if key not in self._host_buffers:
            self._host_buffers[key] = self.backend.host_empty(array.size, array.dtype)
        return self._host_buffers[key].reshape(array.shape)
