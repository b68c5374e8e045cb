"""RMSprop (Tieleman & Hinton 2012): divide the gradient by a running RMS of its history.
v = rho * v + (1 - rho) * g^2; update = g / (sqrt(v) + eps); optional momentum on top.

v is kept as the decayed sum `grad_sq_sum = rho * grad_sq_sum + g^2` (v = (1 - rho) times
it), so the constant folds into scalars: update = k * g / (sqrt(grad_sq_sum) + eps / c)
with c = sqrt(1 - rho) and k = 1 / c, a pass fewer than the textbook form.
"""

import math

import numpy as np

from ..errors import fraction, positive_number
from .base import Optimizer, Transform, materialized
from .sgd import Momentum


class ScaleByRms(Transform):
    name = kernel_name = "rmsprop"
    slots = ("grad_sq_sum",)

    def __init__(self, rho: float, epsilon: float):
        self.rho, self.epsilon = rho, epsilon

    def init(self, params):
        super().init(params)
        self._scratch = params.backend.xp.empty_like(params.data)

    def update(self, updates, params, step, scale):
        materialized(updates, scale)
        s = self._scratch
        np.multiply(updates, updates, out=s)
        self.grad_sq_sum *= self.rho
        self.grad_sq_sum += s
        c = math.sqrt(1 - self.rho)
        np.sqrt(self.grad_sq_sum, out=s)
        s += self.epsilon / c
        updates /= s
        return 1 / c

    def fused(self, step, scale):
        c = math.sqrt(1 - self.rho)
        return (self.grad_sq_sum,), (scale, self.rho, self.epsilon / c), 1 / c


class RMSprop(Optimizer):
    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, **kwargs):
        rho = fraction("RMSprop", "rho", rho)
        momentum = fraction("RMSprop", "momentum", momentum)
        transforms = [ScaleByRms(rho, positive_number("RMSprop", "epsilon", epsilon))]
        if momentum:
            transforms.append(Momentum(momentum))
        super().__init__(transforms, learning_rate, **kwargs)
        self.config.update(rho=rho, momentum=momentum, epsilon=epsilon)
