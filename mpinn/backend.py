"""The interface a compute backend plugin implements, and how one is chosen.

A backend is an array namespace (`xp`, NumPy-compatible) plus the few operations that
differ between host and device memory. Layers, losses and optimizers do all their math
through NumPy's functions, which dispatch to the arrays' own implementation (NEP 13/18),
so a backend that offers NumPy's API on its own arrays (CuPy does) needs only the
methods below.
"""

from functools import cache

import numpy as np

from . import plugins
from .dist.comm import launched_local_rank
from .errors import PluginError


class Backend:
    """Base class of backend plugins; register a subclass under `mpinn.backends`.

    A backend that cannot run here (a library or a device missing) raises
    `BackendUnavailable` from `__init__`, with one line saying what is missing and how to
    install it."""

    name: str
    xp = None  # the NumPy-compatible array module
    device: "str | None" = None  # memory the arrays live in: None for host, e.g. "cuda"

    def select_device(self, local_rank: int) -> None:
        """Pick this process's device from its rank among the job's processes on the same
        node (several ranks may share a device). Called when the backend is loaded, with
        the launcher's local rank, and again by `mpinn train` with MPI's, before any
        array is made."""

    def describe(self) -> str:
        """The library and device this process computes on, for `mpinn info` ("" if
        nothing to add)."""
        return ""

    def where(self) -> str:
        """The device this process computes on, in a word or two ("host", "GPU 1")."""
        return "host"

    def asarray(self, array, dtype=None):
        """`array` (host memory) as an array of this backend."""
        raise NotImplementedError

    def to_numpy(self, array) -> np.ndarray:
        """A host NumPy copy (or view, where that is free) of a backend array."""
        raise NotImplementedError

    def host_empty(self, shape, dtype) -> np.ndarray:
        """A host array that `to_host` and `from_host` copy to and from quickly (pinned)."""
        return np.empty(shape, dtype=dtype)

    def to_host(self, array, out: np.ndarray) -> None:
        """Copy a backend array into the host array `out`; done when this returns."""
        np.copyto(out, self.to_numpy(array))

    def from_host(self, host: np.ndarray, out) -> None:
        """Copy the host array `host` into the backend array `out`."""
        out[...] = self.asarray(host, dtype=out.dtype)

    def take_rows(self, x, index, out):
        """`x[index]` for a 2-D `x` and valid row indices, written into `out`."""
        out[...] = x[index]
        return out

    def rng(self, seed: np.random.SeedSequence):
        """A random generator on this backend with `.random(shape, dtype=...)`."""
        raise NotImplementedError

    def rng_state(self, rng) -> dict:
        """The state of a generator from `rng()`, as JSON-compatible values."""
        raise NotImplementedError

    def set_rng_state(self, rng, state: dict) -> None:
        """Put a generator from `rng()` back into a state `rng_state` returned."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until queued device work is done (before MPI reads device memory)."""
        raise NotImplementedError

    def optimizer_kernel(self, chain: tuple[str, ...]):
        """A fused optimizer step for `chain` (the kernel names of an optimizer's
        transforms, e.g. ("adam",); see mpinn/optim/base.py), called with the parameters,
        the gradient, the transforms' buffers and scalars, the step and the decay; None:
        the optimizer runs its chain of array operations."""
        return None

    def memory_available(self) -> "int | None":
        """Bytes this process's arrays could still take (None when unknown), so that a
        model too large for the machine is refused before anything is allocated."""
        return None


def host_memory_available() -> "int | None":
    """Bytes of host memory available: the kernel's MemAvailable, capped by this process's
    cgroup limit (a Slurm job's allocation, a container); None where neither is known."""
    found = []
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            found.append(int(open(limit).read()) - int(open(usage).read()))
        except (OSError, ValueError):
            continue
        break
    return min(found) if found else None


class BackendUnavailable(PluginError):
    """A backend plugin is installed but cannot run here (its library or device is missing)."""


@cache
def get_backend(name: str = "numpy") -> Backend:
    """The backend registered as `name`, instantiated once per process, on the device its
    launcher's local rank gives it (so that scripts under mpirun spread over the GPUs)."""
    backend_class = plugins.load(plugins.BACKENDS, name)
    backend = backend_class()
    if not isinstance(backend, Backend):
        raise PluginError(
            f"backend plugin {name!r} gave {type(backend).__name__}, not an mpinn.Backend"
        )
    backend.select_device(launched_local_rank())
    return backend


def resolve_backend(backend: "str | Backend") -> Backend:
    """Accept a backend instance or the name of an installed backend plugin."""
    return backend if isinstance(backend, Backend) else get_backend(backend)


def installed_backends() -> dict[str, "str | None"]:
    """Every installed backend plugin by name: None where it can run here, else why not."""
    found = {}
    for name in sorted(plugins.available(plugins.BACKENDS)):
        try:
            get_backend(name)
            found[name] = None
        except PluginError as exc:
            found[name] = str(exc)
    return found
