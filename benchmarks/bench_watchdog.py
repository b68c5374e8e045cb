"""The watchdog's cost: W1 and W2 trained as `mpinn train` trains them (the `allreduce`
strategy, the per-step stop agreement, the per-epoch straggler report) with every wait
watched, against the same code with the watchdog off (`watchdog.warn_seconds = 0` and
`abort_seconds = 0`: MPI's own blocking waits). See benchmarks/README.md.

    python benchmarks/bench_watchdog.py [--repeats N] [--ranks 1,2]

Each worker trains one model per setting and alternates them round by round (A B, B A,
...; a round is one `fit` epoch over 4,096 samples), in the same processes; rank 0 reports
medians and the per-round paired ratio.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_allreduce import drive, timed_epoch  # noqa: E402
from bench_engine import (  # noqa: E402 - the shared workloads
    WORKLOADS,
    blas_description,
    make_data,
    mpinn_model,
    paired_ratio,
)

SETTINGS = {"watched": (60.0, 600.0), "unwatched": (0.0, 0.0)}
# a round trains this many samples (W1: a quarter epoch): short rounds, many of them, so
# that the paired ratio resolves a 1% difference on a noisy machine
ROUND_SAMPLES = 4096


class CliLikeRunner:
    """`fit` with the hooks `mpinn train` adds on every rank, on a communicator of its own
    whose watchdog is set as `mpinn train` sets it from the job file."""

    def __init__(self, sizes, batch, x, y, warn_seconds, abort_seconds):
        from mpi4py import MPI
        from mpinn_strategies.allreduce import AllreduceStrategy

        from mpinn.dist.comm import MPIComm
        from mpinn.stopping import StopAtStepBoundary, StopRequests
        from mpinn.stragglers import StragglerReport

        comm = MPIComm(MPI)
        comm.watch(warn_seconds, abort_seconds)
        self.model = mpinn_model(sizes)
        self.strategy = AllreduceStrategy(comm)
        steps = -(-len(x) // batch)
        self.hooks = [StopAtStepBoundary(StopRequests(), comm, True, steps)]
        if comm.watched and comm.size > 1:
            self.hooks.insert(0, StragglerReport(comm))
        self.batch, self.x, self.y = batch, x, y

    def epoch(self):
        self.model.fit(self.x, self.y, batch_size=self.batch, epochs=1, verbose=0,
                       callbacks=self.hooks, strategy=self.strategy)


def step_overhead(rounds: int = 15, steps: int = 20000) -> dict:
    """Microseconds per step of what the watchdog touches every step, watched and not: the
    step's place (`Comm.at`) and the stop agreement's 5-number Allreduce; the medians of
    alternating rounds. The difference is the watchdog's own cost, free of the epoch
    timings' noise."""
    from mpi4py import MPI

    from mpinn.dist.comm import MPIComm

    flags = np.zeros(5)
    seconds = {}
    for key, times in SETTINGS.items():
        comm = MPIComm(MPI)
        comm.watch(*times)
        seconds[key] = (comm, [])
    for round_ in range(rounds):
        keys = list(seconds) if round_ % 2 == 0 else list(reversed(seconds))
        for key in keys:
            comm, found = seconds[key]
            MPI.COMM_WORLD.Barrier()
            started = time.perf_counter()
            for step in range(steps):
                comm.at((0, step))
                comm.allreduce_sum(flags)
            found.append((time.perf_counter() - started) / steps * 1e6)
    return {key: statistics.median(found) for key, (_, found) in seconds.items()}


def worker(repeats: int, names: list[str]) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    results = {"step overhead": step_overhead()}
    for name in names:
        hidden, batch, samples = WORKLOADS[name]
        samples = min(samples, ROUND_SAMPLES)
        x, y = make_data(samples)
        runners = {key: CliLikeRunner((784, *hidden, 10), batch, x, y, *times)
                   for key, times in SETTINGS.items()}
        seconds = {key: [] for key in runners}
        for runner in runners.values():  # warm-up
            timed_epoch(comm, runner)
        for round_ in range(repeats):
            keys = list(runners) if round_ % 2 == 0 else list(reversed(runners))
            for key in keys:
                seconds[key].append(timed_epoch(comm, runners[key]))
        results[name] = {
            "samples_per_second": {k: samples / statistics.median(v) for k, v in seconds.items()},
            "ratios_by_round": [off / on for on, off
                                in zip(seconds["watched"], seconds["unwatched"], strict=True)],
        }
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "results": results,
                          "blas": blas_description()}))


def report(runs: dict[int, dict], names: list[str]) -> None:
    print("| workload | ranks | watched samples/s | unwatched samples/s | watched / unwatched "
          "| paired by round (IQR) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for ranks, run in sorted(runs.items()):
            result = run["results"][name]
            on, off = (result["samples_per_second"][k] for k in SETTINGS)
            print(f"| {name} | {ranks} | {on:,.0f} | {off:,.0f} | {on / off:.3f} "
                  f"| {paired_ratio(result['ratios_by_round'])} |")
    print("\nper step, `Comm.at` and the stop agreement's Allreduce (us): watched, unwatched")
    for ranks, run in sorted(runs.items()):
        on, off = (run["results"]["step overhead"][k] for k in SETTINGS)
        print(f"{ranks} rank(s): {on:.2f}, {off:.2f} (the watchdog: {on - off:+.2f} us)")


if __name__ == "__main__":
    drive(__file__, __doc__.splitlines()[0], worker, report, repeats=41)
