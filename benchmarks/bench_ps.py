"""The parameter server: its capacity, the workers' step time and where the server
saturates; and, on real training, worker utilisation and the cost of `sync` against one
process. See benchmarks/README.md.

    python benchmarks/bench_ps.py [--repeats N] [--workers 1,2] [--workloads W1,W2]

The driver launches `mpiexec -n (workers + 1)` (1 BLAS thread per rank); rank 0 reports.
1. Capacity: synthetic pushers (workers that push a stored gradient and compute nothing,
   so the server is never idle for want of pushes) against the real server; updates/s per
   server rank, split into receiving, the optimizer step and replying.
2. A worker's step time (forward and backward) at several batch sizes, and the model:
   a worker offers one update per step time, so the server saturates at
   capacity x step time workers.
3. Real training, one epoch per round, modes in turn (A B C D, D C B A, ...): async in lock
   step (staleness 0), async overlapped (no bound), sync, and one process alone (the
   other ranks wait) for the same global batch. Worker utilisation is the share of a
   worker's epoch outside the strategy's push/pull.
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

BATCHES = (32, 128, 512)  # per-worker batch sizes of the saturation table
PUSH_SECONDS = 1.5  # the synthetic pushers' time per round, about


def timed(base):
    """The ps strategy, with each worker's time inside push/pull recorded."""

    class Timed(base):
        waiting = 0.0

        def apply_gradients(self, model, local_samples, global_samples):
            started = time.perf_counter()
            super().apply_gradients(model, local_samples, global_samples)
            self.waiting += time.perf_counter() - started

    return Timed


def capacity(comm, model, strategy_class, make_comm, rounds: int) -> dict:
    """Updates/s of the server against synthetic pushers, and its time split."""
    strategy = strategy_class(make_comm(), mode="async")
    strategy.setup(model)
    model.params.grad[...] = np.random.default_rng(comm.Get_rank()).normal(
        scale=1e-3, size=model.params.size)
    # one warm-up round of 10 pushes each, which also times a push for the round's size
    results = {"rates": [], "seconds": []}
    pushes = 10
    for round_ in range(rounds + 1):
        comm.Barrier()
        before = dict(strategy.seconds)
        started = time.perf_counter()
        if strategy.serves:
            strategy.serve_epoch(model, pushes, [])
        else:
            for _ in range(pushes):
                strategy.apply_gradients(model, 1, 1)
        strategy.end_epoch(model)
        elapsed = np.array([time.perf_counter() - started])
        comm.Bcast(elapsed, root=0)
        if round_:
            updates = pushes * strategy.workers
            results["rates"].append(updates / elapsed[0])
            results["seconds"].append({part: (strategy.seconds[part] - before.get(part, 0.0))
                                       / updates for part in ("receive", "optimizer", "reply")})
        pushes = max(10, int(pushes * PUSH_SECONDS / elapsed[0]))
    split = {part: statistics.median(s[part] for s in results["seconds"])
             for part in ("receive", "optimizer", "reply")}
    return {"updates_per_second": statistics.median(results["rates"]), "seconds": split}


def step_seconds(comm, model, repeats: int) -> dict:
    """Median forward + backward time of one batch on rank 1, per batch size."""
    found = {}
    for batch in BATCHES:
        x, y = make_data(batch, seed=batch)
        samples = []
        for _ in range(repeats + 1):
            comm.Barrier()
            if comm.Get_rank() == 1:
                started = time.perf_counter()
                model.compute_gradients(x, y)
                samples.append(time.perf_counter() - started)
        found[batch] = statistics.median(samples[1:]) if samples else 0.0
    value = np.array([found[batch] for batch in BATCHES])
    comm.Bcast(value, root=1)
    return dict(zip(BATCHES, value.tolist(), strict=True))


def training(comm, name: str, strategy_class, make_comm, repeats: int) -> dict:
    """Epoch seconds and worker utilisation per mode, in alternating order."""
    from mpi4py import MPI

    from mpinn.dist import LocalStrategy

    hidden, batch, samples = WORKLOADS[name]
    x, y = make_data(samples)
    rank, workers = comm.Get_rank(), comm.Get_size() - 1
    modes = {"async lock step": {"mode": "async", "staleness": 0},
             "async overlapped": {"mode": "async"}, "sync": {"mode": "sync"}}
    strategies = {mode: timed(strategy_class)(make_comm(), **options)
                  for mode, options in modes.items()}
    models = {mode: mpinn_model((784, *hidden, 10)) for mode in [*modes, "one process"]}
    seconds = {mode: [] for mode in models}
    utilisation = {mode: [] for mode in modes}
    for round_ in range(repeats + 1):
        order = list(models) if round_ % 2 == 0 else list(reversed(models))
        for mode in order:
            strategy = strategies.get(mode)
            comm.Barrier()
            started = time.perf_counter()
            if strategy is not None:
                strategy.waiting = 0.0
                models[mode].fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                 strategy=strategy)
            elif rank == 1:
                models[mode].fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                 strategy=LocalStrategy())
            comm.Barrier()
            elapsed = time.perf_counter() - started
            if round_ == 0:
                continue  # warm-up
            seconds[mode].append(elapsed)
            if strategy is not None:
                share = np.array([0.0 if rank == 0 else 1 - strategy.waiting / elapsed])
                comm.Allreduce(MPI.IN_PLACE, share)
                utilisation[mode].append(share[0] / workers)
    return {"epoch_seconds": {mode: statistics.median(s) for mode, s in seconds.items()},
            "utilisation": {mode: statistics.median(u) for mode, u in utilisation.items()}}


def worker(repeats: int, names: list[str]) -> None:
    from mpi4py import MPI
    from mpinn_strategies.ps import ParameterServerStrategy

    from mpinn.dist.comm import MPIComm

    comm = MPI.COMM_WORLD
    results = {}
    for name in names:
        hidden, batch, _ = WORKLOADS[name]
        model = mpinn_model((784, *hidden, 10))
        results[name] = {
            "bytes": int(model.params.grad.nbytes),
            "capacity": capacity(comm, model, ParameterServerStrategy, lambda: MPIComm(MPI),
                                 repeats),
            "step_seconds": step_seconds(comm, model, repeats),
            "training": training(comm, name, ParameterServerStrategy, lambda: MPIComm(MPI),
                                 repeats),
        }
    if comm.Get_rank() == 0:
        backend = __import__("mpinn").get_backend("numpy").describe()
        print(json.dumps({"workers": comm.Get_size() - 1, "results": results,
                          "blas": blas_description(), "backend": backend}))


def report(runs: dict[int, dict], names: list[str]) -> None:
    print("\n#### Server capacity (synthetic pushers) and saturation\n")
    print("| workload | pushers | updates/s per server rank | receive ms | optimizer ms "
          "| reply ms | " + " | ".join(f"step ms b{b}" for b in BATCHES) + " | "
          + " | ".join(f"saturates at (workers) b{b}" for b in BATCHES) + " |")
    print("|---|---|---|---|---|---|" + "---|" * 2 * len(BATCHES))
    for name in names:
        for workers, run in sorted(runs.items()):
            r = run["results"][name]
            rate, split = r["capacity"]["updates_per_second"], r["capacity"]["seconds"]
            steps = [r["step_seconds"][str(b)] for b in BATCHES]
            print(f"| {name} ({r['bytes'] / 1e6:.1f} MB) | {workers} | {rate:,.0f} | "
                  + " | ".join(f"{split[p] * 1e3:.2f}" for p in ("receive", "optimizer", "reply"))
                  + " | " + " | ".join(f"{s * 1e3:.1f}" for s in steps) + " | "
                  + " | ".join(f"{rate * s:.1f}" for s in steps) + " |")
    print("\n#### Real training: epoch seconds and worker utilisation\n")
    print("| workload | workers | one process s | sync s | sync / one process "
          "| lock step s (util.) | overlapped s (util.) | sync util. |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for workers, run in sorted(runs.items()):
            t = run["results"][name]["training"]
            s, u = t["epoch_seconds"], t["utilisation"]
            print(f"| {name} | {workers} | {s['one process']:.3f} | {s['sync']:.3f} "
                  f"| {s['sync'] / s['one process']:.3f} "
                  f"| {s['async lock step']:.3f} ({u['async lock step']:.2f}) "
                  f"| {s['async overlapped']:.3f} ({u['async overlapped']:.2f}) "
                  f"| {u['sync']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    if args.worker:
        worker(args.repeats, names)
        return
    runs = {int(k): launch_workers(__file__, int(k) + 1, "--repeats", str(args.repeats),
                                   "--workloads", ",".join(names))
            for k in args.workers.split(",")}
    first = next(iter(runs.values()))
    print(f"medians of {args.repeats} rounds; 1 BLAS thread per rank; {os.cpu_count()} CPUs "
          f"(more ranks than CPUs oversubscribe); numpy backend: {first['backend']}")
    for line in first["blas"]:  # as the ranks saw it
        print(line)
    report(runs, names)


if __name__ == "__main__":
    main()
