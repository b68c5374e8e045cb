"""The allreduce strategy's exchange overlapped with backward (PyTorch DDP's buckets): as
backward completes each layer's gradients (last layer first), they join a bucket; a
bucket of at least `bucket_bytes` contiguous in the flat buffer goes out at once as a
nonblocking Allreduce, while the layers below compute. The step waits only for what is
still in flight.

MPICH and Open MPI advance a nonblocking collective only inside MPI calls, and the
layers' matrix products make none; so while buckets are in flight a helper thread calls
MPI's progress engine every PROGRESS_SECONDS (a probe, which leaves the requests to the
training thread). Every rank forms the same buckets in the same order, as collectives
must be."""

import threading
import time

PROGRESS_SECONDS = 0.0005


class OverlappedExchange:
    def __init__(self, bucket_bytes: int):
        self.bucket_bytes = bucket_bytes
        self.requests: list = []
        self._in_flight = threading.Event()  # the progress thread runs while it is set
        self._closing = False
        self._driver: threading.Thread | None = None

    def setup(self, model, arrays) -> None:
        """Each layer's [start, stop) in the flat gradient buffer (None without any);
        `arrays`: the strategy's ArrayComm, on arrays MPI reads directly."""
        self.arrays, self.comm = arrays, arrays.comm
        self.grad = model.params.grad
        self.itemsize = self.grad.itemsize
        self.ranges = []
        for layer in model.layers:
            slots = [slot for slot in model.params.slots
                     if slot.name.startswith(f"{layer.name}/")]
            self.ranges.append((min(slot.offset for slot in slots),
                                max(slot.offset + slot.size for slot in slots))
                               if slots else None)
        self.waiting: list[tuple[int, int]] = []  # complete, not yet sent: sorted, disjoint
        self.done: set[int] = set()  # this step's complete layers
        self._driver = threading.Thread(target=self._drive, name="mpinn-progress", daemon=True)
        self._driver.start()

    def layer_done(self, index: int) -> None:
        """Layer `index`'s gradients are complete: send the bucket they close, if any."""
        self.done.add(index)
        if self.ranges[index] is None:
            return
        self.waiting = _merged([*self.waiting, self.ranges[index]])
        for start, stop in list(self.waiting):
            if (stop - start) * self.itemsize >= self.bucket_bytes:
                self._send(start, stop)

    def finish(self) -> None:
        """After backward: send what is left, then wait for every bucket. A rank that had
        no samples (no backward) sends the same buckets as the others, in their order."""
        for index in reversed(range(len(self.ranges))):
            if index not in self.done:
                self.layer_done(index)
        self.done.clear()
        for start, stop in list(self.waiting):
            self._send(start, stop)
        self._in_flight.clear()  # the wait below makes progress itself
        requests, self.requests = self.requests, []
        self.comm.wait_all(requests, "allreduce")

    def close(self) -> None:
        """After training: the progress thread ends."""
        if self._driver is not None:
            self._closing = True
            self._in_flight.set()
            self._driver.join()
            self._driver, self._closing = None, False
            self._in_flight.clear()

    def _send(self, start: int, stop: int) -> None:
        self.waiting.remove((start, stop))
        self.requests.append(self.arrays.iallreduce_sum(self.grad[start:stop]))
        self._in_flight.set()

    def _drive(self) -> None:
        """The progress thread: parked while nothing is in flight."""
        while self._in_flight.wait() and not self._closing:
            self.comm.progress()
            time.sleep(PROGRESS_SECONDS)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges with touching ones joined."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged
