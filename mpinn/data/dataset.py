"""The common return type of dataset loaders, and a seeded hold-out split."""

from typing import NamedTuple

import numpy as np

from ..errors import ConfigError


class Dataset(NamedTuple):
    """Samples `x` (samples, features) and targets `y`; unpacks as `x, y = dataset`."""

    x: np.ndarray
    y: np.ndarray


def train_test_split(x, y, test_fraction: float = 0.2, seed: int = 0):
    """A seeded shuffle split: (x_train, x_test, y_train, y_test)."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1). Received: {test_fraction!r}")
    x, y = np.asarray(x), np.asarray(y)
    order = np.random.default_rng(seed).permutation(len(x))
    test = order[: int(round(len(x) * test_fraction))]
    train = order[len(test):]
    return x[train], x[test], y[train], y[test]
