"""The CuPy backend: arrays in NVIDIA GPU memory, cuBLAS through CuPy.

Install with `pip install "mpinn[cupy]"` and choose it with `backend = "cupy"` in the job
file's [model] table (or `Sequential(..., backend="cupy")`). Each process uses one GPU,
picked from its rank among the job's processes on its node, so several ranks may share
one. Initial weights and the shuffling order are drawn on the host exactly as on the
NumPy backend: the same seed trains the same model on both, up to float rounding.
Dropout masks are drawn on the GPU (DeviceRandom), a stream of their own.
"""

import ctypes
import os

import numpy as np

from mpinn.backend import Backend, BackendUnavailable

INSTALL = ('pip install "mpinn[cupy]" (CUDA 13, NVIDIA driver >= 580) or '
           '"mpinn[cupy-cuda12]" (CUDA 12 drivers)')


def _cupy_with_gpus():
    """The cupy and cupyx modules and how many GPUs CuPy sees; BackendUnavailable says
    what is missing."""
    try:
        import cupy
        import cupyx
    except ImportError as exc:
        raise BackendUnavailable(f"CuPy is not installed ({exc}): {INSTALL}") from exc
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise BackendUnavailable(f"CuPy {cupy.__version__} is installed, but there is no "
                                 f"NVIDIA GPU driver here ({exc})") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - no device, or a driver older than the wheel
        raise BackendUnavailable(f"CuPy {cupy.__version__} cannot use a GPU ({exc}); the "
                                 f"wheel must match the driver: {INSTALL}") from exc
    if count < 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise BackendUnavailable(f"CuPy {cupy.__version__} sees no NVIDIA GPU"
                                 + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible else ""))
    missing = _missing_cuda_libraries(cupy)
    if missing:
        raise BackendUnavailable(f"CuPy {cupy.__version__} cannot load {', '.join(missing)} "
                                 f"(CUDA libraries it needs): {INSTALL} brings them, or load "
                                 "your site's CUDA toolkit (e.g. `module load cuda`)")
    return cupy, cupyx, count


def _missing_cuda_libraries(cupy) -> list[str]:
    """The CUDA libraries training needs that CuPy cannot load: its wheels leave them to
    the CUDA toolkit, or to the nvidia-* wheels of CuPy's [ctk] extra."""
    loaders = {"cuBLAS": lambda: cupy.cuda.cublas, "cuRAND": lambda: cupy.cuda.curand,
               "NVRTC": cupy.cuda.nvrtc.getVersion}
    missing = []
    for name, load in loaders.items():
        try:
            load()
        except Exception:  # noqa: BLE001 - ImportError or CuPy's own loader error
            missing.append(name)
    return missing


class CupyBackend(Backend):
    name = "cupy"
    device = "cuda"

    def __init__(self):
        self.xp, self._cupyx, self.gpus = _cupy_with_gpus()

    def select_device(self, local_rank: int) -> None:
        self.xp.cuda.Device(local_rank % self.gpus).use()

    def where(self) -> str:
        return f"GPU {self.xp.cuda.Device().id}"

    def describe(self) -> str:
        runtime = self.xp.cuda.runtime
        index = self.xp.cuda.Device().id
        device = runtime.getDeviceProperties(index)
        driver = runtime.driverGetVersion()
        return (f"CuPy {self.xp.__version__}, GPU {index} of {self.gpus}: "
                f"{device['name'].decode()} ({device['totalGlobalMem'] / 2**30:.0f} GiB), "
                f"CUDA driver {driver // 1000}.{driver % 1000 // 10}")

    def asarray(self, array, dtype=None):
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        return self.xp.asnumpy(array)

    def host_empty(self, shape, dtype) -> np.ndarray:
        return self._cupyx.empty_pinned(shape, dtype=dtype)

    def to_host(self, array, out: np.ndarray) -> None:
        array.get(out=out)  # waits for the copy

    def from_host(self, host: np.ndarray, out) -> None:
        out.set(host)  # queued on the current stream, like the work that follows

    def take_rows(self, x, index, out):
        return self.xp.take(x, index, axis=0, out=out)

    def rng(self, seed: np.random.SeedSequence):
        return DeviceRandom(self.xp, seed)

    def rng_state(self, rng) -> dict:
        return {"draws": rng.draws}

    def set_rng_state(self, rng, state: dict) -> None:
        rng.draws = int(state["draws"])

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def memory_available(self):
        free, _ = self.xp.cuda.runtime.memGetInfo()  # on the current device
        return free + self.xp.get_default_memory_pool().free_bytes()


class DeviceRandom:
    """Uniform numbers from cuRAND's Philox generator, re-seeded for every draw from
    (seed, number of draws so far). The whole state is that count, so a checkpoint
    continues the stream exactly; re-seeding Philox costs no device work."""

    def __init__(self, cupy, seed: np.random.SeedSequence):
        self.seed, self.draws = seed, 0
        philox = cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
        self._generator = cupy.random.RandomState(method=philox)

    def random(self, shape, dtype=np.float64):
        key = np.random.SeedSequence(self.seed.entropy,
                                     spawn_key=(*self.seed.spawn_key, self.draws))
        self._generator.seed(int(key.generate_state(1, np.uint64)[0]))
        self.draws += 1
        return self._generator.random_sample(shape, dtype=dtype)
