"""BLAS threads per rank: `mpiexec -n 2 mpinn train` of an MNIST-sized job with the
environment as given, against the same with OPENBLAS_NUM_THREADS=1 set by hand. See
benchmarks/README.md.

    python benchmarks/bench_threads.py [--threads env,1] [--rounds 3] [--samples 60000]

Each contender is one `mpinn train` run through the real command line (a job file and
`--set`), in rounds of alternating order (A B, B A, ...); the table has the median of the
last epoch's samples/s (metrics.jsonl: training steps only; the first epoch warms up)
and of the wall time of the whole command, and the ratios to the last contender.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import cpu_seconds, paired_ratio  # noqa: E402

from mpinn.threads import THREAD_VARIABLES, node_cores  # noqa: E402

JOB = """\
[run]
name = "threads"
[data]
dataset = "blobs"             # 784 features, 10 classes: MNIST's shapes
features = 784
centers = 10
spread = 4.0
validation_split = 0.0
[model]
layers = [
    { type = "dense", units = 128, activation = "relu" },
    { type = "dense", units = 10, activation = "softmax" },
]
[training]
batch_size = 32
loss = "sparse_categorical_crossentropy"
[logging]
progress = "none"
"""
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else name


def label(contender: str) -> str:
    return "as given" if contender == "env" else f"OPENBLAS_NUM_THREADS={contender}"


def environment(contender: str) -> dict:
    if contender == "env":
        return dict(os.environ)
    return {**os.environ, "OPENBLAS_NUM_THREADS": contender}


def probe() -> None:
    """In each rank: NumPy's BLAS as the environment left it, and what mpinn.threads plans."""
    from threadpoolctl import threadpool_info

    from mpinn.dist.comm import world
    from mpinn.threads import plan

    comm = world()
    chosen = plan(comm.local_size)
    line = "; ".join(f"{pool['internal_api']} {pool['version']} ({pool.get('architecture')}), "
                     f"threads: {pool['num_threads']}"
                     for pool in threadpool_info() if pool["user_api"] == "blas")
    lines = comm.allgather_bytes(f"rank {comm.rank}: {line}; mpinn.threads plans "
                                 f"{chosen.threads} ({chosen.reason})".encode())
    if comm.rank == 0:
        print("\n".join(line.decode() for line in lines))


def train(contender: str, args, job: Path, run_directory: Path) -> tuple[float, float]:
    """One `mpiexec -n R mpinn train`: (the last epoch's samples/s, wall seconds)."""
    command = [tool("mpiexec"), "-n", str(args.ranks), tool("mpinn"), "train", str(job),
               "--set", f"run.directory={json.dumps(str(run_directory))}",
               "--set", f"data.samples={args.samples}",
               "--set", f"training.epochs={args.epochs}"]
    started = time.perf_counter()
    subprocess.run(command, env=environment(contender), check=True, timeout=3600,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    epochs = (run_directory / "metrics.jsonl").read_text().splitlines()
    return json.loads(epochs[-1])["samples_per_second"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="env,1",
                        help="contenders: env (as given) or N (OPENBLAS_NUM_THREADS=N)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe()
        return
    contenders = args.threads.split(",")
    given = [f"{name}={os.environ[name]}" for name in THREAD_VARIABLES if name in os.environ]
    print(f"mpiexec -n {args.ranks} mpinn train: 784-128-10, {args.samples:,} blobs samples, "
          f"batch 32, {args.epochs} epochs, rounds: {args.rounds}; {node_cores()}; "
          f"thread variables as given: {' '.join(given) or 'none'}")
    for contender in contenders:
        lines = subprocess.run([tool("mpiexec"), "-n", str(args.ranks), sys.executable,
                                __file__, "--probe"], env=environment(contender), check=True,
                               timeout=120, capture_output=True, text=True).stdout
        print(f"{label(contender)}:", *lines.splitlines(), sep="\n  ")
    results = {contender: [] for contender in contenders}
    machine, own = cpu_seconds()[0], sum(os.times()[:4])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "job.toml"
        job.write_text(JOB)
        for round_ in range(args.rounds):
            for contender in contenders[::-1] if round_ % 2 else contenders:
                run_directory = Path(folder) / f"run-{round_}-{contender}"
                results[contender].append(train(contender, args, job, run_directory))
                rate, wall = results[contender][-1]
                print(f"  round {round_ + 1}, {label(contender)}: {rate:,.0f} samples/s, "
                      f"{wall:.1f} s", flush=True)
    if machine is not None:
        other = (cpu_seconds()[0] - machine) - (sum(os.times()[:4]) - own)
        print(f"other processes used {max(0.0, other) / (time.perf_counter() - started):.2f}"
              f" of {os.cpu_count()} CPUs during the runs")
    reference = contenders[-1]
    print(f"| contender | samples/s, median (min-max) | wall s, median | {label(reference)} "
          "/ this, samples/s: medians; per round (IQR) |")
    print("|---|---|---|---|")
    best = statistics.median(rate for rate, _ in results[reference])
    for contender, runs in results.items():
        rates, walls = [rate for rate, _ in runs], [wall for _, wall in runs]
        ratios = [theirs / ours for (ours, _), (theirs, _)
                  in zip(runs, results[reference], strict=True)]
        print(f"| {label(contender)} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-"
              f"{max(rates):,.0f}) | {statistics.median(walls):.1f} | "
              f"{best / statistics.median(rates):.2f}x; {paired_ratio(ratios)} |")


if __name__ == "__main__":
    main()
