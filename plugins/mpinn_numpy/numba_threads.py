"""numba's threads for the NumPy backend's kernels (kernels.py, half.py): one threading
layer, chosen before the first parallel kernel runs, whichever module runs first; and each
kernel on this process's thread budget.

OpenMP's worker threads spin after each kernel and starve OpenBLAS's between steps (W1 at
2 threads trained at 0.55x the unfused chain; on 2 ranks of 2 cores, a float16 exchange
whose codec ran first, and so chose OpenMP, made every kernel 20-40x slower); numba's own
pool (workqueue) sleeps. A NUMBA_THREADING_LAYER of the user's wins."""

import os

import numba

from mpinn.threads import budget

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


def on_budget() -> None:
    """The next parallel kernels run on this process's thread budget (mpinn.threads)."""
    numba.set_num_threads(min(budget(), numba.config.NUMBA_NUM_THREADS))
