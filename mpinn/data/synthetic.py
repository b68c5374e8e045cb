"""Small generated data sets for examples and tests, all seeded."""

import numpy as np

from ..errors import positive_int, positive_number
from .dataset import Dataset


def make_regression(samples: int = 1000, slope: float = 1.5, intercept: float = 0.8,
                    noise: float = 0.1, seed: int = 0) -> Dataset:
    """y = slope * x + intercept + noise * N(0, 1), x uniform in [-1, 1]."""
    samples = positive_int("make_regression", "samples", samples)
    noise = positive_number("make_regression", "noise", noise, allow_zero=True)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (samples, 1))
    y = slope * x + intercept + noise * rng.standard_normal((samples, 1))
    return Dataset(x.astype(np.float32), y.astype(np.float32))


def make_xor(repeats: int = 1) -> Dataset:
    """The four XOR points (repeated `repeats` times) with targets of shape (n, 1)."""
    repeats = positive_int("make_xor", "repeats", repeats)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([[0], [1], [1], [0]], dtype=np.float32)
    return Dataset(np.tile(x, (repeats, 1)), np.tile(y, (repeats, 1)))


def make_blobs(samples: int = 1000, centers: int = 3, features: int = 2,
               spread: float = 1.0, seed: int = 0) -> Dataset:
    """Gaussian clusters around `centers` random centres in [-10, 10]^features; y: cluster."""
    samples = positive_int("make_blobs", "samples", samples)
    centers = positive_int("make_blobs", "centers", centers)
    features = positive_int("make_blobs", "features", features)
    spread = positive_number("make_blobs", "spread", spread)
    rng = np.random.default_rng(seed)
    middles = rng.uniform(-10, 10, (centers, features))
    y = rng.integers(0, centers, samples)
    x = middles[y] + spread * rng.standard_normal((samples, features))
    return Dataset(x.astype(np.float32), y.astype(np.int64))
