"""allreduce's reproducible mode against the default one: W1 and W2 throughput at 1 and
2 ranks, side by side in one run, the fixed-point sum's error on real gradients, and the
default job's accuracy in both modes. See benchmarks/README.md.

    python benchmarks/bench_reproducible.py [--ranks 1,2] [--repeats 5] [--chunks 4]
                                            [--seeds 5]

The driver launches `mpiexec -n K` (1 BLAS thread per rank) for each K of --ranks; each
rank trains each workload one epoch at a time, the default mode and the reproducible one
in turn (A B, B A, ...), chunk_size = the workload's batch / --chunks (so that up to
--chunks ranks share a step). The first epoch of each is left out; medians of the rest.
Then `mpinn train` runs the default job (digits, 30 epochs) on the largest K, in both
modes, for each run.seed of 0 .. --seeds - 1: its last validation accuracy.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
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
        exact = {"reproducible": True, "chunk_size": batch // chunks}
        modes = {("allreduce", "default"): ("allreduce", {}),
                 ("allreduce", "reproducible"): ("allreduce", exact)}
        if mpinn.world().size > 1:  # sync ps: rank 0 serves, the others train
            modes[("ps", "default")] = ("ps", {"mode": "sync"})
            modes[("ps", "reproducible")] = ("ps", {"mode": "sync", **exact})
        clocks = {mode: EpochClock() for mode in modes}
        models = {mode: mpinn_model((784, *hidden, 10)) for mode in modes}
        strategies = {mode: mpinn.strategy(strategy, **options)
                      for mode, (strategy, options) in modes.items()}
        for round_ in range(repeats + 1):
            for mode in (list(modes) if round_ % 2 == 0 else list(reversed(modes))):
                models[mode].fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                 strategy=strategies[mode], callbacks=[clocks[mode]])
        rate = {" ".join(mode): samples / statistics.median(clock.seconds[1:])
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
    total = np.empty(exact.size, np.int64)
    ArrayFixedPoint(np).accumulate(np.array(gradients), 2.0**exponent, total, limit, True)
    fixed = total.astype(np.float64) * 2.0**-exponent
    scale = float(np.abs(exact).max())
    return {"fixed_point": float(np.abs(fixed - exact).max()) / scale,
            "fixed_point_float32": float(np.abs(fixed.astype(np.float32) - exact).max()) / scale,
            "float32": float(np.abs(sum(gradients) - exact).max()) / scale}


def default_job_accuracy(ranks: int, seeds: int) -> dict:
    """The default job's last val_accuracy for each seed, in each mode (the CLI's run)."""
    from mpinn import checkpoint

    mpiexec = Path(sys.executable).parent / "mpiexec"
    modes = {"default": [], "reproducible": ["--set", "strategy.reproducible=true"]}
    found = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(seeds):
            for mode, settings in modes.items():
                directory = Path(scratch) / f"{mode}-{seed}"
                subprocess.run([str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpinn",
                                "train", "-q", "--set", f"run.seed={seed}", "--set",
                                f"run.directory='{directory}'", *settings],
                               check=True, timeout=600, capture_output=True)
                history = checkpoint.read(directory / "final.h5").history
                found[mode].append(history["val_accuracy"][-1])
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--seeds", type=int, default=5)
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
    print("\n| workload | ranks | strategy | default samples/s | reproducible samples/s "
          "| reproducible / default |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for ranks, run in sorted(runs.items()):
            rate = run["results"][name]["samples_per_second"]
            for strategy in ("allreduce", "ps"):
                if f"{strategy} default" in rate:
                    default, exact = rate[f"{strategy} default"], rate[f"{strategy} reproducible"]
                    shown = "ps sync" if strategy == "ps" else strategy
                    print(f"| {name} | {ranks} | {shown} | {default:,.0f} | {exact:,.0f} "
                          f"| {exact / default:.3f} |")
    print("\n| workload | fixed point vs float64 (before rounding) | after rounding to float32 "
          "| float32 sum in chunk order |")
    print("|---|---|---|---|")
    for name in names:
        error = next(iter(runs.values()))["results"][name]["error"]
        print(f"| {name} | {error['fixed_point']:.2e} | {error['fixed_point_float32']:.2e} "
              f"| {error['float32']:.2e} |")
    print("\nerrors: the largest over the buffer, relative to its largest magnitude")
    if args.seeds:
        ranks = max(runs)
        accuracy = default_job_accuracy(ranks, args.seeds)
        print(f"\nthe default job (digits, 30 epochs) on {ranks} rank(s), last val_accuracy "
              f"for run.seed 0..{args.seeds - 1}:\n")
        print("| mode | per seed | mean | stdev |")
        print("|---|---|---|---|")
        for mode, values in accuracy.items():
            print(f"| {mode} | {' '.join(f'{v:.4f}' for v in values)} | "
                  f"{statistics.mean(values):.4f} | {statistics.pstdev(values):.4f} |")


if __name__ == "__main__":
    main()
