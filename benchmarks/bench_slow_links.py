"""Training across slow links: global samples/s of each gradient-exchange mode on two
emulated nodes (tests/emulated_nodes.py, --per-node ranks each) joined by a link shaped
at each rate, side by side in one run, with the bytes each rank sends per step (counted
as ring algorithms send them: ArrayComm.sent_bytes). Needs root. See
benchmarks/README.md.

    python benchmarks/bench_slow_links.py [--rates 1gbit,10gbit] [--epochs 4]
        [--accuracy [digits|mnist]] [--per-node 1] [--mpi mpich|openmpi] [--batch B]

Each mode trains W1 and W2 (bench_engine's workloads, on epochs of --steps global
batches) in one fit; an epoch is timed from its start to its end on rank 0, the first
epoch is left out and the median of the others is reported. With --accuracy, each mode
also trains a job with `mpinn train` to report its final validation accuracy and the
epochs and seconds it took to come within 1 point of allreduce's: the default job
(digits, 30 epochs), or with `--accuracy mnist` an MNIST-sized one (mnist_like.py's
60,000 + 10,000 images, 784-512-512-10, batch 128, 8 epochs, Adam with a cosine decay
to 0, so that the last epoch's accuracy is not one draw of a noisy curve).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT / "tests" / "multinode")]

from bench_engine import WORKLOADS, blas_description, make_data, mpinn_model  # noqa: E402

import mpinn  # noqa: E402

MODES = {  # name: (strategy, options)
    "allreduce": ("allreduce", {"by_node": False}),  # one flat Allreduce
    "allreduce, overlapped": ("allreduce", {"overlap": True}),
    "allreduce, by node": ("allreduce", {"by_node": True}),
    "allreduce, float16": ("allreduce", {"compression": "float16", "by_node": False}),
    "allreduce, bfloat16": ("allreduce", {"compression": "bfloat16", "by_node": False}),
    "allreduce, by node, bfloat16": ("allreduce", {"compression": "bfloat16", "by_node": True}),
    "allreduce, PowerSGD r=4": ("allreduce", {"compression": "powersgd"}),
    "allreduce, PowerSGD r=1": ("allreduce", {"compression": "powersgd", "powersgd_rank": 1}),
    "ps async": ("ps", {}),
    "ps async, bfloat16 pushes": ("ps", {"compression": "bfloat16"}),
    "ps async, float16 pushes": ("ps", {"compression": "float16"}),
    "local SGD, H=4": ("local_sgd", {"sync_every": 4}),
    "local SGD, H=8": ("local_sgd", {"sync_every": 8}),
    "local SGD, H=16": ("local_sgd", {"sync_every": 16}),
    "local SGD, H=8, a replica per node": ("local_sgd", {"sync_every": 8, "replica": "node"}),
    "local SGD, H=8, Nesterov outer step": ("local_sgd", {"sync_every": 8, "outer_lr": 0.7,
                                                          "outer_momentum": 0.9}),
}


# ------------------------------------------------------------------------------- worker
def worker(epochs: int, steps: int, names: list[str], modes: list[str],
           global_batch: int) -> None:
    results, rank = {}, 0
    for name in names:
        hidden, batch = WORKLOADS[name][0], global_batch or WORKLOADS[name][1]
        x, y = make_data(batch * steps)
        for mode in modes:
            strategy_name, options = MODES[mode]
            model = mpinn_model((784, *hidden, 10))
            strategy = mpinn.strategy(strategy_name, **options)
            rank = strategy.rank
            clock = EpochClock(strategy)
            model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, strategy=strategy,
                      callbacks=[clock])
            seconds = statistics.median(clock.seconds[1:])
            sent = sum(clock.sent[1:]) / ((epochs - 1) * steps)
            results.setdefault(name, {})[mode] = {
                "samples_per_second": batch * steps / seconds,
                "bytes_per_step": [json.loads(text) for text in strategy.comm.allgather_bytes(
                    json.dumps(sent).encode())],  # by rank
                "model_bytes": int(model.params.data.nbytes),
                "batch": batch,
            }
    if rank == 0:
        print(json.dumps({"results": results, "blas": blas_description()}))


class EpochClock(mpinn.Callback):
    """Each epoch's seconds, from its start to its end (the fit's setup falls outside), and
    the bytes this rank sent in it."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.seconds: list[float] = []
        self.sent: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.bytes = self.strategy.arrays.sent_bytes
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)
        self.sent.append(self.strategy.arrays.sent_bytes - self.bytes)


# ------------------------------------------------------------------------------- driver
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1gbit,10gbit")
    parser.add_argument("--epochs", type=int, default=4, help="per mode; the first is left out")
    parser.add_argument("--steps", type=int, default=48, help="global batches per epoch")
    parser.add_argument("--batch", type=int, default=0,
                        help="global batch (default: the workload's, bench_engine.WORKLOADS)")
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--modes", default=";".join(MODES), help="names from MODES, by ';'")
    parser.add_argument("--accuracy", nargs="?", const="digits", choices=sorted(JOBS),
                        help="also train this job with each mode (digits: the default job)")
    parser.add_argument("--per-node", type=int, default=1, help="ranks on each of the 2 nodes")
    parser.add_argument("--mpi", choices=("mpich", "openmpi"), default="mpich")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names, modes = args.workloads.split(","), args.modes.split(";")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; known: {'; '.join(MODES)}")
    if args.worker:
        worker(args.epochs, args.steps, names, modes, args.batch)
        return
    from emulated_nodes import Cluster, unavailable
    from launchers import mpich_command, mpich_unavailable, openmpi_command, openmpi_unavailable

    command_for, why = {"mpich": (mpich_command, mpich_unavailable()),
                        "openmpi": (openmpi_command, openmpi_unavailable())}[args.mpi]
    why = unavailable() or why
    if why:
        sys.exit(f"bench_slow_links: {why}")
    found, accuracy, per_node = {}, {}, [args.per_node] * 2
    with Cluster(2) as cluster, tempfile.TemporaryDirectory() as runs:
        job = JOBS[args.accuracy](Path(runs)) if args.accuracy else None
        for rate in args.rates.split(","):
            cluster.shape(rate)
            found[rate] = json.loads(launch(cluster, command_for, per_node, [
                sys.executable, __file__, "--worker", "--epochs", str(args.epochs),
                "--steps", str(args.steps), "--batch", str(args.batch),
                "--workloads", args.workloads,
                "--modes", args.modes]).splitlines()[-1])
            for mode in modes if args.accuracy else []:
                directory = Path(runs) / f"{rate}-{len(accuracy.get(rate, {}))}"
                launch(cluster, command_for, per_node, [
                    str(Path(sys.executable).parent / "mpinn"), "train", *job, "-q",
                    *job_settings(mode, directory)])
                lines = (directory / "metrics.jsonl").read_text().splitlines()
                accuracy.setdefault(rate, {})[mode] = [json.loads(line) for line in lines
                                                       if '"val_accuracy"' in line]
    blas = next(iter(found.values()))["blas"]
    print(f"2 emulated nodes x {args.per_node} rank(s) ({args.mpi}, TCP between nodes); "
          f"epochs of {args.steps} global batches, median of {args.epochs - 1} epochs after "
          "the first")
    print("\n".join(f"- {line}" for line in blas))
    print("| workload | link | mode | global samples/s | / allreduce "
          "| MB sent per step (by rank where they differ) |")
    print("|---|---|---|---|---|---|")
    for rate, result in found.items():
        for name, by_mode in result["results"].items():
            reference = by_mode.get("allreduce", {}).get("samples_per_second")
            for mode, figures in by_mode.items():
                speed = figures["samples_per_second"]
                ratio = f"{speed / reference:.2f}" if reference else "-"
                sent = [f"{value / 1e6:.2f}" for value in figures["bytes_per_step"]]
                print(f"| {name} b{figures['batch']} ({figures['model_bytes'] / 1e6:.1f} MB) "
                      f"| {rate} "
                      f"| {mode} | {speed:,.0f} | {ratio} "
                      f"| {sent[0] if len(set(sent)) == 1 else ' / '.join(sent)} |")
    if accuracy:
        print_accuracy(accuracy, args.accuracy)


def launch(cluster, command_for, per_node: list[int], argv: list[str]) -> str:
    """`argv` on 2 nodes x per_node ranks; its standard output."""
    command, added = command_for(cluster, per_node, argv)
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **added}
    done = cluster.run(cluster.head, command, env=environment, capture_output=True,
                       text=True, timeout=3600)
    if done.returncode:
        sys.exit(f"bench_slow_links: {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


MNIST_JOB = """
[run]
name = "mnist-like"
[data]
dataset = "mnist"
images = "{directory}/train-images-idx3-ubyte"
labels = "{directory}/train-labels-idx1-ubyte"
[data.validation]
images = "{directory}/t10k-images-idx3-ubyte"
labels = "{directory}/t10k-labels-idx1-ubyte"
[model]
layers = [
    {{ type = "dense", units = 512, activation = "relu" }},
    {{ type = "dense", units = 512, activation = "relu" }},
    {{ type = "dense", units = 10, activation = "softmax" }},
]
[training]
epochs = 8
batch_size = 128
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
[optimizer]
name = "adam"
learning_rate = 0.001
schedule = {{ name = "cosine", decay_steps = 3752 }}  # 8 epochs of 469 steps, to 0
"""


def mnist_job(directory: Path) -> list[str]:
    """The MNIST-sized job's file, with its data, in `directory`: `mpinn train` arguments."""
    from mnist_like import write

    write(directory / "mnist-like")
    (directory / "mnist.toml").write_text(MNIST_JOB.format(directory=directory / "mnist-like"))
    return [str(directory / "mnist.toml")]


JOBS = {"digits": lambda directory: [], "mnist": mnist_job}
TITLES = {"digits": "The default job (digits, 30 epochs, batch 32)",
          "mnist": "The MNIST-sized job (mnist_like.py, 784-512-512-10, 8 epochs, batch 128, "
                   "cosine decay)"}


def job_settings(mode: str, directory: Path) -> list[str]:
    """--set arguments that train the job with `mode` into `directory`."""
    strategy, options = MODES[mode]
    settings = {"run.directory": str(directory), "strategy.name": strategy,
                **{f"strategy.{key}": value for key, value in options.items()}}
    return [argument for key, value in settings.items()
            for argument in ("--set", f"{key}={json.dumps(value)}")]


def print_accuracy(accuracy: dict, job: str) -> None:
    print(f"\n{TITLES[job]} on the same links: final validation accuracy, and the epochs "
          "and training seconds to come within 1 point of allreduce's")
    print("| link | mode | final val_accuracy | epochs to reach | seconds to reach | "
          "seconds for all epochs |")
    print("|---|---|---|---|---|---|")
    for rate, by_mode in accuracy.items():
        target = by_mode["allreduce"][-1]["val_accuracy"] - 0.01
        for mode, epochs in by_mode.items():
            seconds = [record["seconds"] for record in epochs]
            reached = next((index for index, record in enumerate(epochs, 1)
                            if record["val_accuracy"] >= target), None)
            to_reach = ("- | -" if reached is None
                        else f"{reached} | {sum(seconds[:reached]):.1f}")
            print(f"| {rate} | {mode} | {epochs[-1]['val_accuracy']:.4f} | {to_reach} | "
                  f"{sum(seconds):.1f} |")


if __name__ == "__main__":
    main()
