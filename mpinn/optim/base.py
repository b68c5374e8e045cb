"""Optimizers as chains of small in-place transforms over the flat gradient buffer.

Each transform turns the update buffer (which starts as the gradient) into a new update,
in place; the optimizer then applies `params -= learning_rate * update`. The familiar
optimizers are chains: Adam is `[ScaleByAdam]`, AdamW `[ScaleByAdam, AddDecayedWeights]`,
and `global_clipnorm` puts `ClipByGlobalNorm` first.

A scalar factor need not cost a pass over the buffer: the true update is always
`scale * updates`, where `scale` travels along the chain (each transform takes it and
returns the new one) and is folded into the final learning-rate multiplication. So Adam's
bias corrections and global-norm clipping add no passes of their own.

Fused. Where the backend has a fused kernel for the chain (the NumPy backend's, compiled
by numba), the step is one pass: each transform's `fused` gives the kernel its state
buffers and scalars instead of updating the buffer itself. The chain stays the reference
(the kernels reproduce it bit for bit) and the fallback for every other chain or backend.
"""

import copy
import math

import numpy as np

from ..errors import positive_number
from ..inputs import all_finite
from . import schedules

# Loading the NumPy backend's kernels costs about 0.7 s once (importing numba, reading its
# cache); a fused step saves about 1.5 ns per parameter: from 2^18 parameters on, that is
# 0.4 ms a step, and the cost is repaid within the first two thousand steps.
FUSED_FROM = 1 << 18


class Transform:
    """One in-place stage of an optimizer; flat state buffers are named in `slots`."""

    name = "transform"
    slots: tuple[str, ...] = ()
    kernel_name: "str | None" = None  # this stage in a fused kernel's chain (None: none)

    def init(self, params) -> None:
        """Allocate state shaped like the flat parameter buffer."""
        for slot in self.slots:
            setattr(self, slot, params.backend.xp.zeros_like(params.data))

    def update(self, updates, params, step: int, scale: float) -> float:
        """Turn the update `scale * updates` into a new one, in place, and return the new
        scale; `step` counts applied updates, from 0."""
        raise NotImplementedError

    def fused(self, step: int, scale: float) -> tuple[tuple, tuple, float]:
        """What `update` does, for a fused kernel: this stage's state buffers, its scalars
        (starting with the pending `scale` where it takes one) and the scale it returns."""
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

    def update(self, updates, params, step, scale):
        np.multiply(params, self.weight_decay / scale, out=self._scratch)
        updates += self._scratch
        return scale


def global_norm(updates) -> float:
    """The L2 norm of a flat buffer, as clipping computes it."""
    return float(np.sqrt(np.vdot(updates, updates)))


class ClipByGlobalNorm(Transform):
    """Scale the whole update down so that its L2 norm is at most max_norm."""

    name = "clip"

    def __init__(self, max_norm: float):
        self.max_norm = max_norm

    def update(self, updates, params, step, scale):
        return self.clipped(scale, global_norm(updates))

    def clipped(self, scale: float, norm: float) -> float:
        """The scale that clips an update `scale * updates` whose `updates` have L2 norm
        `norm`."""
        norm *= abs(scale)
        return scale * self.max_norm / norm if norm > self.max_norm else scale


class Optimizer:
    """Applies `params -= learning_rate(step) * chain(grad)`, in place, once per step.

    With `skip_nonfinite` set, a step whose gradient holds NaN or Inf is not applied (the
    state and step count stay as they were) and is counted in `skipped`; the check is a
    pass over the gradient and one read of its sum."""

    skip_nonfinite = False
    kernel = None  # the backend's fused step for this chain (see build)
    _find_kernel = False

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
        self.iterations = self.skipped = 0
        # the constructor's arguments, so that a saved model can be rebuilt
        self.config = {"global_clipnorm": global_clipnorm, "weight_decay": weight_decay}

    def build(self, params, fused: "bool | None" = None) -> None:
        """Fresh state for `params`: zeroed buffers, step count 0. Steps run in the
        backend's fused kernel for this chain where it has one and `fused` is True, or
        None (the default) and the model has at least FUSED_FROM parameters."""
        self.iterations = 0
        for transform in self.transforms:
            transform.init(params)
        if fused is None:
            fused = params.size >= FUSED_FROM
        self.kernel, self._find_kernel = None, fused  # found at the first step: a process
        # that never steps (a ps worker, evaluate) does not load the kernels

    def _fused_kernel(self, backend):
        """The backend's kernel for the transforms between clipping and weight decay."""
        chain = self.transforms
        while chain and isinstance(chain[0], ClipByGlobalNorm):
            chain = chain[1:]
        if chain and isinstance(chain[-1], AddDecayedWeights):
            chain = chain[:-1]
        names = tuple(transform.kernel_name for transform in chain)
        if None in names:
            return None
        return backend.optimizer_kernel(names)

    @property
    def uses_global_norm(self) -> bool:
        """Whether a step needs the whole gradient's norm (clipping, or skipping steps
        that are not finite): what a server holding a slice is told by the worker."""
        return self.skip_nonfinite or any(isinstance(transform, ClipByGlobalNorm)
                                          for transform in self.transforms)

    def apply(self, params, lr_scale: float = 1.0, grad=None, norm=None) -> None:
        """One step; consumes `grad` (by default `params.grad`) as the update buffer.
        `lr_scale` multiplies this step's learning rate (the parameter server's
        staleness-aware rate). `norm`: the L2 norm of the whole gradient where `params` is
        a slice of the model (a sharded server's), for clipping and the finite check; a
        norm that is not finite counts as a gradient that is not."""
        updates, scale = params.grad if grad is None else grad, 1.0
        if self.skip_nonfinite and not (all_finite(updates) if norm is None
                                        else math.isfinite(norm)):
            self.skipped += 1
            return
        if self._find_kernel:
            self.kernel, self._find_kernel = self._fused_kernel(params.backend), False
        if self.kernel is not None:
            self._apply_fused(params, updates, lr_scale, norm)
        else:
            for transform in self.transforms:
                if norm is not None and isinstance(transform, ClipByGlobalNorm):
                    scale = transform.clipped(scale, norm)
                else:
                    scale = transform.update(updates, params.data, self.iterations, scale)
            updates *= -self.learning_rate(self.iterations) * lr_scale * scale
            params.data += updates
        self.iterations += 1

    def _apply_fused(self, params, grad, lr_scale: float, norm) -> None:
        """The chain's step in one kernel call, with its scalars in the buffers' dtype."""
        scale, buffers, scalars, decay = 1.0, [], [], 0.0
        for transform in self.transforms:
            if isinstance(transform, ClipByGlobalNorm):
                scale = (transform.update(grad, params.data, self.iterations, scale)
                         if norm is None else transform.clipped(scale, norm))
            elif isinstance(transform, AddDecayedWeights):
                decay = transform.weight_decay / scale
            else:
                slots, values, scale = transform.fused(self.iterations, scale)
                buffers += slots
                scalars += values
        step = -self.learning_rate(self.iterations) * lr_scale * scale
        number = params.data.dtype.type
        self.kernel(params.data, grad, *buffers,
                    *(number(value) for value in (*scalars, step, decay)))

    def sliced(self, params, start: int, stop: int) -> "Optimizer":
        """This optimizer on `params`, the [start, stop) slice of the model's flat buffers
        (a sharded parameter server's part): its state buffers are views of this one's,
        its step count starts at this one's and is its own from then on."""
        part = copy.copy(self)
        part.transforms = []
        for transform in self.transforms:
            piece = copy.copy(transform)
            piece.init(params)  # scratch sized to the slice; the state is this one's:
            for slot in transform.slots:
                setattr(piece, slot, getattr(transform, slot)[start:stop])
            part.transforms.append(piece)
        return part

    def state(self) -> dict:
        """Flat state buffers by `transform/slot` name (for checkpoints)."""
        found = {}
        for transform in self.transforms:
            found.update(transform.state())
        return found

    def __repr__(self) -> str:
        return f"{type(self).__name__}(learning_rate={self.learning_rate!r})"
