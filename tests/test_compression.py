"""The wire formats of compressed exchange, against their definitions (one process)."""

import numpy as np
import pytest
from mpinn_strategies.compression import HalfPrecision


def wire(kind):
    half = HalfPrecision(kind)
    half.xp = np
    half.summed = np.empty(0, np.float32)
    return half


@pytest.mark.parametrize("value, bits", [
    (1.0, 0x3F80),
    (1 + 2.0**-8, 0x3F80),  # halfway: to the even neighbour below
    (1 + 3 * 2.0**-8, 0x3F82),  # halfway: to the even neighbour above
    (1 + 2.0**-8 + 2.0**-20, 0x3F81),  # past halfway: up
    (-2.5, 0xC020),
    (np.inf, 0x7F80),
    (np.finfo(np.float32).max, 0x7F80),  # rounds past the largest bfloat16
    (np.nan, 0x7FC0),
    (2.0**-133, 0x0001),  # the smallest bfloat16 (a subnormal)
    (2.0**-135, 0x0000),  # a quarter of it: to zero
])
def test_bfloat16_rounds_to_nearest_even(value, bits):
    out = np.empty(1, np.uint16)
    wire("bfloat16")._encode(np.array([value], np.float32), 1.0, out)
    assert out[0] == bits, hex(out[0])


def test_bfloat16_keeps_what_it_can_hold_and_float16_too():
    values = np.array([0.0, -0.0, 1.5, -3.75, 2.0**100, 2.0**-100, 1 + 2.0**-7], np.float32)
    out = np.empty(len(values), np.uint16)
    half = wire("bfloat16")
    half._encode(values, 1.0, out)
    np.testing.assert_array_equal(half._decoded(out), values)
    small = np.array([0.0, 1.5, -3.75, 2.0**-14, 65504.0], np.float32)
    out16 = np.empty(len(small), np.float16)
    half16 = wire("float16")
    half16._encode(small, 1.0, out16)
    np.testing.assert_array_equal(half16._decoded(out16), small)


@pytest.mark.parametrize("largest, ranks", [(1e-6, 2), (3.0, 4), (60000.0, 8), (1e30, 3)])
def test_float16_scale_is_a_power_of_two_that_keeps_sums_in_range(largest, ranks):
    half = wire("float16")
    half.size = ranks
    scale = half._scale(largest)
    assert np.log2(scale) == int(np.log2(scale))
    assert largest * scale * ranks <= 2.0**15 < 2 * largest * scale * ranks
