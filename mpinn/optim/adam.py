"""Adam (Kingma & Ba 2015, Algorithm 1) and AdamW (Loshchilov & Hutter 2019).

The bias corrections are folded into two scalars, as in section 2 of the paper:
update = m * sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps * sqrt(1 - b2^t)),
which equals m_hat / (sqrt(v_hat) + eps) exactly.
"""

import math

import numpy as np

from ..errors import fraction, positive_number
from .base import Optimizer, Transform, materialized


class ScaleByAdam(Transform):
    name = "adam"
    slots = ("m", "v")

    def __init__(self, beta_1: float, beta_2: float, epsilon: float):
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def init(self, params):
        super().init(params)
        self._scratch = params.backend.xp.empty_like(params.data)

    def update(self, updates, params, step, scale):
        materialized(updates, scale)
        b1, b2, s = self.beta_1, self.beta_2, self._scratch
        t = step + 1
        self.m *= b1
        np.multiply(updates, 1 - b1, out=s)
        self.m += s
        self.v *= b2
        np.multiply(updates, updates, out=s)
        s *= 1 - b2
        self.v += s
        correction_2 = math.sqrt(1 - b2**t)
        np.sqrt(self.v, out=s)
        s += self.epsilon * correction_2
        np.divide(self.m, s, out=updates)
        return correction_2 / (1 - b1**t)


class Adam(Optimizer):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        owner = type(self).__name__
        scale = ScaleByAdam(
            fraction(owner, "beta_1", beta_1),
            fraction(owner, "beta_2", beta_2),
            positive_number(owner, "epsilon", epsilon),
        )
        super().__init__([scale], learning_rate, **kwargs)
        self.config.update(beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)


class AdamW(Adam):
    """Adam with decoupled weight decay: params -= lr * (adam_update + weight_decay * params)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, **kwargs):
        super().__init__(learning_rate, weight_decay=weight_decay, **kwargs)
