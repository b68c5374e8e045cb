"""Data-parallel throughput: mpinn's allreduce strategy against a hand-written NumPy +
mpi4py reference, on 1 and 2 ranks, and mpinn's gradient exchange against a raw
Allreduce of the same bytes. See benchmarks/README.md.

    python benchmarks/bench_allreduce.py [--repeats N] [--ranks 1,2]

The driver launches `mpiexec -n K` workers (1 BLAS thread per rank); each worker times
mpinn and the reference interleaved, in the same processes, and rank 0 reports medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import (  # noqa: E402 - the shared workloads and the hand-written step
    SEED,
    WORKLOADS,
    HandWritten,
    blas_description,
    epoch_order,
    make_data,
    mpinn_model,
    paired_ratio,
)

EXCHANGE_CALLS = 30


# ------------------------------------------------------------------------------- worker
class ReferenceRunner:
    """Hand-written data parallelism: shard each global batch, gradients scaled by the
    shard's share, one Allreduce(IN_PLACE) on the flat gradient buffer, the same Adam."""

    def __init__(self, comm, sizes, batch, weights, x, y):
        from mpi4py import MPI

        self.comm, self.sum, self.in_place = comm, MPI.SUM, MPI.IN_PLACE
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.net = HandWritten(sizes, batch, weights)
        self.batch, self.x, self.y = batch, x, y
        self.x_batch = np.empty((batch, x.shape[1]), x.dtype)

    def epoch(self):
        samples = len(self.x)
        order = epoch_order(SEED, samples, 0)
        for start in range(0, samples, self.batch):
            count = min(self.batch, samples - start)
            low = start + count * self.rank // self.size
            high = start + count * (self.rank + 1) // self.size
            index = order[low:high]
            xb = np.take(self.x, index, axis=0, out=self.x_batch[:len(index)], mode="clip")
            self.net.gradients(xb, self.y[index], scale=len(index) / count)
            self.comm.Allreduce(self.in_place, self.net.grad, op=self.sum)
            self.net.adam()


class MpinnRunner:
    def __init__(self, comm, sizes, batch, x, y):
        from mpi4py import MPI
        from mpinn_strategies.allreduce import AllreduceStrategy

        from mpinn.dist.comm import MPIComm

        self.model = mpinn_model(sizes)
        self.strategy = AllreduceStrategy(MPIComm(MPI))
        self.batch, self.x, self.y = batch, x, y

    def epoch(self):
        self.model.fit(self.x, self.y, batch_size=self.batch, epochs=1, verbose=0,
                       strategy=self.strategy)


def timed_epoch(comm, runner) -> float:
    comm.Barrier()
    started = time.perf_counter()
    runner.epoch()
    comm.Barrier()
    return time.perf_counter() - started


def exchange_times(comm, runner: MpinnRunner) -> tuple[float, float]:
    """Median seconds of mpinn's exchange and of a raw Allreduce(IN_PLACE), same bytes."""
    from mpi4py import MPI

    model, strategy = runner.model, runner.strategy
    raw = np.ones_like(model.params.grad)
    ours, theirs = [], []
    for _ in range(EXCHANGE_CALLS):
        for sink, call in ((ours, lambda: strategy.exchange(model)),
                           (theirs, lambda: comm.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM))):
            comm.Barrier()
            started = time.perf_counter()
            call()
            sink.append(time.perf_counter() - started)
    return statistics.median(ours), statistics.median(theirs)


def worker(repeats: int, names: list[str]) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    results = {}
    for name in names:
        hidden, batch, samples = WORKLOADS[name]
        sizes = (784, *hidden, 10)
        x, y = make_data(samples)
        mpinn_runner = MpinnRunner(comm, sizes, batch, x, y)
        reference = ReferenceRunner(comm, sizes, batch, mpinn_runner.model.get_weights(), x, y)
        runners = {"mpinn": mpinn_runner, "reference": reference}
        seconds = {key: [] for key in runners}
        for runner in runners.values():  # warm-up
            timed_epoch(comm, runner)
        for round_ in range(repeats):  # alternating order: neither always runs first
            keys = list(runners) if round_ % 2 == 0 else list(reversed(runners))
            for key in keys:
                seconds[key].append(timed_epoch(comm, runners[key]))
        ours, raw = exchange_times(comm, mpinn_runner)
        results[name] = {
            "samples_per_second": {k: samples / statistics.median(v) for k, v in seconds.items()},
            "ratios_by_round": [theirs / ours for ours, theirs
                                in zip(seconds["mpinn"], seconds["reference"], strict=True)],
            "exchange_seconds": ours, "raw_allreduce_seconds": raw,
            "bytes": int(mpinn_runner.model.params.grad.nbytes),
        }
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "results": results,
                          "blas": blas_description()}))


# ------------------------------------------------------------------------------- driver
def launch_workers(script: str, ranks: int, *arguments: str) -> dict:
    """Run `script --worker ARGUMENTS` on `ranks` MPI ranks (one BLAS thread each) and
    return the JSON object rank 0 printed last."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    command = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(ranks),
               sys.executable, script, "--worker", *arguments]
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    output = subprocess.run(command, env=environment, capture_output=True, text=True,
                            check=True, timeout=1800).stdout
    return json.loads(output.strip().splitlines()[-1])


def report(runs: dict[int, dict], names: list[str]) -> None:
    print("| workload | ranks | mpinn samples/s | reference samples/s | mpinn / reference "
          "| mpinn / reference, paired by round (IQR) "
          "| scaling efficiency mpinn (reference) | exchange ms (raw Allreduce ms) "
          "| exchange vs raw |")
    print("|---|---|---|---|---|---|---|---|---|")
    single = runs.get(1)
    for name in names:
        for ranks, run in sorted(runs.items()):
            result = run["results"][name]
            ours, theirs = (result["samples_per_second"][k] for k in ("mpinn", "reference"))
            efficiency = "-"
            if single and ranks > 1:
                base = single["results"][name]["samples_per_second"]
                efficiency = (f"{ours / (ranks * base['mpinn']):.2f} "
                              f"({theirs / (ranks * base['reference']):.2f})")
            exchange = "-"
            ratio = "-"
            if ranks > 1:
                exchange = (f"{result['exchange_seconds'] * 1e3:.2f} "
                            f"({result['raw_allreduce_seconds'] * 1e3:.2f})")
                ratio = f"{result['raw_allreduce_seconds'] / result['exchange_seconds']:.2f}x"
            print(f"| {name} ({result['bytes'] / 1e6:.1f} MB grads) | {ranks} | {ours:,.0f} "
                  f"| {theirs:,.0f} | {ours / theirs:.3f} "
                  f"| {paired_ratio(result['ratios_by_round'])} "
                  f"| {efficiency} | {exchange} | {ratio} |")


def drive(script: str, description: str, worker, report, repeats: int = 5) -> None:
    """The command line of an MPI benchmark: `--worker` runs `worker(repeats, names)` in
    a rank; otherwise launch the workers on each rank count and `report(runs, names)`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    if args.worker:
        worker(args.repeats, names)
        return
    runs = {int(k): launch_workers(script, int(k), "--repeats", str(args.repeats),
                                   "--workloads", ",".join(names))
            for k in args.ranks.split(",")}
    print(f"medians of {args.repeats} epochs each; 1 BLAS thread per rank")
    for line in next(iter(runs.values()))["blas"]:  # as the ranks saw it
        print(line)
    report(runs, names)


if __name__ == "__main__":
    drive(__file__, __doc__.splitlines()[0], worker, report)
