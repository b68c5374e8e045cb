"""Weight initializers. They draw on the host from a seeded NumPy generator, so the same
seed gives the same initial weights on every backend."""

import numpy as np

from .errors import choose


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], shape[-1]


def _truncated_normal(rng: np.random.Generator, shape, stddev: float) -> np.ndarray:
    """Normal(0, stddev) redrawn beyond two standard deviations, as Keras does."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2
    # std of a standard normal truncated to [-2, 2]
    return values * (stddev / 0.87962566103423978)


def zeros(rng, shape):
    return np.zeros(shape)


def ones(rng, shape):
    return np.ones(shape)


def glorot_uniform(rng, shape):
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(rng, shape):
    fan_in, fan_out = _fans(shape)
    return _truncated_normal(rng, shape, np.sqrt(2 / (fan_in + fan_out)))


def he_uniform(rng, shape):
    fan_in, _ = _fans(shape)
    limit = np.sqrt(6 / fan_in)
    return rng.uniform(-limit, limit, shape)


def he_normal(rng, shape):
    fan_in, _ = _fans(shape)
    return _truncated_normal(rng, shape, np.sqrt(2 / fan_in))


INITIALIZERS = {
    f.__name__: f for f in (zeros, ones, glorot_uniform, glorot_normal, he_uniform, he_normal)
}


def get(initializer):
    """An initializer function `(rng, shape) -> float64 array` from a name or a callable."""
    if callable(initializer):
        return initializer
    choose("initializer", initializer, INITIALIZERS)
    return INITIALIZERS[initializer]
