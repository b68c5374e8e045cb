"""Parameter-server throughput: updates the server applies per second and how busy the
workers are, for 1..K workers, next to a raw Send/Recv round trip of the same bytes, and
where rank 0 saturates. See benchmarks/README.md.

    python benchmarks/bench_ps.py [--workers 1,2,3] [--mode async] [--repeats N]

The driver launches `mpiexec -n (workers + 1)` (1 BLAS thread per rank); rank 0 reports.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_allreduce import launch_workers  # noqa: E402
from bench_engine import WORKLOADS, blas_description, make_data, mpinn_model  # noqa: E402

ROUND_TRIPS = 30


def timed_strategy(base):
    """The ps strategy, with each worker's time inside push/pull recorded."""

    class Timed(base):
        waiting = 0.0

        def apply_gradients(self, model, local_samples, global_samples):
            started = time.perf_counter()
            super().apply_gradients(model, local_samples, global_samples)
            self.waiting += time.perf_counter() - started

    return Timed


def round_trip_seconds(comm, buffer) -> float:
    """Median time of rank 1 sending `buffer` to rank 0 and getting as many bytes back."""
    samples = []
    for _ in range(ROUND_TRIPS):
        comm.Barrier()
        started = time.perf_counter()
        if comm.Get_rank() == 1:
            comm.Send(buffer, dest=0, tag=7)
            comm.Recv(buffer, source=0, tag=8)
        elif comm.Get_rank() == 0:
            comm.Recv(buffer, source=1, tag=7)
            comm.Send(buffer, dest=1, tag=8)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def apply_seconds(model) -> float:
    """Median time of one optimizer step on the server (Adam over the flat buffer)."""
    samples = []
    for _ in range(ROUND_TRIPS):
        model.params.grad[...] = 1e-3
        started = time.perf_counter()
        model.optimizer.apply(model.params)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def worker(mode: str, repeats: int, names: list[str]) -> None:
    from mpi4py import MPI
    from mpinn_strategies.ps import ParameterServerStrategy

    from mpinn.dist.comm import MPIComm

    comm = MPI.COMM_WORLD
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    results = {}
    for name in names:
        hidden, batch, samples = WORKLOADS[name]
        x, y = make_data(samples)
        model = mpinn_model((784, *hidden, 10))
        strategy = timed_strategy(ParameterServerStrategy)(MPIComm(MPI), mode=mode)
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, strategy=strategy)  # warm-up
        rates, utilisation = [], []
        for _ in range(repeats):
            before = strategy.version
            strategy.waiting = strategy.serving_seconds = strategy.busy_seconds = 0.0
            comm.Barrier()
            started = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, strategy=strategy)
            elapsed = time.perf_counter() - started
            rates.append((strategy.version - before) / strategy.serving_seconds if rank == 0
                         else 0.0)
            share = np.array([0.0 if rank == 0 else 1 - strategy.waiting / elapsed])
            comm.Allreduce(MPI.IN_PLACE, share, op=MPI.SUM)
            utilisation.append(share[0] / workers)
        busy = strategy.busy_seconds / max(strategy.serving_seconds, 1e-9)
        trip = round_trip_seconds(comm, np.empty_like(model.params.grad))
        step = apply_seconds(model) if rank == 0 else 0.0
        results[name] = {"updates_per_second": statistics.median(rates),
                         "worker_utilisation": statistics.median(utilisation),
                         "server_busy_share": busy, "round_trip_seconds": trip,
                         "apply_seconds": step, "bytes": int(model.params.grad.nbytes)}
    if rank == 0:
        print(json.dumps({"workers": workers, "results": results, "blas": blas_description()}))


def report(runs: dict[int, dict], names: list[str]) -> None:
    print("| workload | workers | updates/s | worker utilisation | server busy "
          "| raw Send+Recv round trip ms | server apply ms | saturation estimate (workers) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for workers, run in sorted(runs.items()):
            r = run["results"][name]
            # one update costs the server a receive, an optimizer step and a send; a worker
            # offers one update per (its compute + a round trip): rank 0 saturates when
            # workers / (compute + round trip) exceeds 1 / (round trip + apply)
            per_worker = workers / r["updates_per_second"]  # seconds between a worker's pushes
            server_floor = r["round_trip_seconds"] + r["apply_seconds"]
            print(f"| {name} ({r['bytes'] / 1e6:.1f} MB) | {workers} "
                  f"| {r['updates_per_second']:,.0f} | {r['worker_utilisation']:.2f} "
                  f"| {r['server_busy_share']:.2f} | {r['round_trip_seconds'] * 1e3:.2f} "
                  f"| {r['apply_seconds'] * 1e3:.2f} | {per_worker / server_floor:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--mode", default="async", choices=("sync", "async"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    if args.worker:
        worker(args.mode, args.repeats, names)
        return
    runs = {int(k): launch_workers(__file__, int(k) + 1, "--mode", args.mode, "--repeats",
                                   str(args.repeats), "--workloads", ",".join(names))
            for k in args.workers.split(",")}
    print(f"ps mode {args.mode}; medians of {args.repeats} epochs; 1 BLAS thread per rank; "
          f"{os.cpu_count()} CPUs (more ranks than CPUs oversubscribe)")
    for line in next(iter(runs.values()))["blas"]:  # as the ranks saw it
        print(line)
    report(runs, names)


if __name__ == "__main__":
    main()
