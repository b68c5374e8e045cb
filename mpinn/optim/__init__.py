"""Optimizers, their building blocks, and learning-rate schedules."""

from ..errors import choose
from . import schedules
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import Optimizer, Transform, global_norm
from .rmsprop import RMSprop
from .sgd import SGD

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get(optimizer) -> Optimizer:
    """An Optimizer from a name (default hyper-parameters) or an instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be a name or an Optimizer, got {optimizer!r}")
    choose("optimizer", optimizer.lower(), OPTIMIZERS)
    return OPTIMIZERS[optimizer.lower()]()


__all__ = [
    "SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "Transform", "get", "global_norm",
    "schedules",
]
