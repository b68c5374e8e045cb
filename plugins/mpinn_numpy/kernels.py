"""Fused optimizer steps for the NumPy backend: each reads the gradient and the state once
and writes the state and the parameters once, where the optimizer chain takes up to ten
passes over the flat buffers. Compiled by numba on first use (and cached on disk); threads
split the buffer, so a step's result does not depend on their number.

Every kernel does the chain's float operations in the chain's order, in the buffers'
dtype (the caller passes scalars of that dtype), so it gives the chain's results bit for
bit. `params += step * (update + decay * params)` ends each one; `decay` is the decoupled
weight decay over the final scale (0: none). The scalars of each kernel are what the
transforms' `fused` methods return, in chain order (see mpinn/optim/base.py).
"""

import numba
import numpy as np
from numba import prange

from .numba_threads import threaded


@numba.njit(inline="always", error_model="numpy", cache=True)
def _apply(params, index, update, step, decay):
    if decay == 0:
        params[index] += step * update
    else:
        params[index] += step * (update + params[index] * decay)


@threaded
def sgd(params, grad, step, decay):
    for i in prange(params.size):
        _apply(params, i, grad[i], step, decay)


@threaded
def momentum(params, grad, trace, scale, momentum, step, decay):
    for i in prange(params.size):
        trace[i] = trace[i] * momentum + grad[i] * scale
        _apply(params, i, trace[i], step, decay)


@threaded
def nesterov(params, grad, trace, scale, momentum, step, decay):
    for i in prange(params.size):
        g = grad[i] * scale
        trace[i] = trace[i] * momentum + g
        _apply(params, i, g + momentum * trace[i], step, decay)


@threaded
def adam(params, grad, grad_sum, grad_sq_sum, scale, beta_1, beta_2, epsilon, step, decay):
    for i in prange(params.size):
        g = grad[i] * scale
        grad_sum[i] = grad_sum[i] * beta_1 + g
        grad_sq_sum[i] = grad_sq_sum[i] * beta_2 + g * g
        _apply(params, i, grad_sum[i] / (np.sqrt(grad_sq_sum[i]) + epsilon), step, decay)


@threaded
def rmsprop(params, grad, grad_sq_sum, scale, rho, epsilon, step, decay):
    for i in prange(params.size):
        g = grad[i] * scale
        grad_sq_sum[i] = grad_sq_sum[i] * rho + g * g
        _apply(params, i, g / (np.sqrt(grad_sq_sum[i]) + epsilon), step, decay)


@threaded
def rmsprop_momentum(params, grad, grad_sq_sum, trace, scale, rho, epsilon, rms_scale,
                     momentum, step, decay):
    for i in prange(params.size):
        g = grad[i] * scale
        grad_sq_sum[i] = grad_sq_sum[i] * rho + g * g
        update = g / (np.sqrt(grad_sq_sum[i]) + epsilon) * rms_scale
        trace[i] = trace[i] * momentum + update
        _apply(params, i, trace[i], step, decay)


@threaded
def adagrad(params, grad, accumulator, scale, epsilon, step, decay):
    for i in prange(params.size):
        g = grad[i] * scale
        accumulator[i] += g * g
        _apply(params, i, g / (np.sqrt(accumulator[i]) + epsilon), step, decay)


# the chains they fuse: the names of the transforms between clipping and weight decay
KERNELS = {
    (): sgd, ("momentum",): momentum, ("nesterov",): nesterov, ("adam",): adam,
    ("rmsprop",): rmsprop, ("rmsprop", "momentum"): rmsprop_momentum,
    ("adagrad",): adagrad,
}


def kernel(chain: tuple[str, ...]):
    """The fused step for `chain`, or None; it runs on this process's thread budget."""
    return KERNELS.get(chain)


def describe() -> str:
    return f"numba {numba.__version__}"
