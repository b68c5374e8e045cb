"""Element-wise activations with their derivatives, written into caller-owned buffers.

`forward(z, out)` writes the activation of `z` into `out`; `backward(dy, z, y, out)`
writes dL/dz given dL/dy, the input `z` and the output `y` (`out` may be `dy`).

Plain NumPy calls serve every backend: a backend's arrays implement NumPy's dispatch
protocols (`__array_ufunc__`, `__array_function__`), so the work runs where they live.
"""

import math

import numpy as np

from .errors import choose


class Activation:
    name: str
    output_only = False  # backward needs only the output, so forward may work in place

    def forward(self, z, out):
        raise NotImplementedError

    def backward(self, dy, z, y, out):
        raise NotImplementedError

    def __call__(self, z):
        """The activation of `z` as a new array (convenient outside the hot path)."""
        return self.forward(z, np.empty_like(z))

    def __repr__(self) -> str:
        return self.name


class Linear(Activation):
    name = "linear"
    output_only = True

    def forward(self, z, out):
        out[...] = z
        return out

    def backward(self, dy, z, y, out):
        if out is not dy:
            out[...] = dy
        return out


class ReLU(Activation):
    name = "relu"
    output_only = True

    def forward(self, z, out):
        return np.maximum(z, 0, out=out)

    def backward(self, dy, z, y, out):
        return np.multiply(dy, y > 0, out=out)


class LeakyReLU(Activation):
    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.2):
        self.negative_slope = negative_slope

    def forward(self, z, out):
        return np.multiply(z, np.where(z > 0, 1.0, self.negative_slope).astype(z.dtype), out=out)

    def backward(self, dy, z, y, out):
        slope = np.where(z > 0, 1.0, self.negative_slope).astype(dy.dtype)
        return np.multiply(dy, slope, out=out)


class ELU(Activation):
    name = "elu"

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def forward(self, z, out):
        negative = self.alpha * np.expm1(np.minimum(z, 0))
        np.copyto(out, np.where(z > 0, z, negative))
        return out

    def backward(self, dy, z, y, out):
        return np.multiply(dy, np.where(z > 0, 1, y + self.alpha), out=out)


class GELU(Activation):
    """GELU in its tanh form: 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))."""

    name = "gelu"
    _c = math.sqrt(2 / math.pi)

    def _inner(self, z):
        return np.tanh(self._c * (z + 0.044715 * z**3))

    def forward(self, z, out):
        return np.multiply(0.5 * z, 1 + self._inner(z), out=out)

    def backward(self, dy, z, y, out):
        t = self._inner(z)
        slope = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * self._c * (1 + 3 * 0.044715 * z * z)
        return np.multiply(dy, slope, out=out)


class Sigmoid(Activation):
    name = "sigmoid"
    output_only = True

    def forward(self, z, out):
        # exp of a non-positive argument only, so nothing overflows
        e = np.exp(-np.abs(z))
        np.copyto(out, np.where(z >= 0, 1 / (1 + e), e / (1 + e)))
        return out

    def backward(self, dy, z, y, out):
        return np.multiply(dy, y * (1 - y), out=out)


class Tanh(Activation):
    name = "tanh"
    output_only = True

    def forward(self, z, out):
        return np.tanh(z, out=out)

    def backward(self, dy, z, y, out):
        return np.multiply(dy, 1 - y * y, out=out)


class Softmax(Activation):
    """Softmax over the last axis."""

    name = "softmax"
    output_only = True

    def forward(self, z, out):
        np.subtract(z, z.max(axis=-1, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)
        return out

    def backward(self, dy, z, y, out):
        dot = (dy * y).sum(axis=-1, keepdims=True)
        np.subtract(dy, dot, out=out)
        out *= y
        return out


ACTIVATIONS = {
    cls.name: cls for cls in (Linear, ReLU, LeakyReLU, ELU, GELU, Sigmoid, Tanh, Softmax)
}


def get(activation: "str | Activation | None") -> Activation:
    """An Activation from a name, an instance, or None (linear)."""
    if activation is None:
        return Linear()
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a name or an Activation, got {activation!r}")
    choose("activation", activation, ACTIVATIONS)
    return ACTIVATIONS[activation]()
