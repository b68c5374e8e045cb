"""allreduce's reproducible mode (`reproducible = true`): the same parameters, bit for
bit, on any number of ranks.

Floating-point addition is not associative, so a gradient summed in a grouping that
depends on the world size changes the bits; and BLAS gives a row of a product bits that
depend on how many rows it multiplies at once (OpenBLAS: X[:32] @ W differs from
(X @ W)[:32]) and on its thread count. So:
- every global batch is cut into chunks of `chunk_size` samples, the same on any world
  size; ranks own whole chunks (a contiguous run of them, sizes differing by at most
  one chunk), and a rank computes each chunk's gradient on its own, with one BLAS thread
  and Dropout masks drawn from (seed, epoch, step, chunk) alone;
- each chunk's gradient joins an int64 accumulator in fixed point, rint(g * 2^s): integer
  sums are exact, so the rank's sum of its chunks and the Allreduce of the ranks' sums
  give the same integers in any order; the sum is then g = total * 2^-s, rounded once to
  the model's dtype.

The exponent s is agreed without a message of its own: it comes from the largest
magnitude of the previous step's summed gradient (the same on every rank), with
HEADROOM_BITS to spare, so that n chunks' values stay below 2^62 / n each. A chunk value
past that bound (a chunk's gradient larger than 2^HEADROOM_BITS times the last sum's
largest value) is counted in the sum's own Allreduce; then every rank computes its
chunks again to measure this step's largest value (a 1-number Allreduce) and once more to
sum them with its exponent. Whether that happens depends on the chunks alone, not on the
ranks. The error against an exact sum is at most n * 2^-(s+1) per element
before the final rounding (s is about 55 - log2(largest value) - log2(n)): far below the
dtype's own rounding. The exponent is in checkpoints, so resumed runs continue exactly.
"""

import math

import numpy as np

from mpinn.errors import DataError, LayoutError

HEADROOM_BITS = 8
INTEGER_BITS = 62  # the sum of n chunks' values, each below 2^62 / n, fits an int64
FIRST_LARGEST = 1.0  # the largest value assumed before the first step


class ChunkedExactSum:
    def __init__(self, chunk_size: int):
        self.chunk_size = chunk_size
        self.largest = FIRST_LARGEST  # of the last step's summed gradient (every rank's)

    def setup(self, strategy, model) -> None:
        if not strategy.arrays.direct:
            raise LayoutError("allreduce: reproducible needs arrays MPI reads directly "
                              "(host arrays, or CUDA-aware MPI)")
        make = getattr(model.backend, "fixed_point", None)
        self.xp = xp = model.backend.xp
        self.fixed = (make() if make is not None else None) or ArrayFixedPoint(xp)
        self.comm, self.arrays = strategy.comm, strategy.arrays
        self.rank, self.size = strategy.rank, strategy.size
        self.total = xp.zeros(model.params.size + 2, xp.int64)  # and the two counts
        self.outputs = None
        self._batch = None

    def note(self, batch_size: int, ranks: int) -> "str | None":
        """The mode's layout in a line, where some ranks have no chunk; else None."""
        chunks = -(-batch_size // self.chunk_size)
        if chunks >= ranks:
            return None
        return (f"reproducible: each step of {batch_size} samples is {chunks} chunk(s) of "
                f"{self.chunk_size}, so {ranks - chunks} of the {ranks} ranks train none")

    def shard(self, count: int) -> tuple[int, int]:
        """This rank's whole chunks of a global batch of `count` samples; sets the step's
        exponent (every rank asks, whether it has chunks or not)."""
        chunks = -(-count // self.chunk_size)
        self.limit = 2.0 ** INTEGER_BITS / chunks  # each chunk's scaled values stay below
        self.exponent = self._exponent(self.largest, HEADROOM_BITS)
        first, last = chunks * self.rank // self.size, chunks * (self.rank + 1) // self.size
        self.first_chunk = first
        self.place = self.comm.where  # (epoch, step), as the strategy was told: Dropout keys
        return min(first * self.chunk_size, count), min(last * self.chunk_size, count)

    def compute(self, model, x, y, scale: float):
        """Each chunk's gradient, in turn, into the fixed-point sum; (loss, outputs) of
        the share, as Sequential.compute_gradients gives them."""
        self._batch = (model, x, y, scale)
        return self._chunks(accumulate=True)

    def _chunks(self, accumulate: bool):
        """Each chunk's gradient: into the sum, or (`accumulate` False) only measured;
        (loss, outputs) of the share."""
        model, x, y, scale = self._batch
        grad, count, multiplier = model.params.grad, len(x), 2.0 ** self.exponent
        self.measured, loss_sum = 0.0, 0.0
        if self.outputs is None or len(self.outputs) < count:
            self.outputs = self.xp.empty((count, model.layers[-1].output_dim), grad.dtype)
        for start in range(0, count, self.chunk_size):
            stop = min(start + self.chunk_size, count)
            model.seed_dropout((*self.place, self.first_chunk + start // self.chunk_size))
            loss, out = model.compute_gradients(x[start:stop], y[start:stop],
                                                scale * (stop - start) / count)
            if accumulate:
                counts = self.fixed.accumulate(grad, multiplier, self.total[:-2], self.limit)
                self.total[-2] += counts[0]
                self.total[-1] += counts[1]
            else:
                self.measured = max(self.measured, largest(grad))
            loss_sum += loss * (stop - start)
            self.outputs[start:stop] = out  # the model reuses its buffers
        return loss_sum / count, self.outputs[:count]

    def exchange(self, model) -> None:
        """Every rank's fixed-point sum summed; the gradient, in the model's dtype."""
        grad = model.params.grad
        while True:
            self.arrays.allreduce_sum(self.total)
            if int(self.total[-1]):
                grad[...] = math.nan  # the step is skipped, or the run stops
                break
            if not int(self.total[-2]):
                self.fixed.decode(self.total[:-2], 2.0 ** -self.exponent, grad)
                found = largest(grad)
                if found > 0:
                    self.largest = found
                break
            # a chunk outgrew the exponent: every rank measures its chunks, then sums
            # them again with the exponent of this step's largest value
            self.total[...] = 0
            measured = np.array([0.0])
            if self._batch is not None:
                self._chunks(accumulate=False)
                measured[0] = self.measured
            self.comm.allreduce_max(measured)
            self.exponent = self._exponent(float(measured[0]), 0)
            if self._batch is not None:
                self._chunks(accumulate=True)
        self.total[...] = 0
        self._batch = None

    def _exponent(self, largest: float, spare_bits: int) -> int:
        """The s that keeps largest * 2^s below the limit, with `spare_bits` to spare."""
        return math.floor(math.log2(self.limit / largest)) - 1 - spare_bits

    def shared_state(self, dtype) -> dict:
        """The largest value: one of a gradient's, so the model's dtype holds it exactly."""
        return {"fixed_point_largest": np.array([self.largest], dtype)}

    def restore(self, found) -> None:
        """The largest value of the step before the checkpoint (a crafted one that is not
        above 0 is refused)."""
        if "fixed_point_largest" in found.shapes.get("strategy", {}):
            largest = float(found.strategy_tensor("fixed_point_largest")[0])
            if not largest > 0:
                raise DataError(f"{found.path}: strategy state fixed_point_largest is "
                                f"{largest}, not above 0")
            self.largest = largest


def largest(values) -> float:
    """The largest magnitude in `values` (NaN where one is NaN)."""
    return max(float(values.max()), -float(values.min())) if values.size else 0.0


class ArrayFixedPoint:
    """The fixed-point passes by the array library's own operations (CuPy; NumPy without
    numba)."""

    def __init__(self, xp):
        self.xp = xp

    def accumulate(self, values, scale: float, acc, limit: float) -> tuple[int, int]:
        """acc += rint(values * scale) where its magnitude is below `limit`; returns how
        many values were finite but past it, and how many were not finite."""
        xp = self.xp
        scaled = xp.rint(values.astype(xp.float64) * scale)
        finite = xp.isfinite(scaled)
        fits = finite & (xp.abs(scaled) < limit)
        acc += xp.where(fits, scaled, 0).astype(xp.int64)
        return int((finite & ~fits).sum()), int((~finite).sum())

    def decode(self, acc, inverse: float, out) -> None:
        """out = acc * inverse, in out's dtype."""
        out[...] = acc.astype(self.xp.float64) * inverse
