"""The reproducible mode of `allreduce` and sync `ps` (`reproducible = true`): the same
parameters, bit for bit, on any number of ranks, the two strategies alike.

Floating-point addition is not associative, so a gradient summed in a grouping that
depends on the world size changes the bits; and BLAS gives a row of a product bits that
depend on how many rows it multiplies at once (OpenBLAS: X[:32] @ W differs from
(X @ W)[:32]) and on its thread count. So:
- every global batch is cut into chunks of `chunk_size` samples, the same on any world
  size; ranks (ps: workers) own whole chunks (a contiguous run of them, sizes differing
  by at most one chunk), and a rank computes each chunk's gradient on its own, with one
  BLAS thread and Dropout masks drawn from (seed, epoch, step, chunk) alone; each
  chunk's loss and metrics go into the epoch's sums on their own (exact sums,
  mpinn/epoch_sums.py);
- each chunk's gradient is scaled to fixed point, rint(g * 2^s), and summed in int64, up
  to GROUP chunks (each computed into a gradient buffer of its own) in one pass: integer
  sums are exact, so the rank's sum of its chunks and the Allreduce of the ranks' sums
  give the same integers in any order; the sum is then g = total * 2^-s, rounded once to
  the model's dtype, on every rank (a ps server steps its slice of it).

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

from mpinn.errors import ConfigError, DataError, LayoutError

HEADROOM_BITS = 8
INTEGER_BITS = 62  # the sum of n chunks' values, each below 2^62 / n, fits an int64
FIRST_LARGEST = 1.0  # the largest value assumed before the first step
GROUP = 4  # chunks whose gradients join the sum in one pass (each in a buffer of its own)


def check_options(strategy: str, reproducible, chunk_size) -> None:
    """A strategy's `reproducible` and `chunk_size` options, or a ConfigError naming them."""
    if not isinstance(reproducible, bool):
        raise ConfigError(f"{strategy}: reproducible must be true or false; received: "
                          f"reproducible={reproducible!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"{strategy}: chunk_size must be a whole number of at least 1; "
                          f"received: chunk_size={chunk_size!r}")


BLAS_THREADS = (1, "reproducible: BLAS's bits depend on its thread count")


class ChunkedExactSum:
    """A strategy's reproducible mode: the chunks a rank owns, their gradients summed in
    fixed point, and the exact sum over ranks, decoded on every rank."""

    def __init__(self, chunk_size: int, share: tuple[int, int]):
        """`share`: (index, parts): this rank owns part `index` of `parts` of each step's
        chunks (a ps server owns none and never asks)."""
        self.chunk_size, self.share = chunk_size, share
        self.largest = FIRST_LARGEST  # of the last step's summed gradient (every rank's)

    def setup(self, model, comm, arrays) -> None:
        if not arrays.direct:
            raise LayoutError("reproducible needs arrays MPI reads directly (host arrays, or "
                              "CUDA-aware MPI)")
        make = getattr(model.backend, "fixed_point", None)
        self.xp = xp = model.backend.xp
        self.fixed = (make() if make is not None else None) or ArrayFixedPoint(xp)
        self.comm, self.arrays = comm, arrays
        # the summed chunk values, then: too large, not finite, chunks summed
        self.total = xp.zeros(model.params.size + 3, xp.int64)
        self.gradients = None  # GROUP rows; row 0 is the model's gradient buffer
        self._batch = None

    def note(self, batch_size: int) -> "str | None":
        """The mode's layout in a line, where some ranks have no chunk; else None."""
        chunks, parts = -(-batch_size // self.chunk_size), self.share[1]
        if chunks >= parts:
            return None
        return (f"reproducible: each step of {batch_size} samples is {chunks} chunk(s) of "
                f"{self.chunk_size}, so {parts - chunks} of the {parts} training ranks train "
                "none")

    def shard(self, count: int) -> tuple[int, int]:
        """This rank's whole chunks of a global batch of `count` samples."""
        index, parts = self.share
        chunks = -(-count // self.chunk_size)
        self._scale(chunks)
        self.first_chunk = chunks * index // parts
        last = chunks * (index + 1) // parts
        self.place = self.comm.where  # (epoch, step), as the strategy was told: Dropout keys
        return (min(self.first_chunk * self.chunk_size, count),
                min(last * self.chunk_size, count))

    def _scale(self, chunks: int) -> None:
        """The step's bound on each chunk's scaled values, and its exponent."""
        self.limit = 2.0 ** INTEGER_BITS / chunks
        self.exponent = self._exponent(self.largest, HEADROOM_BITS)

    def compute(self, model, x, y, scale: float, sums) -> None:
        """Each chunk's gradient into the fixed-point sum, its figures into `sums`."""
        self._batch = (model, x, y, scale)
        chunks = -(-len(x) // self.chunk_size)
        if self.gradients is None or len(self.gradients) < min(chunks, GROUP):
            self.gradients = self.xp.empty((min(chunks, GROUP), model.params.size),
                                           model.params.dtype)
            model.swap_buffers(grad=self.gradients[0])
        self._chunks(sums)
        self.total[-1] = chunks

    def _chunks(self, sums=None, measure: bool = False) -> None:
        """Each chunk's gradient, GROUP at a time, into the sum (or, `measure`, only their
        largest value into self.measured); figures into `sums` where given."""
        model, x, y, scale = self._batch
        count, rows = len(x), self.gradients
        starts = range(0, count, self.chunk_size)
        self.measured, too_large, not_finite = 0.0, 0, 0
        for first in range(0, len(starts), GROUP):
            group = starts[first:first + GROUP]
            for row, start in enumerate(group):
                stop = min(start + self.chunk_size, count)
                if row:
                    model.swap_buffers(grad=rows[row])
                model.seed_dropout((*self.place, self.first_chunk + first + row))
                loss, out = model.compute_gradients(x[start:stop], y[start:stop],
                                                    scale * (stop - start) / count)
                if sums is not None:
                    sums.add(loss, out, y[start:stop])
            if len(group) > 1:
                model.swap_buffers(grad=rows[0])
            if measure:
                self.measured = max(self.measured, largest(rows[:len(group)]))
                continue
            counts = self.fixed.accumulate(rows[:len(group)], 2.0 ** self.exponent,
                                           self.total[:-3], self.limit, first == 0)
            too_large, not_finite = too_large + counts[0], not_finite + counts[1]
        self.total[-3], self.total[-2] = too_large, not_finite

    def exchange(self, model) -> None:
        """Every rank's fixed-point sum summed; the gradient, in the model's dtype, on
        every rank (a ps server's too)."""
        if self._batch is None:
            self.total[...] = 0  # no chunk this step
        self.arrays.allreduce_sum(self.total)
        self._scale(int(self.total[-1]))  # the exponent the chunks were scaled by
        if int(self.total[-3]) and not int(self.total[-2]):
            self._again()
        if int(self.total[-2]):
            model.params.grad[...] = math.nan  # the step is skipped, or the run stops
        else:
            found = self.fixed.decode(self.total[:-3], 2.0 ** -self.exponent, model.params.grad)
            if found > 0:
                self.largest = found
        self._batch = None

    def _again(self) -> None:
        """A chunk outgrew the exponent: every rank measures its chunks, then sums them
        again with the exponent of this step's largest value."""
        measured = np.array([0.0])
        if self._batch is not None:
            self._chunks(measure=True)
            measured[0] = self.measured
        self.comm.allreduce_max(measured)
        self.exponent = self._exponent(float(measured[0]), 0)
        self.total[...] = 0
        if self._batch is not None:
            self._chunks()
        self.arrays.allreduce_sum(self.total)

    def close(self, model) -> None:
        """After training: the model keeps a gradient buffer of its own."""
        if self.gradients is not None:
            model.swap_buffers(grad=self.gradients[0].copy())
            self.gradients = None

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

    def accumulate(self, rows, scale: float, acc, limit: float, first: bool) -> tuple[int, int]:
        """The sum over `rows` of rint(row * scale), where a value's magnitude is below
        `limit`, into acc (`first`: in place of what it held); returns how many values
        were finite but past the limit, and how many were not finite."""
        xp = self.xp
        scaled = xp.rint(rows.astype(xp.float64) * scale)
        finite = xp.isfinite(scaled)
        fits = finite & (xp.abs(scaled) < limit)
        summed = xp.where(fits, scaled, 0).astype(xp.int64).sum(axis=0)
        if first:
            acc[...] = summed
        else:
            acc += summed
        return int((finite & ~fits).sum()), int((~finite).sum())

    def decode(self, acc, inverse: float, out) -> float:
        """out = acc * inverse, in out's dtype; returns its largest magnitude."""
        out[...] = acc.astype(self.xp.float64) * inverse
        return largest(out)
