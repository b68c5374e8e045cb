"""Adam (Kingma & Ba 2015, Algorithm 1) and AdamW (Loshchilov & Hutter 2019).

The moments are kept as decayed sums, `grad_sum = b1 * grad_sum + g` and
`grad_sq_sum = b2 * grad_sq_sum + g^2`, so that m = (1 - b1) grad_sum and
v = (1 - b2) grad_sq_sum. Every constant factor, the bias corrections included, then
folds into two scalars (a scale on epsilon and one on the update):
m_hat / (sqrt(v_hat) + eps) = k * grad_sum / (sqrt(grad_sq_sum) + eps / a),
with a = sqrt((1 - b2) / (1 - b2^t)) and k = (1 - b1) / ((1 - b1^t) a). The step is ten
passes over the buffers instead of the twelve the textbook form takes.
"""

import math

import numpy as np

from ..errors import fraction, positive_number
from .base import Optimizer, Transform, materialized


class ScaleByAdam(Transform):
    name = "adam"
    slots = ("grad_sum", "grad_sq_sum")

    def __init__(self, beta_1: float, beta_2: float, epsilon: float):
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def init(self, params):
        super().init(params)
        self._scratch = params.backend.xp.empty_like(params.data)

    def update(self, updates, params, step, scale):
        materialized(updates, scale)
        b1, b2, s = self.beta_1, self.beta_2, self._scratch
        t = step + 1
        self.grad_sum *= b1
        self.grad_sum += updates
        np.multiply(updates, updates, out=s)
        self.grad_sq_sum *= b2
        self.grad_sq_sum += s
        a = math.sqrt((1 - b2) / (1 - b2**t))
        np.sqrt(self.grad_sq_sum, out=s)
        s += self.epsilon / a
        np.divide(self.grad_sum, s, out=updates)
        return (1 - b1) / ((1 - b1**t) * a)


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
