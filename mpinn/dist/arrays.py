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

    def allreduce_sum(self, array) -> None:
        buffer = self._outgoing(array)
        self.comm.allreduce_sum(buffer)
        self._arrived(buffer, array)

    def broadcast(self, array, root: int = 0) -> None:
        if self.comm.rank == root:
            self.comm.broadcast(self._outgoing(array), root=root)
        else:
            buffer = self._incoming(array)
            self.comm.broadcast(buffer, root=root)
            self._arrived(buffer, array)

    def send(self, array, dest: int, tag: int) -> None:
        self.comm.send(self._outgoing(array), dest=dest, tag=tag)

    def recv(self, array, source: int = -1, tag: int = -1) -> int:
        """Receive into `array`; returns the source rank."""
        buffer = self._incoming(array)
        source = self.comm.recv(buffer, source=source, tag=tag)
        self._arrived(buffer, array)
        return source

    def _incoming(self, array):
        """A buffer MPI may write for `array`, once nothing queued still uses `array`."""
        self.backend.synchronize()
        return array if self.direct else self._host_buffer(array)

    def _outgoing(self, array):
        """A buffer holding `array`'s values, for MPI to read."""
        buffer = self._incoming(array)
        if buffer is not array:
            self.backend.to_host(array, out=buffer)
        return buffer

    def _arrived(self, buffer, array) -> None:
        if buffer is not array:
            self.backend.from_host(buffer, out=array)

    def _host_buffer(self, array):
        key = (array.size, str(array.dtype))
        if key not in self._host_buffers:
            self._host_buffers[key] = self.backend.host_empty(array.size, array.dtype)
        return self._host_buffers[key].reshape(array.shape)
