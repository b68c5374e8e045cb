"""allreduce's reproducible mode against the default one: W1 and W2 throughput at 1 and
2 ranks, side by side in one run, and the fixed-point sum's error on real gradients. See
benchmarks/README.md.

    python benchmarks/bench_reproducible.py [--ranks 1,2] [--repeats 5] [--chunks 4]

The driver launches `mpiexec -n K` (1 BLAS thread per rank) for each K of --ranks; each
rank trains each workload one epoch at a time, the default mode and the reproducible one
in turn (A B, B A, ...), chunk_size = the workload's batch / --chunks (so that up to
--chunks ranks share a step). The first epoch of each is left out; medians of the rest.
"""

import argparse
import json
import math
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

import mpinn  # noqa: E402


class EpochClock(mpinn.Callback):
    def __init__(self):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def worker(repeats: int, chunks: int, names: list[str]) -> None:
    results = {}
    for name in names:
        hidden, batch, samples = WORKLOADS[name]
        x, y = make_data(samples)
        modes = {"default": {}, "reproducible": {"reproducible": True,
                                                 "chunk_size": batch // chunks}}
        clocks = {mode: EpochClock() for mode in modes}
        models = {mode: mpinn_model((784, *hidden, 10)) for mode in modes}
        strategies = {mode: mpinn.strategy("allreduce", **options)
                      for mode, options in modes.items()}
        for round_ in range(repeats + 1):
            for mode in (list(modes) if round_ % 2 == 0 else list(reversed(modes))):
                models[mode].fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                 strategy=strategies[mode], callbacks=[clocks[mode]])
        rate = {mode: samples / statistics.median(clock.seconds[1:])
                for mode, clock in clocks.items()}
        results[name] = {"samples_per_second": rate, "error": sum_error(name, chunks)}
    if mpinn.world().rank == 0:
        print(json.dumps({"results": results, "blas": blas_description()}))


def sum_error(name: str, chunks: int) -> dict:
    """One global batch's gradient in `chunks` chunks: the fixed-point sum's largest error
    against the float64 sum of the chunk gradients, relative to the largest magnitude, and
    plain float32 sums' (in chunk order), for comparison."""
    from mpinn_strategies.reproducible import INTEGER_BITS, ArrayFixedPoint, largest

    hidden, batch, _ = WORKLOADS[name]
    x, y = make_data(batch, seed=1)
    model = mpinn_model((784, *hidden, 10))
    size = batch // chunks
    gradients = []
    for start in range(0, batch, size):
        model.compute_gradients(x[start:start + size], y[start:start + size], size / batch)
        gradients.append(model.params.grad.copy())
    exact = np.sum(np.array(gradients, np.float64), axis=0)
    limit = 2.0**INTEGER_BITS / chunks
    exponent = math.floor(math.log2(limit / max(largest(g) for g in gradients))) - 1
    passes, total = ArrayFixedPoint(np), np.zeros(exact.size, np.int64)
    for gradient in gradients:
        passes.accumulate(gradient, 2.0**exponent, total, limit)
    fixed = total.astype(np.float64) * 2.0**-exponent
    scale = float(np.abs(exact).max())
    return {"fixed_point": float(np.abs(fixed - exact).max()) / scale,
            "fixed_point_float32": float(np.abs(fixed.astype(np.float32) - exact).max()) / scale,
            "float32": float(np.abs(sum(gradients) - exact).max()) / scale}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.workloads.split(",")
    if args.worker:
        worker(args.repeats, args.chunks, names)
        return
    runs = {int(k): launch_workers(__file__, int(k), "--repeats", str(args.repeats),
                                   "--chunks", str(args.chunks), "--workloads", ",".join(names))
            for k in args.ranks.split(",")}
    print(f"medians of {args.repeats} epochs; 1 BLAS thread per rank; {os.cpu_count()} CPUs; "
          f"chunk_size = batch / {args.chunks}")
    for line in next(iter(runs.values()))["blas"]:
        print(line)
    print("\n| workload | ranks | default samples/s | reproducible samples/s | reproducible / "
          "default |")
    print("|---|---|---|---|---|")
    for name in names:
        for ranks, run in sorted(runs.items()):
            rate = run["results"][name]["samples_per_second"]
            print(f"| {name} | {ranks} | {rate['default']:,.0f} | {rate['reproducible']:,.0f} "
                  f"| {rate['reproducible'] / rate['default']:.3f} |")
    print("\n| workload | fixed point vs float64 (before rounding) | after rounding to float32 "
          "| float32 sum in chunk order |")
    print("|---|---|---|---|")
    for name in names:
        error = next(iter(runs.values()))["results"][name]["error"]
        print(f"| {name} | {error['fixed_point']:.2e} | {error['fixed_point_float32']:.2e} "
              f"| {error['float32']:.2e} |")
    print("\nerrors: the largest over the buffer, relative to its largest magnitude")


if __name__ == "__main__":
    main()
