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
    name = kernel_name = "adam"
    slots = ("grad_sum", "grad_sq_sum")

    def __init__(self, beta_1: float, beta_2: float, epsilon: float):
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def init(self, params):
        super().init(params)
        self._scratch = params.backend.xp.empty_like(params.data)

    def update(self, updates, params, step, scale):
        materialized(updates, scale)
        s = self._scratch
        self.grad_sum *= self.beta_1
        self.grad_sum += updates
        np.multiply(updates, updates, out=s)
        self.grad_sq_sum *= self.beta_2
        self.grad_sq_sum += s
        epsilon, new_scale = self._folded(step)
        np.sqrt(self.grad_sq_sum, out=s)
        s += epsilon
        np.divide(self.grad_sum, s, out=updates)
        return new_scale

    def fused(self, step, scale):
        epsilon, new_scale = self._folded(step)
        return ((self.grad_sum, self.grad_sq_sum), (scale, self.beta_1, self.beta_2, epsilon),
                new_scale)

    def _folded(self, step: int) -> tuple[float, float]:
        """epsilon / a and k of the module's doc, at `step` (from 0)."""
        b1, b2, t = self.beta_1, self.beta_2, step + 1
        a = math.sqrt((1 - b2) / (1 - b2**t))
        return self.epsilon / a, (1 - b1) / ((1 - b1**t) * a)


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
