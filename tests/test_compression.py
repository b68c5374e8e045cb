"""The wire formats of compressed exchange, against their definitions (one process): the
NumPy backend's numba codec and the array-library codec give the same bits."""

import os
import subprocess
import sys

import numpy as np
import pytest
from mpinn_numpy.half import HalfCodec
from mpinn_strategies.compression import ArrayHalfCodec, half_scale

CODECS = {"numba": HalfCodec, "array": lambda kind: ArrayHalfCodec(np, kind)}
SPECIAL = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e9, 2.0**-14, 2.0**-24,
                    2.0**-25, 3 * 2.0**-26, np.inf, -np.inf, np.nan,
                    np.finfo(np.float32).max, np.finfo(np.float32).tiny], np.float32)


def encoded(codec, values, scale=1.0):
    """(wire bits, residual); Inf and NaN pass through quietly, as in training."""
    wire, residual = np.empty(len(values), np.uint16), np.empty_like(values)
    with np.errstate(all="ignore"):
        codec.encode(values, scale, wire, residual)
    return wire, residual


@pytest.mark.parametrize("codec", CODECS)
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
def test_bfloat16_rounds_to_nearest_even(codec, value, bits):
    wire, _ = encoded(CODECS[codec]("bfloat16"), np.array([value], np.float32))
    assert wire[0] == bits, hex(wire[0])


@pytest.mark.parametrize("scale", [1.0, 2.0**10, 2.0**-3])
def test_float16_bits_are_numpys(scale):
    rng = np.random.default_rng(0)
    values = np.concatenate([SPECIAL, rng.standard_normal(10_000).astype(np.float32)
                             * np.float32(10.0) ** rng.integers(-9, 5, 10_000)])
    with np.errstate(all="ignore"):
        expected = (values * np.float32(scale)).astype(np.float16).view(np.uint16)
    for name, make in CODECS.items():
        wire, residual = encoded(make("float16"), values, scale)
        np.testing.assert_array_equal(wire, expected, err_msg=name)
        finite = np.isfinite(expected.view(np.float16))
        np.testing.assert_array_equal(
            residual[finite], values[finite] - expected.view(np.float16)[finite].astype(
                np.float32) / np.float32(scale), err_msg=name)


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_codecs_agree_bit_for_bit(kind, dtype):
    rng = np.random.default_rng(1)
    values = rng.standard_normal(5_000).astype(dtype)
    numba_codec, array_codec = HalfCodec(kind), ArrayHalfCodec(np, kind)
    (wire_a, residual_a), (wire_b, residual_b) = (encoded(codec, values, 4.0)
                                                  for codec in (numba_codec, array_codec))
    np.testing.assert_array_equal(wire_a, wire_b)
    np.testing.assert_array_equal(residual_a, residual_b)
    rows = np.stack([wire_a, wire_a[::-1], wire_a])
    sums = [np.empty(len(values), dtype) for _ in range(2)]
    numba_codec.sum_rows(rows, sums[0])
    array_codec.sum_rows(rows, sums[1])
    np.testing.assert_array_equal(*sums)
    numba_codec.decode(wire_a, 4.0, sums[0])
    array_codec.decode(wire_a, 4.0, sums[1])
    np.testing.assert_array_equal(*sums)


@pytest.mark.parametrize("largest, ranks", [(1e-6, 2), (3.0, 4), (60000.0, 8), (1e30, 3)])
def test_float16_scale_is_a_power_of_two_that_keeps_sums_in_range(largest, ranks):
    scale = half_scale("float16", largest * ranks)  # the sum's largest magnitude
    assert np.log2(scale) == int(np.log2(scale))
    assert largest * scale * ranks <= 2.0**15 < 2 * largest * scale * ranks


@pytest.mark.timeout(120)
@pytest.mark.parametrize("first", ["codec", "optimizer"])
def test_numba_runs_its_own_thread_pool_whichever_kernel_runs_first(first):
    """OpenMP's spinning threads made every kernel 20-40x slower on 2 ranks of 2 cores; a
    codec that ran before the first optimizer step used to pick OpenMP."""
    script = f"""
import numba
import numpy as np
import mpinn
model = mpinn.Sequential([mpinn.Dense(600, input_shape=(500,))])  # fused: 300,600 parameters
model.compile("adam", "mse")
model.build()
if "{first}" == "codec":
    from mpinn_numpy.half import HalfCodec
    values = np.ones(8, np.float32)
    HalfCodec("float16").encode(values, 1.0, np.empty(8, np.uint16), np.empty(8, np.float32))
else:
    model.fit(np.ones((2, 500), np.float32), np.ones((2, 600), np.float32), epochs=1, verbose=0)
print(numba.threading_layer())
"""
    environment = {key: value for key, value in os.environ.items()
                   if key != "NUMBA_THREADING_LAYER"}
    environment["OPENBLAS_NUM_THREADS"] = "2"  # on one thread no pool starts at all
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=environment, timeout=100)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "workqueue"


def test_on_one_thread_the_kernels_start_no_thread_pool():
    """A pool thread may run on another core than the data a step just wrote (W1's Adam
    step took 0.58 ms so in training, 0.19 ms on the calling thread): on a budget of one
    thread the optimizer's kernel and the codec run on the calling thread."""
    script = """
import os
import numpy as np
import mpinn
from mpinn_numpy.half import HalfCodec
model = mpinn.Sequential([mpinn.Dense(600, input_shape=(500,))])
model.compile("adam", "mse")
model.fit(np.ones((2, 500), np.float32), np.ones((2, 600), np.float32), epochs=1, verbose=0)
assert model.optimizer.kernel is not None
values = np.ones(8, np.float32)
HalfCodec("float16").encode(values, 1.0, np.empty(8, np.uint16), np.empty(8, np.float32))
print(len(os.listdir("/proc/self/task")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, timeout=100)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1"
