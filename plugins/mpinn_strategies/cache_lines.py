"""Parameters handed between cores through shared memory, and what the handing costs.

In `sync` on one node the servers write each step's parameters into memory the workers
have just read. On some CPUs a store to a cache line that other cores hold unmodified
is slow: on this project's AMD EPYC build machine a server's pass writing 2.7 MB (W1)
took 0.35 ms where the worker had read them and 0.09 ms where the worker had written
them since (it holds them modified, the one owner), and its optimizer step took 0.51 ms
against 0.13 ms in one process. So a worker done reading the parameters *claims* its
share of them before the step's first barrier, while no server writes: it rewrites one
word of every cache line with the bits it holds (0.03 ms for W1), and the server's step
takes 0.23 ms. Values never change, so training gives the same numbers either way.
Where two ranks share a core's caches (hyper-threads; a virtual machine's vCPUs may move
there and back) claiming costs nothing and gains nothing; another CPU might lose by it.
So the ranks time both ways once at setup and claim unless claiming is clearly slower.
"""

import statistics
import time

import numpy as np

LINE_BYTES = 64
SAMPLE_BYTES = 8 << 20  # the measurement's share of the parameters, at most
ROUNDS = 5  # of each way, alternating
LOSS = 1.1  # claims are left out where they make the handing over this much slower


def claim(array: np.ndarray) -> None:
    """Rewrite one word per cache line of `array` with its own bits."""
    words = array.view(f"u{array.itemsize}")
    words[::max(1, LINE_BYTES // array.itemsize)] |= 0


def claiming_pays(parameters: np.ndarray, written: "slice | None", claimed: "slice | None",
                  barrier, agree) -> bool:
    """Collective over the ranks sharing `parameters`: whether the workers' claims make
    handing them over faster. Each round every worker reads a sample of them (as forward
    does) and, in claiming rounds, claims its `claimed` part of it; then each server
    rewrites its `written` part (as its optimizer does). `barrier()` separates the
    phases; `agree(vote)` returns the vote all ranks take (their timings differ a
    little)."""
    sample = parameters[:SAMPLE_BYTES // parameters.itemsize]
    seconds = {False: [], True: []}
    for round_ in range(2 * ROUNDS):
        claiming = round_ % 2 == 1
        barrier()
        started = time.perf_counter()
        if claimed is not None:
            float(sample.sum())
            if claiming:
                claim(sample[claimed])
        barrier()
        if written is not None:
            claim(sample[written])
        barrier()
        seconds[claiming].append(time.perf_counter() - started)
    return agree(statistics.median(seconds[True]) < LOSS * statistics.median(seconds[False]))
