"""Fixed-point sums for reproducible training (mpinn_strategies.reproducible), by numba:
one pass per call. A value v joins an int64 accumulator as rint(v * 2^s): exact integer
sums, the same in any order and grouping."""

import numpy as np
from numba import prange

from .numba_threads import threaded


@threaded
def _accumulate(values, scale, acc, limit):
    too_large = not_finite = 0
    for i in prange(values.size):
        scaled = np.rint(np.float64(values[i]) * scale)
        if abs(scaled) < limit:
            acc[i] += np.int64(scaled)
        elif scaled == scaled and abs(scaled) != np.inf:
            too_large += 1
        else:
            not_finite += 1
    return too_large, not_finite


@threaded
def _decode(acc, inverse, out):
    for i in prange(out.size):
        out[i] = np.float64(acc[i]) * inverse


class FixedPoint:
    """The three passes on host arrays (see ArrayFixedPoint in mpinn_strategies.reproducible
    for their meaning)."""

    def accumulate(self, values, scale: float, acc, limit: float) -> tuple[int, int]:
        too_large, not_finite = _accumulate(values, np.float64(scale), acc, np.float64(limit))
        return int(too_large), int(not_finite)

    def decode(self, acc, inverse: float, out) -> None:
        _decode(acc, np.float64(inverse), out)
