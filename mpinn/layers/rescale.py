"""Rescale: y = x * scale + offset, as Keras' Rescaling. Input scaling that is part of the
model, so that a checkpoint's evaluate and predict scale raw inputs as training did."""

import math
import numbers

import numpy as np

from ..errors import ConfigError
from .base import Layer


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"Rescale: {name} must be a finite number. Received: {name}={value!r}")
    return float(value)


class Rescale(Layer):
    kind = "rescale"

    def __init__(self, scale: float = 1.0, offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = _finite("scale", scale)
        self.offset = _finite("offset", offset)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}

    def forward(self, x, training):
        y = np.multiply(x, self.scale, out=self.workspace.get("y", x.shape[0], self.output_dim))
        if self.offset:
            y += self.offset
        return y

    def backward(self, dy, input_grad):
        if not input_grad:  # the first layer: nothing to do
            return None
        return np.multiply(dy, self.scale, out=dy)
