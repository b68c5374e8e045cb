"""numba's threads for the NumPy backend's kernels (kernels.py, half.py): one threading
layer, chosen before the first parallel kernel runs, whichever module runs first; and each
kernel on this process's thread budget.

OpenMP's worker threads spin after each kernel and starve OpenBLAS's between steps (W1 at
2 threads trained at 0.55x the unfused chain; on 2 ranks of 2 cores, a float16 exchange
whose codec ran first, and so chose OpenMP, made every kernel 20-40x slower); numba's own
pool (workqueue) sleeps. A NUMBA_THREADING_LAYER of the user's wins.

On a budget of one thread a kernel runs on the calling thread, compiled without threads:
workqueue hands even one thread's work to a pool thread, which the OS may run on another
core, away from the data the step just wrote in this core's cache (W1's Adam step in
training took 0.58 ms so on a 2-vCPU AMD EPYC host, 0.19 ms on the calling thread).
"""

import functools
import os
import types

import numba

from mpinn.threads import budget

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}


def threaded(function):
    """`function` (its loops over `prange`) compiled twice, with threads and without, and
    called on this process's thread budget (mpinn.threads). Each element's arithmetic is
    the same either way, so are the results."""
    with_threads = numba.njit(parallel=True, **OPTIONS)(function)
    alone = types.FunctionType(function.__code__, function.__globals__, function.__name__,
                               function.__defaults__, function.__closure__)
    alone.__qualname__ = f"{function.__qualname__}_on_one_thread"  # its own disk cache
    on_one_thread = numba.njit(**OPTIONS)(alone)

    @functools.wraps(function)
    def run(*arguments):
        threads = min(budget(), numba.config.NUMBA_NUM_THREADS)
        if threads == 1:
            return on_one_thread(*arguments)
        numba.set_num_threads(threads)
        return with_threads(*arguments)

    return run
