"""Each epoch, the rank the others waited for: every rank's compute time (its wall time
minus its waits on other ranks) is summed into one vector, and rank 0 logs the slowest
rank and the spread, so that a straggler is named before it becomes a stall."""

import time

import numpy as np

from .callbacks import Callback


class StragglerReport(Callback):
    """`figures()`: the last epoch's slowest rank, its compute seconds and the spread
    (slowest minus fastest), for the metrics log."""

    def __init__(self, comm):
        self.comm = comm
        self.latest: dict = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.waited = time.perf_counter(), self.comm.waited_seconds

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.started
        seconds = np.zeros(self.comm.size)
        seconds[self.comm.rank] = elapsed - (self.comm.waited_seconds - self.waited)
        self.comm.allreduce_sum(seconds)
        self.comm.collect_status()
        slowest = int(np.argmax(seconds))
        self.latest = {"slowest_rank": slowest,
                       "slowest_compute_seconds": round(float(seconds[slowest]), 4),
                       "compute_seconds_spread": round(float(seconds.max() - seconds.min()), 4)}

    def figures(self) -> dict:
        return self.latest
