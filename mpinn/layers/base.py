"""The Layer base: shape bookkeeping, parameter declaration and reusable work buffers."""

import numpy as np

from ..errors import ConfigError, positive_int
from ..workspace import Workspace


class Layer:
    """A layer maps a (batch, features) array to another.

    Subclasses declare their parameters in `build`, receive views into the model's flat
    buffers in `bind`, and implement `forward` and `backward`. `backward` writes parameter
    gradients into the bound gradient views (overwriting them) and returns dL/dx only when
    asked, since the first layer's input needs none.
    """

    kind = "layer"
    weight_order: tuple[str, ...] = ()

    def __init__(self, *, name: "str | None" = None, input_shape=None, input_dim=None):
        owner = type(self).__name__
        if input_shape is not None:
            if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 1:
                raise ConfigError(
                    f"{owner}: input_shape must be a 1-tuple such as (784,). "
                    f"Received: input_shape={input_shape!r}"
                )
            input_dim = input_shape[0]
        self.input_dim = None if input_dim is None else positive_int(owner, "input_dim", input_dim)
        self.name = name
        self.output_dim: int | None = None
        self.values: dict = {}
        self.grads: dict = {}

    def build(self, input_dim: int, backend, dtype) -> dict[str, tuple[int, ...]]:
        """Fix the input width; return the shapes of this layer's parameters by local name."""
        self.input_dim = input_dim
        self.dtype = np.dtype(dtype)
        self.workspace = Workspace(backend.xp, self.dtype)
        self.output_dim = input_dim
        return {}

    def initializers(self) -> dict:
        """Initializer for each parameter declared by `build`, by local name."""
        return {}

    def bind(self, values: dict, grads: dict) -> None:
        """Take views of this layer's parameters and gradients, by local name."""
        self.values, self.grads = values, grads

    def forward(self, x, training: bool):
        raise NotImplementedError

    def backward(self, dy, input_grad: bool):
        """dL/d(input) from dy = dL/d(output) (None unless `input_grad`), after writing
        this layer's parameter gradients. A layer with parameters also takes
        `params_done`, a callable to call once those are complete, before the input
        gradient is computed (so that a strategy may send them meanwhile)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """This layer as a job-file table: {"type": kind, "name": ..., arguments}."""
        return {"type": self.kind, "name": self.name}

    def regularizers(self) -> dict:
        """Regularizer of each penalised parameter, by local name (the model applies them)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
