"""Claiming shared parameters' cache lines (mpinn_strategies.cache_lines) rewrites the
bits it finds, whatever they are."""

import numpy as np
import pytest
from mpinn_strategies.cache_lines import claim


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 3])
def test_a_claim_leaves_every_bit_as_it_was(dtype, offset):
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2 ** 16, 4099 * np.dtype(dtype).itemsize // 2, dtype=np.uint16)
    values = words.view(dtype)  # every pattern: NaN payloads, -0.0, subnormals, infinities
    values[:4] = [-0.0, np.nan, np.inf, np.finfo(dtype).smallest_subnormal]
    before = values.copy()
    claim(values[offset:])
    np.testing.assert_array_equal(values.view(np.uint16), before.view(np.uint16))


def test_a_claim_writes():
    """A claim is a store (what hands the lines over), not a read."""
    values = np.ones(100, np.float32)
    values.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        claim(values)
