"""Layers for Sequential models."""

from .activation import Activation
from .base import Layer
from .dense import Dense
from .dropout import Dropout
from .rescale import Rescale

# the job file's layer types: { type = kind, ... } builds LAYER_TYPES[kind](...)
LAYER_TYPES = {layer.kind: layer for layer in (Dense, Dropout, Activation, Rescale)}

__all__ = ["LAYER_TYPES", "Activation", "Dense", "Dropout", "Layer", "Rescale"]
