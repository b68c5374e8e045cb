"""Fixed-point sums for reproducible training: the NumPy backend's numba passes against
the array ones, the counts of values past the bound or not finite, and sums that are the
same bits in any order and grouping, within the documented error of an exact sum."""

import itertools
import math

import numpy as np
import pytest
from mpinn_numpy.fixed_point import FixedPoint
from mpinn_strategies.reproducible import INTEGER_BITS, ArrayFixedPoint, largest

PASSES = {"numba": FixedPoint(), "array": ArrayFixedPoint(np)}


def chunk_gradients(count=6, size=5000, seed=0):
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-9, -1, size)  # magnitudes over 8 decades, as gradients
    return [(rng.standard_normal(size) * scales).astype(np.float32) for _ in range(count)]


def fixed_sum(passes, groups, exponent, limit):
    """The chunks summed group by group (as ranks would: up to two in a pass, the first
    pass replacing what the total held), then the groups' totals."""
    totals = []
    for group in groups:
        total = np.full(group[0].size, 12345, np.int64)
        for start in range(0, len(group), 2):
            rows = np.array(group[start:start + 2])
            assert passes.accumulate(rows, 2.0**exponent, total, limit, start == 0) == (0, 0)
        totals.append(total)
    out = np.empty(groups[0][0].size, np.float32)
    assert passes.decode(sum(totals), 2.0**-exponent, out) == largest(out)
    return out


@pytest.mark.parametrize("name", sorted(PASSES))
def test_any_order_and_grouping_gives_the_same_bits_within_the_bound(name):
    chunks = chunk_gradients()
    found_largest = max(largest(chunk) for chunk in chunks)
    limit = 2.0**INTEGER_BITS / len(chunks)
    exponent = math.floor(math.log2(limit / found_largest)) - 1
    found = set()
    for order in itertools.islice(itertools.permutations(chunks), 0, 720, 97):
        for cut in ([6], [3, 3], [1, 2, 3], [2, 1, 1, 2], [1] * 6):
            bounds = np.cumsum([0, *cut])
            groups = [list(order[a:b]) for a, b in itertools.pairwise(bounds)]
            found.add(fixed_sum(PASSES[name], groups, exponent, limit).tobytes())
    assert len(found) == 1
    exact = np.sum(np.array(chunks, np.float64), axis=0)
    summed = np.frombuffer(found.pop(), np.float32)
    # fixed point: at most n * 2^-(s+1) off before the one rounding to float32
    error = np.abs(summed.astype(np.float64) - exact)
    assert np.all(error <= len(chunks) * 2.0 ** -(exponent + 1)
                  + np.abs(exact) * np.finfo(np.float32).eps / 2)
    assert not np.array_equal(sum(chunks[::-1]), sum(chunks))  # float32's sums: not so


def test_both_passes_agree_and_count_what_does_not_fit():
    values = np.array([1.5, -2.0, 1e30, np.nan, -np.inf, 3.25e-3], np.float32)
    totals = []
    for passes in PASSES.values():
        total = np.ones(values.size, np.int64)
        assert passes.accumulate(values[None], 2.0**20, total, 2.0**40, False) == (1, 2)
        totals.append(total - 1)
    np.testing.assert_array_equal(*totals)
    assert largest(values[[0, 1, 5]]) == 2.0 and math.isnan(largest(values))
    assert totals[0].tolist() == [1572864, -2097152, 0, 0, 0, 3408]
    out = [np.empty(2, np.float64), np.empty(2, np.float64)]
    for passes, target in zip(PASSES.values(), out, strict=True):
        assert passes.decode(np.array([3, -(2**61)], np.int64), 2.0**-2, target) == 2.0**59
    np.testing.assert_array_equal(out[0], [0.75, -(2.0**59)])
    np.testing.assert_array_equal(*out)
