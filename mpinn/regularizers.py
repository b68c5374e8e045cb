"""L1 and L2 weight penalties: a loss term and its gradient, added in place."""

import numpy as np

from .errors import ConfigError, choose, positive_number


class Regularizer:
    """`l1 * sum(|w|) + l2 * sum(w**2)`, added to the loss of every training step."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        owner = type(self).__name__
        self.l1 = positive_number(owner, "l1", l1, allow_zero=True)
        self.l2 = positive_number(owner, "l2", l2, allow_zero=True)

    def loss(self, weights):
        """The penalty, as a float64 0-d array on the weights' backend (the model adds up
        all penalties there and reads the total once per step)."""
        total = np.float64(0)
        if self.l1:
            total = total + self.l1 * np.abs(weights).sum().astype(np.float64)
        if self.l2:
            total = total + self.l2 * np.vdot(weights, weights).astype(np.float64)
        return total

    def add_gradient(self, weights, grad, scale: float = 1.0) -> None:
        """grad += scale * d(loss)/d(weights)."""
        if self.l1:
            grad += (scale * self.l1) * np.sign(weights)
        if self.l2:
            grad += (scale * 2 * self.l2) * weights

    def get_config(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L1(Regularizer):
    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)


class L2(Regularizer):
    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)


class L1L2(Regularizer):
    pass


REGULARIZERS = {"l1": L1, "l2": L2, "l1_l2": L1L2}


def get(regularizer) -> "Regularizer | None":
    """A Regularizer from a name, a table such as {"l2": 1e-4}, an instance, or None."""
    if regularizer is None or isinstance(regularizer, Regularizer):
        return regularizer
    if isinstance(regularizer, dict):
        unknown = sorted(set(regularizer) - {"l1", "l2"})
        if unknown:
            raise ConfigError(f"regularizer: unknown key {unknown[0]}; allowed: l1, l2")
        return L1L2(**regularizer)
    choose("regularizer", regularizer, REGULARIZERS)
    return REGULARIZERS[regularizer]()
