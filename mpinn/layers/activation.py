"""Activation: applies an activation function as a layer of its own."""

from .. import activations
from .base import Layer


class Activation(Layer):
    kind = "activation"

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation.name}

    def forward(self, x, training):
        self.logits = x
        self._y = self.activation.forward(x, self.workspace.get("y", x.shape[0], self.output_dim))
        return self._y

    def backward(self, dy, input_grad, from_logits=False):
        if from_logits:
            return dy
        return self.activation.backward(dy, self.logits, self._y, out=dy)
