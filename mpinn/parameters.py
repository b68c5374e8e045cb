"""A model's parameters and gradients, each in one contiguous buffer with named views.

One buffer means an allreduce is one call, a parameter-server push is one message and an
optimizer step is a few vectorised operations over the whole model. Names are sorted
(`dense_0/bias`, `dense_0/kernel`, ...) so every process lays the buffer out the same way.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Slot:
    """Where one named tensor lives in the flat buffer."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class ParameterSlice:
    """A contiguous part of the flat buffers, for an optimizer that steps only that part."""

    data: object
    grad: object
    backend: object

    @property
    def size(self) -> int:
        return int(self.data.size)


class FlatParameters:
    """`data` and `grad`: flat buffers; `values[name]` and `grads[name]`: views into them."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype, backend):
        self.backend = backend
        self.slots: list[Slot] = []
        offset = 0
        for name in sorted(shapes):
            slot = Slot(name, tuple(shapes[name]), offset)
            self.slots.append(slot)
            offset += slot.size
        self.size = offset
        xp = backend.xp
        self.use(xp.zeros(self.size, dtype=dtype), xp.zeros(self.size, dtype=dtype))

    def use(self, data=None, grad=None) -> None:
        """Make `data` and/or `grad` the flat buffers (and the named views theirs)."""
        if data is not None:
            self.data, self.values = data, self.views(data)
        if grad is not None:
            self.grad, self.grads = grad, self.views(grad)

    def views(self, flat) -> dict:
        """Named views of any buffer laid out like the parameters (e.g. optimizer state)."""
        return {s.name: flat[s.offset : s.offset + s.size].reshape(s.shape) for s in self.slots}

    def part(self, start: int, stop: int) -> "ParameterSlice":
        """The [start, stop) slice of `data` and `grad`, as views."""
        return ParameterSlice(self.data[start:stop], self.grad[start:stop], self.backend)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def dtype(self):
        return self.data.dtype
