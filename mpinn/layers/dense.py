"""Dense: y = activation(x @ kernel + bias)."""

import numpy as np

from .. import activations, initializers, regularizers
from ..errors import positive_int
from .base import Layer


class Dense(Layer):
    kind = "dense"
    weight_order = ("kernel", "bias")

    def __init__(
        self,
        units: int,
        activation=None,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = positive_int("Dense", "units", units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        if not self.use_bias:
            self.weight_order = ("kernel",)
        self.keep_logits = False  # the model sets it when its loss reads the logits

    def build(self, input_dim, backend, dtype):
        super().build(input_dim, backend, dtype)
        self.output_dim = self.units
        shapes = {"kernel": (input_dim, self.units)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return shapes

    def initializers(self):
        found = {"kernel": self.kernel_initializer}
        if self.use_bias:
            found["bias"] = self.bias_initializer
        return found

    def get_config(self):
        config = {**super().get_config(), "units": self.units,
                  "activation": self.activation.name, "use_bias": self.use_bias}
        for key in ("kernel_initializer", "bias_initializer"):
            name = getattr(self, key).__name__
            if name in initializers.INITIALIZERS:  # a custom callable cannot be written down
                config[key] = name
        for key in ("kernel_regularizer", "bias_regularizer"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key).get_config()
        return config

    def regularizers(self):
        pairs = {"kernel": self.kernel_regularizer}
        if self.use_bias:
            pairs["bias"] = self.bias_regularizer
        return {name: reg for name, reg in pairs.items() if reg is not None}

    def forward(self, x, training):
        n = x.shape[0]
        z = self.workspace.get("z", n, self.units)
        np.matmul(x, self.values["kernel"], out=z)
        if self.use_bias:
            z += self.values["bias"]
        self._x, self.logits = x, z  # z: overwritten by y when the activation is in place
        if isinstance(self.activation, activations.Linear):
            self._y = z
        elif self.activation.output_only and not self.keep_logits:
            self._y = self.activation.forward(z, z)  # in place: backward needs only y
        else:
            self._y = self.activation.forward(z, self.workspace.get("y", n, self.units))
        return self._y

    def backward(self, dy, input_grad, from_logits=False, params_done=None):
        """dy is dL/d(output), or dL/d(logits) when `from_logits`; it may be overwritten."""
        dz = dy if from_logits else self.activation.backward(dy, self.logits, self._y, out=dy)
        np.matmul(self._x.T, dz, out=self.grads["kernel"])
        if self.use_bias:  # column sums as a matrix-vector product: BLAS, threaded
            ones = self.workspace.get("ones", dz.shape[0], 1)[:, 0]
            ones.fill(1)
            np.matmul(ones, dz, out=self.grads["bias"])
        if params_done is not None:
            params_done()
        if not input_grad:
            return None
        dx = self.workspace.get("dx", dz.shape[0], self.input_dim)
        return np.matmul(dz, self.values["kernel"].T, out=dx)
