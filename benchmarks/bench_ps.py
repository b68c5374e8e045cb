"""Parameter servers: their capacity, the workers' step time and where the servers
saturate, for k = 1, 2, 4 servers and several batch sizes and push intervals; and, on
real training, worker utilisation and the cost of `sync` against one process. See
benchmarks/README.md.

    python benchmarks/bench_ps.py [--repeats N] [--servers 1,2] [--workloads W1,W2]

For each k the driver launches `mpiexec -n (k + 1)`: k servers and one worker (1 BLAS
thread per rank); rank 0 reports.
1. Capacity: a synthetic pusher (a worker that pushes a stored gradient and computes
   nothing) against the real servers; updates/s per server rank (each server applies
   every update, to its slice), split into receiving, the optimizer step and replying.
   A server's work depends only on its slice, so the k = 1 run also measures one server
   on a model of 1/2 and 1/4 the size: the per-server capacity of k = 2 and 4 without
   oversubscribing 2 CPUs.
2. A worker's step time (forward and backward) at several batch sizes, and the model:
   a worker offers one update per `push_every` step times, so the servers saturate at
   capacity(S / k) x push_every x step time workers.
3. Real training, one epoch per round, modes in turn (A B C D, D C B A, ...): async in
   lock step (staleness 0), async overlapped (no bound), sync, and one process alone (the
   other ranks wait) for the same global batch. An epoch is timed from its start to its
   end (a fit's setup and finish, paid once per run, fall outside). Worker utilisation is
   the share of a worker's epoch outside the strategy's push/pull.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import mpinn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_allreduce import launch_workers  # noqa: E402
from bench_engine import WORKLOADS, blas_description, make_data, mpinn_model  # noqa: E402

BATCHES = (32, 128, 512)  # per-worker batch sizes of the saturation table
PUSH_INTERVALS = (1, 4)  # push_every of the saturation table
SLICES = (1, 2, 4)  # servers of the saturation table
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


def capacity(comm, model, strategy_class, make_comm, rounds: int, servers: int) -> dict:
    """Updates/s per server rank against a synthetic pusher, and rank 0's time split."""
    strategy = strategy_class(make_comm(), mode="async", servers=servers)
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
    """Median forward + backward time of one batch on the last rank (a worker), per batch
    size."""
    found, worker = {}, comm.Get_size() - 1
    for batch in BATCHES:
        x, y = make_data(batch, seed=batch)
        samples = []
        for _ in range(repeats + 1):
            comm.Barrier()
            if comm.Get_rank() == worker:
                started = time.perf_counter()
                model.compute_gradients(x, y)
                samples.append(time.perf_counter() - started)
        found[batch] = statistics.median(samples[1:]) if samples else 0.0
    value = np.array([found[batch] for batch in BATCHES])
    comm.Bcast(value, root=worker)
    return dict(zip(BATCHES, value.tolist(), strict=True))


class EpochClock(mpinn.Callback):
    """The seconds of the last epoch, from its start to its end (a fit's setup and
    finish, paid once per run, fall outside)."""

    seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started


def training(comm, name: str, strategy_class, make_comm, repeats: int, servers: int) -> dict:
    """Epoch seconds (the slowest rank's) and worker utilisation per mode, in alternating
    order, one fit of one epoch each; the fit's setup and finish are left out."""
    from mpi4py import MPI

    from mpinn.dist import LocalStrategy

    hidden, batch, samples = WORKLOADS[name]
    x, y = make_data(samples)
    rank, workers = comm.Get_rank(), comm.Get_size() - servers
    modes = {"async lock step": {"mode": "async", "staleness": 0},
             "async overlapped": {"mode": "async"}, "sync": {"mode": "sync"}}
    strategies = {mode: timed(strategy_class)(make_comm(), servers=servers, **options)
                  for mode, options in modes.items()}
    models = {mode: mpinn_model((784, *hidden, 10)) for mode in [*modes, "one process"]}
    seconds = {mode: [] for mode in models}
    utilisation = {mode: [] for mode in modes}
    for round_ in range(repeats + 1):
        order = list(models) if round_ % 2 == 0 else list(reversed(models))
        for mode in order:
            strategy, clock = strategies.get(mode), EpochClock()
            comm.Barrier()
            if strategy is not None:
                strategy.waiting = 0.0
                models[mode].fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                 strategy=strategy, callbacks=[clock])
            elif rank == comm.Get_size() - 1:
                models[mode].fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                 strategy=LocalStrategy(), callbacks=[clock])
            elapsed = np.array([clock.seconds])
            comm.Allreduce(MPI.IN_PLACE, elapsed, op=MPI.MAX)
            if round_ == 0:
                continue  # warm-up
            seconds[mode].append(elapsed[0])
            if strategy is not None:
                share = np.array([0.0 if rank < servers else 1 - strategy.waiting / elapsed[0]])
                comm.Allreduce(MPI.IN_PLACE, share)
                utilisation[mode].append(share[0] / workers)
    return {"epoch_seconds": {mode: statistics.median(s) for mode, s in seconds.items()},
            "utilisation": {mode: statistics.median(u) for mode, u in utilisation.items()},
            "sync_claims": strategies["sync"].claims}


def slice_model(size: float):
    """A model of about `size` parameters (784 -> h -> 10), as a server's slice."""
    return mpinn_model((784, max(1, round((size - 10) / 795)), 10))


def worker(repeats: int, names: list[str], servers: int) -> None:
    from mpi4py import MPI
    from mpinn_strategies.ps import ParameterServerStrategy

    from mpinn.dist.comm import MPIComm

    comm = MPI.COMM_WORLD
    results = {}
    for name in names:
        hidden, batch, _ = WORKLOADS[name]
        model = mpinn_model((784, *hidden, 10))

        def measure(model, k=servers):
            return capacity(comm, model, ParameterServerStrategy, lambda: MPIComm(MPI),
                            repeats, k)

        results[name] = {
            "bytes": int(model.params.grad.nbytes),
            "capacity": measure(model),
            "slices": {} if servers > 1 else {
                k: measure(model if k == 1 else slice_model(model.params.size / k), 1)
                for k in SLICES},
            "step_seconds": step_seconds(comm, model, repeats),
            "training": training(comm, name, ParameterServerStrategy, lambda: MPIComm(MPI),
                                 repeats, servers),
        }
    if comm.Get_rank() == 0:
        backend = __import__("mpinn").get_backend("numpy").describe()
        print(json.dumps({"servers": servers, "results": results,
                          "blas": blas_description(), "backend": backend}))


def report(runs: dict[int, dict], names: list[str]) -> None:
    print("\n#### Server capacity (one synthetic pusher)\n")
    print("| workload | servers | measured as | updates/s per server rank | receive ms "
          "| optimizer ms | reply ms |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        rows = []
        for k, run in sorted(runs.items()):
            r = run["results"][name]
            rows.append((k, f"{k + 1} ranks", r["capacity"]))
            rows += [(int(s), f"1 server on a 1/{s} model", c)
                     for s, c in r["slices"].items() if int(s) > 1]
        for k, how, c in sorted(rows, key=lambda row: row[0]):
            print(f"| {name} | {k} | {how} | {c['updates_per_second']:,.0f} | "
                  + " | ".join(f"{c['seconds'][p] * 1e3:.2f}"
                               for p in ("receive", "optimizer", "reply")) + " |")
    single = runs.get(1)
    if single:
        print("\n#### Saturation: workers at which the servers become the bottleneck\n")
        print("capacity(S / k) x push_every x step time; capacity from the 1/k models "
              "above\n")
        print("| workload | servers | push_every | "
              + " | ".join(f"step ms b{b}" for b in BATCHES) + " | "
              + " | ".join(f"workers b{b}" for b in BATCHES) + " |")
        print("|---|---|---|" + "---|" * 2 * len(BATCHES))
        for name in names:
            r = single["results"][name]
            steps = [r["step_seconds"][str(b)] for b in BATCHES]
            for k in SLICES:
                rate = r["slices"][str(k)]["updates_per_second"]
                for every in PUSH_INTERVALS:
                    print(f"| {name} ({r['bytes'] / 1e6:.1f} MB) | {k} | {every} | "
                          + " | ".join(f"{s * 1e3:.1f}" for s in steps) + " | "
                          + " | ".join(f"{rate * every * s:.1f}" for s in steps) + " |")
    print("\n#### Real training, one worker: epoch seconds and worker utilisation\n")
    print("| workload | servers | one process s | sync s | sync / one process "
          "| lock step s (util.) | overlapped s (util.) | sync util. | workers claim lines |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for k, run in sorted(runs.items()):
            t = run["results"][name]["training"]
            s, u = t["epoch_seconds"], t["utilisation"]
            print(f"| {name} | {k} | {s['one process']:.3f} | {s['sync']:.3f} "
                  f"| {s['sync'] / s['one process']:.3f} "
                  f"| {s['async lock step']:.3f} ({u['async lock step']:.2f}) "
                  f"| {s['async overlapped']:.3f} ({u['async overlapped']:.2f}) "
                  f"| {u['sync']:.2f} | {'yes' if t['sync_claims'] else 'no'} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    if args.worker:
        worker(args.repeats, names, int(args.servers))
        return
    runs = {int(k): launch_workers(__file__, int(k) + 1, "--repeats", str(args.repeats),
                                   "--workloads", ",".join(names), "--servers", k)
            for k in args.servers.split(",")}
    first = next(iter(runs.values()))
    print(f"medians of {args.repeats} rounds; 1 BLAS thread per rank; {os.cpu_count()} CPUs "
          f"(more ranks than CPUs oversubscribe); numpy backend: {first['backend']}")
    for line in first["blas"]:  # as the ranks saw it
        print(line)
    report(runs, names)


if __name__ == "__main__":
    main()
