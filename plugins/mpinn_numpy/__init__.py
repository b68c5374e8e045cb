"""The NumPy backend: host memory, BLAS through NumPy. mpinn's default backend."""

import numpy as np

from mpinn.backend import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def asarray(self, array, dtype=None):
        return np.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)

    def rng(self, seed: np.random.SeedSequence):
        return np.random.default_rng(seed)

    def synchronize(self) -> None:
        pass
