"""Dropout: zeroes a random share `rate` of the inputs while training (inverted dropout,
so nothing changes at inference)."""

import numpy as np

from ..errors import fraction
from .base import Layer


class Dropout(Layer):
    kind = "dropout"

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = fraction("Dropout", "rate", rate)
        self.rng = None  # set by the model from its seed

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}

    def forward(self, x, training):
        if not training or self.rate == 0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=self.dtype) >= self.rate
        self._mask = self.workspace.get("mask", x.shape[0], self.output_dim)
        np.multiply(keep, 1 / (1 - self.rate), out=self._mask)
        return np.multiply(x, self._mask, out=self.workspace.get("y", x.shape[0], self.output_dim))

    def backward(self, dy, input_grad):
        if not input_grad:
            return None
        return dy if self._mask is None else np.multiply(dy, self._mask, out=dy)
