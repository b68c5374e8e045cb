"""Fixed-point sums for reproducible training (mpinn_strategies.reproducible), by numba:
one pass per call. A value v joins an int64 accumulator as rint(v * 2^s): exact integer
sums, the same in any order and grouping."""

import numba
import numpy as np
from numba import prange

from .numba_threads import OPTIONS, threaded

BLOCK = 2048  # elements whose sums stay in the L1 cache while the rows pass through


@numba.njit(**OPTIONS)
def _add_row(values, scale, acc, limit, assign):
    """acc (`assign`: in place of what it held) += rint(values * scale) where it fits;
    the counts of values past `limit` (or not finite), and of values not finite. Branch
    free, so that it runs in vector instructions."""
    missed = not_finite = 0
    for i in range(values.size):
        scaled = np.rint(np.float64(values[i]) * scale)
        fits = abs(scaled) < limit
        value = np.int64(scaled) if fits else np.int64(0)
        if assign:
            acc[i] = value
        else:
            acc[i] += value
        missed += not fits
        not_finite += not abs(scaled) < np.inf
    return missed, not_finite


@threaded
def _accumulate(rows, scale, acc, limit, first):
    missed = not_finite = 0
    for block in prange((acc.size + BLOCK - 1) // BLOCK):
        start, stop = block * BLOCK, min((block + 1) * BLOCK, acc.size)
        for row in range(rows.shape[0]):
            counts = _add_row(rows[row, start:stop], scale, acc[start:stop], limit,
                              first and row == 0)
            missed += counts[0]
            not_finite += counts[1]
    return missed - not_finite, not_finite


@threaded
def _decode(acc, inverse, out):
    found = np.int64(0)
    for i in prange(out.size):
        out[i] = np.float64(acc[i]) * inverse
        found = max(found, abs(acc[i]))
    return found


class FixedPoint:
    """The two passes on host arrays (see ArrayFixedPoint in mpinn_strategies.reproducible
    for their meaning)."""

    def accumulate(self, rows, scale: float, acc, limit: float, first: bool) -> tuple[int, int]:
        too_large, not_finite = _accumulate(rows, np.float64(scale), acc, np.float64(limit),
                                            first)
        return int(too_large), int(not_finite)

    def decode(self, acc, inverse: float, out) -> float:
        # rounding is monotonic: the largest value decoded is the largest integer's
        largest = np.float64(_decode(acc, np.float64(inverse), out)) * inverse
        return float(out.dtype.type(largest))
