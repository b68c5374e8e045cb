"""RMSprop (Tieleman & Hinton 2012): divide the gradient by a running RMS of its history.
v = rho * v + (1 - rho) * g^2; update = g / (sqrt(v) + eps); optional momentum on top."""

import numpy as np

from ..errors import fraction, positive_number
from .base import Optimizer, Transform, materialized
from .sgd import Momentum


class ScaleByRms(Transform):
    name = "rmsprop"
    slots = ("v",)

    def __init__(self, rho: float, epsilon: float):
        self.rho, self.epsilon = rho, epsilon

    def init(self, params):
        super().init(params)
        self._scratch = params.backend.xp.empty_like(params.data)

    def update(self, updates, params, step, scale):
        materialized(updates, scale)
        s = self._scratch
        self.v *= self.rho
        np.multiply(updates, updates, out=s)
        s *= 1 - self.rho
        self.v += s
        np.sqrt(self.v, out=s)
        s += self.epsilon
        updates /= s
        return 1.0


class RMSprop(Optimizer):
    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, **kwargs):
        rho = fraction("RMSprop", "rho", rho)
        momentum = fraction("RMSprop", "momentum", momentum)
        transforms = [ScaleByRms(rho, positive_number("RMSprop", "epsilon", epsilon))]
        if momentum:
            transforms.append(Momentum(momentum))
        super().__init__(transforms, learning_rate, **kwargs)
        self.config.update(rho=rho, momentum=momentum, epsilon=epsilon)
