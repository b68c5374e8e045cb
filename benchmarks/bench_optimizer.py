"""One optimizer step over a model's flat buffers: mpinn's fused kernel against its chain of
array operations (the reference) and PyTorch's Adam (default, foreach and fused), side by
side, for the parameter counts of bench_engine's W1 and W2. See benchmarks/README.md.

    python benchmarks/bench_optimizer.py [--threads 1 2] [--repeats N] [--optimizers ...]

Each contender runs its step on the same gradient, in rounds (A B C, C B A, ...); the
table gives the median milliseconds per step and the chain's time over each contender's.
"""

import argparse
import os
import statistics
from itertools import pairwise

import numpy as np
from bench_engine import WORKLOADS, blas_description, import_torch, measure, pin
from threadpoolctl import threadpool_limits

import mpinn
from mpinn import threads
from mpinn.parameters import FlatParameters

INPUTS, CLASSES = 784, 10
OPTIMIZERS = {
    "adam": lambda: mpinn.Adam(1e-3, epsilon=1e-7),
    "adamw": lambda: mpinn.AdamW(1e-3, weight_decay=0.004, epsilon=1e-7),
    "sgd momentum": lambda: mpinn.SGD(0.01, momentum=0.9),
    "rmsprop": lambda: mpinn.RMSprop(1e-3),
    "adagrad": lambda: mpinn.Adagrad(1e-3),
}


def parameter_count(hidden) -> int:
    sizes = (INPUTS, *hidden, CLASSES)
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in pairwise(sizes))


def contenders(name, size, torch):
    rng = np.random.default_rng(1)
    gradient = (rng.normal(size=size) * 1e-3).astype(np.float32)
    runners = {}
    for label, fused in (("mpinn chain", False), ("mpinn fused", True)):
        params = FlatParameters({"w": (size,)}, np.float32, mpinn.get_backend("numpy"))
        params.data[...] = rng.normal(size=size)
        optimizer = OPTIMIZERS[name]()
        optimizer.build(params, fused=fused)
        scratch = np.empty_like(gradient)

        def step(optimizer=optimizer, params=params, scratch=scratch):
            np.copyto(scratch, gradient)  # the chain consumes its gradient; so both copy
            optimizer.apply(params, grad=scratch)
        runners[label] = step
    if torch is not None and name in ("adam", "adamw"):
        for label, options in (("torch", {"foreach": False}), ("torch foreach", {"foreach": True}),
                               ("torch fused", {"fused": True})):
            parameter = torch.nn.Parameter(torch.from_numpy(rng.normal(size=size)
                                                            .astype(np.float32)))
            parameter.grad = torch.from_numpy(gradient.copy())
            kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
            extra = {"weight_decay": 0.004} if name == "adamw" else {}
            optimizer = kind([parameter], lr=1e-3, eps=1e-7, **extra, **options)
            scratch = torch.empty_like(parameter.grad)
            source = torch.from_numpy(gradient)

            def step(optimizer=optimizer, scratch=scratch, source=source):
                scratch.copy_(source)  # the same copy as mpinn's, for a fair comparison
                optimizer.step()
            runners[label] = step
    return runners


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=51)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    torch = None if args.no_torch else import_torch()
    print(f"mpinn backend: {mpinn.get_backend('numpy').describe()}")
    for line in blas_description():
        print(line)
    allowed = sorted(os.sched_getaffinity(0))
    for count in args.threads:
        threads.apply(threads.ThreadPlan(count, "benchmark"))
        cpus = pin(allowed, count)
        with threadpool_limits(limits=count):
            if torch is not None:
                torch.set_num_threads(count)
            print(f"\n### {count} thread(s) on CPUs {cpus}: median ms per step of "
                  f"{args.repeats} rounds\n")
            print("| workload | optimizer | contender | ms per step | chain / contender |")
            print("|---|---|---|---|---|")
            for workload, (hidden, _, _) in WORKLOADS.items():
                size = parameter_count(hidden)
                for name in args.optimizers:
                    rates = measure(1, contenders(name, size, torch), args.repeats)
                    found = {label: 1 / statistics.median(r) for label, r in rates.items()}
                    for label, seconds in found.items():
                        print(f"| {workload} ({size * 4 / 1e6:.1f} MB) | {name} | {label} "
                              f"| {seconds * 1e3:.3f} | {found['mpinn chain'] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
