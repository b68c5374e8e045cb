"""The interface a compute backend plugin implements, and how one is chosen.

A backend is an array namespace (`xp`, NumPy-compatible) plus the few operations that
differ between host and device memory. Layers, losses and optimizers do all their math
through `backend.xp`, so a backend that offers NumPy's API on its own arrays (CuPy does)
needs only the methods below.
"""

from functools import cache

import numpy as np

from . import plugins
from .errors import PluginError


class Backend:
    """Base class of backend plugins; register a subclass under `mpinn.backends`."""

    name: str
    xp = None  # the NumPy-compatible array module

    def asarray(self, array, dtype=None):
        """`array` (host memory) as an array of this backend."""
        raise NotImplementedError

    def to_numpy(self, array) -> np.ndarray:
        """A host NumPy copy (or view, where that is free) of a backend array."""
        raise NotImplementedError

    def rng(self, seed: np.random.SeedSequence):
        """A random generator on this backend with `.random(shape, dtype=...)`."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until queued device work is done (before MPI reads device memory)."""
        raise NotImplementedError


@cache
def get_backend(name: str = "numpy") -> Backend:
    """The backend registered as `name`, instantiated once per process."""
    backend_class = plugins.load(plugins.BACKENDS, name)
    backend = backend_class()
    if not isinstance(backend, Backend):
        raise PluginError(
            f"backend plugin {name!r} gave {type(backend).__name__}, not an mpinn.Backend"
        )
    return backend


def resolve_backend(backend: "str | Backend") -> Backend:
    """Accept a backend instance or the name of an installed backend plugin."""
    return backend if isinstance(backend, Backend) else get_backend(backend)
