"""Optimizers as chains of small in-place transforms over the flat gradient buffer.

Each transform turns the update buffer (which starts as the gradient) into a new update,
in place; the optimizer then applies `params -= learning_rate * update`. The familiar
optimizers are chains: Adam is `[ScaleByAdam]`, AdamW `[ScaleByAdam, AddDecayedWeights]`,
and `global_clipnorm` puts `ClipByGlobalNorm` first.

A scalar factor need not cost a pass over the buffer: the true update is always
`scale * updates`, where `scale` travels along the chain (each transform takes it and
returns the new one) and is folded into the final learning-rate multiplication. So Adam's
bias corrections and global-norm clipping add no passes of their own.

Every transform after global-norm clipping is element-wise, so when NumPy's BLAS runs
several threads the optimizer runs the chain on as many contiguous parts of the buffer at
once (NumPy releases the GIL): the same arithmetic on the same elements, so the result
does not depend on the thread count.
"""

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np

from ..errors import positive_number
from . import schedules


class Transform:
    """One in-place stage of an optimizer; flat state buffers are named in `slots`."""

    name = "transform"
    slots: tuple[str, ...] = ()

    def init(self, params) -> None:
        """Allocate state shaped like the flat parameter buffer."""
        for slot in self.slots:
            setattr(self, slot, params.backend.xp.zeros_like(params.data))

    def update(self, updates, params, step: int, scale: float, part=slice(None)) -> float:
        """Turn the update `scale * updates` into a new one, in place, and return the new
        scale. `updates` and `params` are the part `part` of the flat buffers (state
        buffers are sliced the same way); `step` counts applied updates, from 0."""
        raise NotImplementedError

    def state(self) -> dict:
        return {f"{self.name}/{slot}": getattr(self, slot) for slot in self.slots}


def materialized(updates, scale: float) -> None:
    """Multiply a pending scale into the buffer, for transforms that are not linear."""
    if scale != 1.0:
        updates *= scale


class AddDecayedWeights(Transform):
    """updates += weight_decay * params: decoupled weight decay (Loshchilov & Hutter)."""

    name = "weight_decay"

    def __init__(self, weight_decay: float):
        self.weight_decay = weight_decay

    def init(self, params):
        self._scratch = params.backend.xp.empty_like(params.data)

    def update(self, updates, params, step, scale, part=slice(None)):
        scratch = self._scratch[part]
        np.multiply(params, self.weight_decay / scale, out=scratch)
        updates += scratch
        return scale


class ClipByGlobalNorm(Transform):
    """Scale the whole update down so that its L2 norm is at most max_norm."""

    name = "clip"

    def __init__(self, max_norm: float):
        self.max_norm = max_norm

    def update(self, updates, params, step, scale, part=slice(None)):
        norm = abs(scale) * float(np.sqrt(np.vdot(updates, updates)))
        return scale * self.max_norm / norm if norm > self.max_norm else scale


PART_MINIMUM = 1 << 16  # smaller buffers are not worth a thread


def blas_threads() -> int:
    """How many threads NumPy's BLAS uses now."""
    from threadpoolctl import threadpool_info

    return max((pool["num_threads"] for pool in threadpool_info()
                if pool["user_api"] == "blas"), default=1)


class Optimizer:
    """Applies `params -= learning_rate(step) * chain(grad)`, in place, once per step."""

    def __init__(self, transforms, learning_rate, global_clipnorm=None, weight_decay=None):
        self.learning_rate = schedules.get(learning_rate)
        chain = list(transforms)
        if global_clipnorm is not None:
            max_norm = positive_number(type(self).__name__, "global_clipnorm", global_clipnorm)
            chain.insert(0, ClipByGlobalNorm(max_norm))
        if weight_decay:
            decay = positive_number(type(self).__name__, "weight_decay", weight_decay)
            chain.append(AddDecayedWeights(decay))
        self.transforms = chain
        self.iterations = 0
        # the constructor's arguments, so that a saved model can be rebuilt
        self.config = {"global_clipnorm": global_clipnorm, "weight_decay": weight_decay}

    def build(self, params, threads: "int | None" = None) -> None:
        """Fresh state for `params`: zeroed buffers, step count 0. `threads` (default: as
        many as NumPy's BLAS uses, for host buffers) work on the element-wise steps."""
        self.iterations = 0
        for transform in self.transforms:
            transform.init(params)
        if threads is None:
            threads = blas_threads() if isinstance(params.data, np.ndarray) else 1
        threads = max(1, min(threads, params.size // PART_MINIMUM))
        edges = [params.size * i // threads // 16 * 16 for i in range(threads)] + [params.size]
        self._parts = [slice(a, b) for a, b in pairwise(edges)]
        self._pool = ThreadPoolExecutor(threads, "mpinn-optimizer") if threads > 1 else None

    def apply(self, params, lr_scale: float = 1.0) -> None:
        """One step; consumes `params.grad` as the update buffer. `lr_scale` multiplies
        this step's learning rate (the parameter server's staleness-aware rate)."""
        updates, scale, chain = params.grad, 1.0, self.transforms
        if chain and isinstance(chain[0], ClipByGlobalNorm):  # needs the whole buffer
            scale, chain = chain[0].update(updates, params.data, self.iterations, scale), chain[1:]
        rate = -self.learning_rate(self.iterations) * lr_scale

        def run(part):
            own_scale, update, param = scale, updates[part], params.data[part]
            for transform in chain:
                own_scale = transform.update(update, param, self.iterations, own_scale, part)
            update *= rate * own_scale
            param += update

        if self._pool is None:
            run(slice(None))
        else:
            list(self._pool.map(run, self._parts))
        self.iterations += 1

    def state(self) -> dict:
        """Flat state buffers by `transform/slot` name (for checkpoints)."""
        found = {}
        for transform in self.transforms:
            found.update(transform.state())
        return found

    def __repr__(self) -> str:
        return f"{type(self).__name__}(learning_rate={self.learning_rate!r})"
