"""Training throughput (samples/s) of mpinn on a backend against PyTorch on the same device.

The engine benchmark's W2 network (784-2048-2048-10, ReLU, softmax with sparse
cross-entropy, Adam) with a batch of 4096 by default: `--backend cupy` runs mpinn on the
GPU against PyTorch on CUDA, `--backend numpy` against PyTorch on the CPU. Both start
from the same weights, train on data already in device memory in the same shuffled
batches, and an epoch ends when its work is done on the device (mpinn reads every step's
loss; PyTorch synchronises at the end). fp32 math on both: TF32 stays off unless the
environment turns it on (CUPY_TF32, torch's matmul precision), and the script says which.

    python benchmarks/bench_backend.py --backend cupy [--batch 4096] [--repeats 7]
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np
from bench_engine import (  # the shared network, data and timing
    CLASSES,
    INPUTS,
    TorchRunner,
    import_torch,
    make_data,
    measure,
    mpinn_model,
    paired_ratio,
    source_state,
)

import mpinn

HIDDEN = (2048, 2048)


def check(backend, torch, device, steps=3):
    """A few steps from the same weights: the losses must agree to float32 rounding."""
    sizes, batch = (INPUTS, 64, 32, CLASSES), 128
    x, y = make_data(batch, seed=5)
    model = mpinn_model(sizes, seed=3, backend=backend)
    other = TorchRunner(torch, sizes, batch, model.get_weights(), x, y, False, device)
    for _ in range(steps):
        ours, theirs = model.train_on_batch(x, y), float(other.step(other.x, other.y))
        assert abs(ours - theirs) <= 1e-4 * abs(theirs), (ours, theirs)
    worst = max(float(np.abs(a - b).max())
                for a, b in zip(model.get_weights(), other.get_weights(), strict=True))
    print(f"check: {steps} Adam steps on {backend} and torch {device} agree (losses within "
          f"1e-4, largest weight difference {worst:.1e})")


def contenders(backend, torch, device, batch, samples):
    sizes = (INPUTS, *HIDDEN, CLASSES)
    x, y = make_data(samples)
    model = mpinn_model(sizes, backend=backend)
    x_on, y_on = model.backend.asarray(x), model.backend.asarray(y)
    runners = {
        f"mpinn {backend}": lambda: model.fit(x_on, y_on, batch_size=batch, epochs=1,
                                              verbose=0, shuffle=True),
        f"torch {device}": TorchRunner(torch, sizes, batch, model.get_weights(), x, y, False,
                                       device).epoch,
        f"torch {device} fused Adam": TorchRunner(torch, sizes, batch, model.get_weights(), x,
                                                  y, True, device).epoch,
    }
    return runners


def environment(backend, torch, device) -> list[str]:
    lines = [f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}, NumPy {np.__version__}, mpinn {mpinn.__version__} "
             f"({source_state()}), torch {torch.__version__}"]
    if device == "cuda":
        import cupy

        lines.append(f"GPU: {torch.cuda.get_device_name()}, CuPy {cupy.__version__}, CUDA "
                     f"runtime {cupy.cuda.runtime.runtimeGetVersion()}, CUPY_TF32="
                     f"{os.environ.get('CUPY_TF32', '(unset)')}, torch allow_tf32="
                     f"{torch.backends.cuda.matmul.allow_tf32}")
    else:
        lines.append(f"torch num_threads={torch.get_num_threads()}; OPENBLAS_* env: " + (
            ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                      if k.startswith("OPENBLAS")) or "(none set)"))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cupy", choices=("cupy", "numpy"))
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=16, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per contender")
    args = parser.parse_args()
    torch = import_torch()
    if torch is None:
        raise SystemExit("PyTorch is not importable: it is the reference here")
    device = "cuda" if args.backend == "cupy" else "cpu"
    check(args.backend, torch, device)
    samples = args.batch * args.steps
    runners = contenders(args.backend, torch, device, args.batch, samples)
    started = time.perf_counter()
    rates = measure(samples, runners, args.repeats)
    print(f"\n### W2 784-{'-'.join(map(str, HIDDEN))}-10, batch {args.batch}, {samples} "
          f"samples per epoch: median samples/s of {args.repeats} epochs in alternating "
          f"order ({time.perf_counter() - started:.0f} s)\n")
    for line in environment(args.backend, torch, device):
        print(f"- {line}")
    ours = rates[f"mpinn {args.backend}"]
    print("\n| contender | samples/s | mpinn / contender | paired by round (IQR) |")
    print("|---|---|---|---|")
    for name, rate in rates.items():
        ratio = statistics.median(ours) / statistics.median(rate)
        paired = paired_ratio([a / b for a, b in zip(ours, rate, strict=True)])
        print(f"| {name} | {statistics.median(rate):,.0f} | {ratio:.3f} | {paired} |")


if __name__ == "__main__":
    main()
