"""Adagrad (Duchi et al. 2011): acc += g^2; update = g / (sqrt(acc) + eps)."""

import numpy as np

from ..errors import positive_number
from .base import Optimizer, Transform, materialized


class ScaleByAdagrad(Transform):
    name = kernel_name = "adagrad"
    slots = ("accumulator",)

    def __init__(self, initial_accumulator_value: float, epsilon: float):
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon

    def init(self, params):
        super().init(params)
        self.accumulator += self.initial_accumulator_value
        self._scratch = params.backend.xp.empty_like(params.data)

    def update(self, updates, params, step, scale):
        materialized(updates, scale)
        s = self._scratch
        np.multiply(updates, updates, out=s)
        self.accumulator += s
        np.sqrt(self.accumulator, out=s)
        s += self.epsilon
        updates /= s
        return 1.0

    def fused(self, step, scale):
        return (self.accumulator,), (scale, self.epsilon), 1.0


class Adagrad(Optimizer):
    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 **kwargs):
        initial = positive_number(
            "Adagrad", "initial_accumulator_value", initial_accumulator_value, allow_zero=True
        )
        transforms = [ScaleByAdagrad(initial, positive_number("Adagrad", "epsilon", epsilon))]
        super().__init__(transforms, learning_rate, **kwargs)
        self.config.update(initial_accumulator_value=initial, epsilon=epsilon)
