"""SGD with optional (Nesterov) momentum, in PyTorch's form:
trace = momentum * trace + g; update = trace, or g + momentum * trace with Nesterov."""

import numpy as np

from ..errors import ConfigError, fraction
from .base import Optimizer, Transform, materialized


class Momentum(Transform):
    name = "momentum"
    slots = ("trace",)

    def __init__(self, momentum: float, nesterov: bool = False):
        self.momentum = momentum
        self.nesterov = nesterov
        self.kernel_name = "nesterov" if nesterov else "momentum"

    def update(self, updates, params, step, scale):
        materialized(updates, scale)
        self.trace *= self.momentum
        self.trace += updates
        if self.nesterov:
            updates += self.momentum * self.trace
        else:
            np.copyto(updates, self.trace)
        return 1.0

    def fused(self, step, scale):
        return (self.trace,), (scale, self.momentum), 1.0


class SGD(Optimizer):
    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        momentum = fraction("SGD", "momentum", momentum)
        if nesterov and not momentum:
            raise ConfigError("SGD: nesterov=True needs a momentum > 0. Received: momentum=0")
        transforms = [Momentum(momentum, nesterov)] if momentum else []
        super().__init__(transforms, learning_rate, **kwargs)
        self.momentum, self.nesterov = momentum, nesterov
        self.config.update(momentum=momentum, nesterov=nesterov)
