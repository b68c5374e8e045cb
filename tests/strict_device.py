"""A strict stand-in for a GPU array library, on the host, for the tests.

Its arrays behave like CuPy's where a device backend differs from NumPy: they refuse to
become NumPy arrays implicitly, refuse NumPy arrays as ufunc operands and as values
assigned into them, and dispatch only the NumPy functions (and keywords) that CuPy has.
Code that would mix host and device memory fails here as it would on a GPU, so CI, which
has no GPU, still sees it.
"""

import sys

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from mpinn.backend import Backend


def _host(value, where: str):
    """The NumPy array inside a DeviceArray; a bare NumPy array here is a mixing error."""
    if isinstance(value, DeviceArray):
        return value.host
    if isinstance(value, np.ndarray):
        raise TypeError(f"{where}: a numpy.ndarray {value.shape} mixed with device arrays")
    return value


def _device(value):
    """A NumPy result as the device array CuPy would give: scalars as 0-d arrays too."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    return DeviceArray(value) if isinstance(value, np.ndarray) else value


class DeviceArray(NDArrayOperatorsMixin):
    def __init__(self, host: np.ndarray):
        self.host = host

    shape = property(lambda self: self.host.shape)
    dtype = property(lambda self: self.host.dtype)
    ndim = property(lambda self: self.host.ndim)
    size = property(lambda self: self.host.size)
    T = property(lambda self: DeviceArray(self.host.T))

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")

    def __len__(self):
        return len(self.host)

    def __float__(self):
        return float(self.host)

    def __int__(self):
        return int(self.host)

    def __bool__(self):
        return bool(self.host)

    def __format__(self, spec):
        return format(self.host, spec)

    def _key(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        unwrapped = tuple(k.host if isinstance(k, DeviceArray) else k for k in keys)
        return unwrapped if isinstance(key, tuple) else unwrapped[0]

    def __getitem__(self, key):
        return _device(self.host[self._key(key)])

    def __setitem__(self, key, value):
        self.host[self._key(key)] = _host(value, "setitem")

    def reshape(self, *shape):
        return DeviceArray(self.host.reshape(*shape))

    def astype(self, dtype, order="K", copy=True):
        return DeviceArray(self.host.astype(dtype, order=order, copy=copy))

    def copy(self):
        return DeviceArray(self.host.copy())

    def fill(self, value):
        self.host.fill(value)

    def take(self, indices, axis=None, out=None):  # CuPy's take has no `mode`
        result = np.take(self.host, _host(indices, "take"), axis=axis,
                         out=None if out is None else out.host)
        return out if out is not None else _device(result)

    def _reduction(name):
        def reduce(self, *args, **kwargs):
            return DeviceArray(np.asarray(getattr(self.host, name)(*args, **kwargs)))
        return reduce

    sum, max, min, mean, argmax, all = map(_reduction, ("sum", "max", "min", "mean", "argmax",
                                                        "all"))

    def get(self, out=None):
        if out is None:
            return self.host.copy()
        assert out.dtype == self.dtype and out.shape == self.shape
        out[...] = self.host
        return out

    def set(self, array):
        assert isinstance(array, np.ndarray) and array.shape == self.shape
        self.host[...] = array

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented  # CuPy has no ufunc.reduce, .at, ...
        out = kwargs.pop("out", None)
        args = [_host(value, ufunc.__name__) for value in inputs]
        if out is not None:
            ufunc(*args, out=tuple(_host(o, ufunc.__name__) for o in out), **kwargs)
            return out[0]
        return _device(ufunc(*args, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        allowed = FUNCTIONS.get(func.__name__)
        if allowed is None or set(kwargs) - allowed:
            raise TypeError(f"CuPy has no {func.__name__}({', '.join(kwargs)})")
        args = [[_host(a, func.__name__) for a in arg] if isinstance(arg, (list, tuple))
                else _host(arg, func.__name__) for arg in args]
        kwargs = {key: _host(value, func.__name__) for key, value in kwargs.items()}
        return _device(np.asarray(func(*args, **kwargs)))


# the NumPy functions mpinn calls on backend arrays, with the keywords CuPy's take
FUNCTIONS = {
    "copyto": {"casting"}, "clip": {"out"}, "where": set(), "vdot": set(),
    "array_equal": set(), "argwhere": set(), "concatenate": {"axis"}, "arange": {"dtype"},
    "empty_like": {"dtype"}, "zeros_like": {"dtype"}, "take": {"axis", "out"},
}


def empty(shape, dtype=float):
    return DeviceArray(np.empty(shape, dtype))


def zeros(shape, dtype=float):
    return DeviceArray(np.zeros(shape, dtype))


def empty_like(array, dtype=None):
    return DeviceArray(np.empty_like(array.host, dtype=dtype))


def zeros_like(array, dtype=None):
    return DeviceArray(np.zeros_like(array.host, dtype=dtype))


ndarray = DeviceArray


class StrictDeviceBackend(Backend):
    name = "strict-device"
    device = "test-device"
    xp = sys.modules[__name__]

    def asarray(self, array, dtype=None):
        if isinstance(array, DeviceArray):
            return array if dtype is None or array.dtype == dtype else array.astype(dtype)
        return DeviceArray(np.array(array, dtype=dtype))

    def to_numpy(self, array) -> np.ndarray:
        return array.host.copy()

    def to_host(self, array, out):
        array.get(out=out)

    def from_host(self, host, out):
        out.set(host)

    def take_rows(self, x, index, out):
        return x.take(index, axis=0, out=out)

    def rng(self, seed):
        return _Random(seed)

    def rng_state(self, rng):
        return rng.generator.bit_generator.state

    def set_rng_state(self, rng, state):
        rng.generator.bit_generator.state = state

    def synchronize(self):
        pass


class _Random:
    def __init__(self, seed):
        self.generator = np.random.default_rng(seed)

    def random(self, shape, dtype=np.float64):
        return DeviceArray(self.generator.random(shape, dtype=dtype))
