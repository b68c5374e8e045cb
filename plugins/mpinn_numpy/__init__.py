"""The NumPy backend: host memory, BLAS through NumPy, optimizer steps fused by numba
(kernels.py) where numba imports. mpinn's default backend."""

import numpy as np

from mpinn.backend import Backend, host_memory_available


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def asarray(self, array, dtype=None):
        return np.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)

    def take_rows(self, x, index, out):
        # mode="clip" (the indices are valid): "raise" would gather into a temporary
        # first and then copy it into `out`
        return np.take(x, index, axis=0, mode="clip", out=out)

    def rng(self, seed: np.random.SeedSequence):
        return np.random.default_rng(seed)

    def rng_state(self, rng) -> dict:
        return rng.bit_generator.state

    def set_rng_state(self, rng, state: dict) -> None:
        rng.bit_generator.state = state

    def synchronize(self) -> None:
        pass

    def optimizer_kernel(self, chain):
        try:
            from . import kernels
        except ImportError:
            return None
        return kernels.kernel(chain)

    def half_codec(self, kind: str):
        """float16 or bfloat16 conversions for compressed exchange (numba), or None."""
        try:
            from .half import HalfCodec
        except ImportError:
            return None
        return HalfCodec(kind)

    def fixed_point(self):
        """int64 fixed-point sums for reproducible training (numba), or None."""
        try:
            from .fixed_point import FixedPoint
        except ImportError:
            return None
        return FixedPoint()

    def describe(self) -> str:
        try:
            from . import kernels
        except ImportError as error:
            return f"optimizer steps unfused ({error}; pip install numba fuses them)"
        return f"optimizer steps fused by {kernels.describe()}"

    def memory_available(self):
        return host_memory_available()
