"""Layers for Sequential models."""

from .activation import Activation
from .base import Layer
from .dense import Dense
from .dropout import Dropout

__all__ = ["Activation", "Dense", "Dropout", "Layer"]
