"""Training throughput (samples/s) of mpinn against a hand-written NumPy step and PyTorch.

Each contender trains the same MLP (ReLU hidden layers, softmax output, sparse
cross-entropy, Adam) on the same seeded random data in the same shuffled batches.
Runs are interleaved (A B C A B C ...) and the median per contender is reported, at each
BLAS thread count. See benchmarks/README.md.

    python benchmarks/bench_engine.py [--quick | --repeats N] [--check]
"""

import argparse
import math
import os
import platform
import statistics
import subprocess
import time
from itertools import pairwise

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import mpinn
from mpinn import threads as mpinn_threads

LR, BETA_1, BETA_2, EPSILON = 1e-3, 0.9, 0.999, 1e-7
INPUTS, CLASSES, SEED = 784, 10, 0
WORKLOADS = {  # name: (hidden widths, batch size, samples per epoch)
    "W1": ((512, 512), 128, 16384),
    "W2": ((2048, 2048), 256, 3072),
}


def epoch_order(seed: int, samples: int, epoch: int) -> np.ndarray:
    """The shuffle mpinn uses (Sequential.epoch_order), so every contender sees its batches."""
    sequence = np.random.SeedSequence(seed, spawn_key=(mpinn.model.SHUFFLE_STREAM, epoch))
    return np.random.default_rng(sequence).permutation(samples)


def make_data(samples: int, seed: int = SEED):
    rng = np.random.default_rng(seed)
    x = rng.random((samples, INPUTS), dtype=np.float32)
    y = rng.integers(0, CLASSES, samples)
    return x, y


# ----------------------------------------------------------------------------- mpinn
def mpinn_model(sizes, seed=SEED, backend="numpy"):
    layers = [mpinn.Dense(sizes[1], "relu", input_shape=(sizes[0],))]
    layers += [mpinn.Dense(width, "relu") for width in sizes[2:-1]]
    layers.append(mpinn.Dense(sizes[-1], "softmax"))
    model = mpinn.Sequential(layers, seed=seed, backend=backend)
    model.compile(mpinn.Adam(LR, BETA_1, BETA_2, EPSILON), "sparse_categorical_crossentropy")
    model.build()
    return model


# ---------------------------------------------------------------------- hand-written
class HandWritten:
    """The same network and Adam step in plain NumPy, allocating nothing per step.

    Parameters, gradients and Adam's m and v each live in one flat float32 buffer, with a
    (kernel, bias) view pair per layer, so Adam is a dozen vectorised in-place operations.
    """

    def __init__(self, sizes, batch, weights):
        shapes = [s for fan_in, fan_out in pairwise(sizes) for s in ((fan_in, fan_out),
                                                                     (fan_out,))]
        total = sum(math.prod(shape) for shape in shapes)
        self.data, self.grad, self.scratch = (np.empty(total, np.float32) for _ in range(3))
        self.m, self.v = np.zeros(total, np.float32), np.zeros(total, np.float32)
        self.params, self.grads = self._views(self.data, shapes), self._views(self.grad, shapes)
        for param, value in zip(self.params, weights, strict=True):
            param[...] = value
        self.t = 0
        widths = sizes[1:]
        self.z = [np.empty((batch, w), np.float32) for w in widths]  # activations, in place
        self.dz = [np.empty((batch, w), np.float32) for w in widths[:-1]]  # hidden dL/dz
        self.mask = [np.empty((batch, w), bool) for w in widths[:-1]]
        self.column = np.empty((batch, 1), np.float32)
        self.ones = np.ones(batch, np.float32)
        self.rows = np.arange(batch)

    @staticmethod
    def _views(flat, shapes):
        views, offset = [], 0
        for shape in shapes:
            size = math.prod(shape)
            views.append(flat[offset:offset + size].reshape(shape))
            offset += size
        return views

    def step(self, x, labels) -> float:
        """One Adam step on a batch; returns the mean loss before the step."""
        loss = self.gradients(x, labels)
        self.adam()
        return loss

    def gradients(self, x, labels, scale: float = 1.0) -> float:
        """Forward and backward: fills `grad` with `scale` times the gradient of the mean
        loss (data parallelism scales by the shard's share); returns the mean loss."""
        n, layers = len(x), len(self.z)
        h = x
        for i in range(layers):  # forward: z = h @ W + b, ReLU in place on hidden layers
            z = self.z[i][:n]
            np.matmul(h, self.params[2 * i], out=z)
            z += self.params[2 * i + 1]
            if i < layers - 1:
                np.maximum(z, 0, out=z)
            h = z
        # softmax cross-entropy, fused: dL/dlogits = scale (p - onehot) / n
        rows, column = self.rows[:n], self.column[:n]
        np.max(h, axis=1, keepdims=True, out=column)
        h -= column
        picked = h[rows, labels]
        np.exp(h, out=h)
        np.sum(h, axis=1, keepdims=True, out=column)
        h /= column
        loss = float(np.log(column).sum() - picked.sum()) / n
        h[rows, labels] -= 1
        h *= scale / n
        delta = h
        for i in range(layers - 1, -1, -1):  # backward; no dL/dx for the first layer
            below = x if i == 0 else self.z[i - 1][:n]
            np.matmul(below.T, delta, out=self.grads[2 * i])
            np.matmul(self.ones[:n], delta, out=self.grads[2 * i + 1])
            if i:
                mask = self.mask[i - 1][:n]
                np.matmul(delta, self.params[2 * i].T, out=self.dz[i - 1][:n])
                np.greater(below, 0, out=mask)
                delta = self.dz[i - 1][:n]
                delta *= mask
        return loss

    def adam(self):
        g, m, v, s = self.grad, self.m, self.v, self.scratch
        self.t += 1
        np.subtract(g, m, out=s)  # m += (1 - b1) (g - m)
        s *= 1 - BETA_1
        m += s
        np.multiply(g, g, out=s)  # v = b2 v + (1 - b2) g^2
        s *= 1 - BETA_2
        v *= BETA_2
        v += s
        # m_hat / (sqrt(v_hat) + eps), with the bias corrections folded into two scalars
        correction_2 = math.sqrt(1 - BETA_2**self.t)
        np.sqrt(v, out=s)
        s += EPSILON * correction_2
        np.divide(m, s, out=s)
        s *= -LR * correction_2 / (1 - BETA_1**self.t)
        self.data += s

    def get_weights(self):
        return [p.copy() for p in self.params]


class HandWrittenRunner:
    def __init__(self, sizes, batch, weights, x, y):
        self.net, self.batch, self.x, self.y = HandWritten(sizes, batch, weights), batch, x, y
        self.x_batch = np.empty((batch, x.shape[1]), x.dtype)

    def epoch(self):
        samples = len(self.x)
        order = epoch_order(SEED, samples, 0)
        for start in range(0, samples, self.batch):
            index = order[start:start + self.batch]
            # mode="clip": the indices are valid, and take's default mode="raise" gathers
            # into a temporary first and then copies it into `out`
            xb = np.take(self.x, index, axis=0, out=self.x_batch[:len(index)], mode="clip")
            self.net.step(xb, self.y[index])


# --------------------------------------------------------------------------- PyTorch
def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class TorchRunner:
    """torch.nn.Sequential of Linear/ReLU, CrossEntropyLoss on the logits, torch Adam, with
    the model and the data on `device`."""

    def __init__(self, torch, sizes, batch, weights, x, y, fused, device="cpu"):
        self.torch, self.batch, self.device = torch, batch, torch.device(device)
        modules = []
        for i, (fan_in, fan_out) in enumerate(pairwise(sizes)):
            linear = torch.nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(weights[2 * i].T.copy()))
                linear.bias.copy_(torch.from_numpy(weights[2 * i + 1]))
            modules += [linear, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*modules[:-1]).to(self.device)  # loss: softmax
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR, betas=(BETA_1, BETA_2),
                                          eps=EPSILON, fused=fused or None)
        self.loss = torch.nn.CrossEntropyLoss()
        self.x, self.y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
        self.x_batch = torch.empty((batch, x.shape[1]), dtype=self.x.dtype, device=self.device)

    def step(self, xb, yb):
        self.optimizer.zero_grad()
        loss = self.loss(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def epoch(self):
        samples = len(self.x)
        order = self.torch.from_numpy(epoch_order(SEED, samples, 0)).to(self.device)
        for start in range(0, samples, self.batch):
            index = order[start:start + self.batch]
            xb = self.torch.index_select(self.x, 0, index, out=self.x_batch[:len(index)])
            self.step(xb, self.y[index])
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def get_weights(self):
        return [w for linear in self.model[::2]
                for w in (linear.weight.detach().cpu().numpy().T,
                          linear.bias.detach().cpu().numpy())]


# ---------------------------------------------------------------------------- checks
def check(torch=None, steps=3):
    """A few steps on a tiny network: mpinn's train_on_batch, the hand-written step (and
    torch) from the same weights must agree to float32 rounding."""
    sizes, batch = (7, 6, 5, 4), 8
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    model = mpinn_model(sizes, seed=3)
    weights = model.get_weights()
    others = {"hand-written": HandWritten(sizes, batch, weights)}
    if torch is not None:
        others["torch"] = TorchRunner(torch, sizes, batch, weights, x, y, fused=False)
    model.compute_gradients(x, y)  # Adam hides a wrong gradient scale: compare gradients too
    gradients = [layer.grads[key].copy() for layer in model.layers for key in layer.weight_order]
    for step in range(steps):
        expected = model.train_on_batch(x, y)
        for name, other in others.items():
            xb, yb = (other.x, other.y) if name == "torch" else (x, y)
            loss = float(other.step(xb, yb))
            assert math.isclose(loss, expected, rel_tol=1e-5), (name, loss, expected)
        if step == 0:
            for got, want in zip(others["hand-written"].grads, gradients, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert epoch_order(SEED, 50, 0).tolist() == mpinn_model(sizes).epoch_order(50, 0).tolist()
    worst = {}
    for name, other in others.items():
        for got, want in zip(other.get_weights(), model.get_weights(), strict=True):
            # Adam moves each weight by about lr per step: compare to a small part of that
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3 * LR, err_msg=name)
            worst[name] = max(worst.get(name, 0.0), float(np.abs(got - want).max()))
    print(f"check: after {steps} Adam steps the weights match mpinn's; largest difference: "
          + ", ".join(f"{name} {diff:.1e}" for name, diff in worst.items()))


# ------------------------------------------------------------------------- benchmark
def contenders(name, torch):
    hidden, batch, samples = WORKLOADS[name]
    sizes = (INPUTS, *hidden, CLASSES)
    x, y = make_data(samples)
    model, unfused = mpinn_model(sizes), mpinn_model(sizes)
    unfused.optimizer.build(unfused.params, fused=False)
    weights = model.get_weights()
    runners = {
        "mpinn": lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True),
        "mpinn unfused": lambda: unfused.fit(x, y, batch_size=batch, epochs=1, verbose=0,
                                             shuffle=True),
        "hand-written": HandWrittenRunner(sizes, batch, weights, x, y).epoch,
    }
    if torch is not None:
        runners["torch"] = TorchRunner(torch, sizes, batch, weights, x, y, False).epoch
        runners["torch fused"] = TorchRunner(torch, sizes, batch, weights, x, y, True).epoch
    return samples, runners


def measure(samples, runners, repeats):
    """samples/s of each runner, a list per runner with one entry per round: one warm-up
    epoch each, then rounds of one timed epoch each, in alternating order (A B C, C B A,
    ...) so that no contender always runs first."""
    for run in runners.values():
        run()
    seconds = {name: [] for name in runners}
    for round_ in range(repeats):
        names = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for name in names:
            start = time.perf_counter()
            runners[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: [samples / s for s in times] for name, times in seconds.items()}


def paired_ratio(ratios) -> str:
    """Median and interquartile range of per-round ratios: the epochs of one round ran
    back to back, so a slow spell of a noisy machine mostly cancels in their ratio."""
    if len(ratios) < 2:
        return f"{ratios[0]:.3f}"
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f} ({low:.3f}-{high:.3f})"


def cpu_seconds():
    """(CPU seconds used by every process on the machine (Linux; else None), by this one)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(field) for field in stat.readline().split()[1:9]]
        machine = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        machine = None
    return machine, sum(os.times()[:2])


def other_load(start, wall):
    """The share of the machine's CPUs that other processes used since `start`."""
    (machine_0, own_0), (machine_1, own_1) = start, cpu_seconds()
    if machine_0 is None:
        return "unknown (no /proc/stat)"
    other = max(0.0, (machine_1 - machine_0) - (own_1 - own_0))
    return f"{other / (wall * os.cpu_count()):.0%} of {os.cpu_count()} CPUs"


def source_state():
    """The git commit of the mpinn being measured, marked dirty when it has local edits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(mpinn.__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "mpinn",
                                "plugins"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"git {commit}" + (", with uncommitted changes" if dirty else "")


def blas_description() -> list[str]:
    """NumPy's BLAS as threadpoolctl sees it now, and every OPENBLAS_* variable."""
    lines = ["BLAS: " + ", ".join(f"{key}={lib.get(key)}" for key in
                                  ("internal_api", "version", "architecture", "num_threads"))
             for lib in threadpool_info() if lib["user_api"] == "blas"]
    env = [f"{key}={value}" for key, value in sorted(os.environ.items())
           if key.startswith("OPENBLAS")]
    return [*lines, "OPENBLAS_* env: " + (", ".join(env) or "(none set)")]


def environment(torch):
    lines = [f"platform: {platform.machine()}, {os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}, NumPy {np.__version__}, mpinn {mpinn.__version__} "
             f"({source_state()})"]
    lines += blas_description()
    if torch is not None:
        lines.append(f"torch {torch.__version__}: num_threads={torch.get_num_threads()}, "
                     f"MKL={torch.backends.mkl.is_available()}, "
                     f"oneDNN={torch.backends.mkldnn.is_available()}")
    else:
        lines.append("torch: not importable, skipped")
    return "\n".join(f"- {line}" for line in lines)


def table(results):
    names = list(next(iter(results.values())))
    ratios = [("mpinn / mpinn unfused", "mpinn unfused"), ("mpinn / hand-written", "hand-written")]
    ratios += [(f"mpinn / {n}", n) for n in names if n.startswith("torch")]
    head = ["workload", *(f"{n} (samples/s)" for n in names), *(r for r, _ in ratios),
            "mpinn / hand-written, paired by round (IQR)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, rates in results.items():
        hidden, batch, _ = WORKLOADS[workload]
        median = {n: statistics.median(r) for n, r in rates.items()}
        cells = [f"{workload} 784-{'-'.join(map(str, hidden))}-10, b{batch}"]
        for n in names:
            spread = (max(rates[n]) - min(rates[n])) / 2 / median[n]
            cells.append(f"{median[n]:,.0f} (±{spread:.1%})")
        cells += [f"{median['mpinn'] / median[other]:.3f}" for _, other in ratios]
        cells.append(paired_ratio([ours / theirs for ours, theirs
                                   in zip(rates["mpinn"], rates["hand-written"], strict=True)]))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def pin(allowed: list[int], threads: int) -> list[int]:
    """Keep this process (every contender alike) on `threads` of its CPUs, so that a
    thread a library starts for its own work runs on those, not on an idle core away
    from the data (numba's pool did: see benchmarks/README.md)."""
    cpus = allowed[:threads] if threads <= len(allowed) else allowed
    os.sched_setaffinity(0, cpus)
    return cpus


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per contender")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--check", action="store_true", help="only run the correctness check")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the scheduler move the process between all its CPUs")
    args = parser.parse_args()
    torch = None if args.no_torch else import_torch()
    check(torch)
    if args.check:
        return
    repeats = 3 if args.quick else args.repeats
    allowed = sorted(os.sched_getaffinity(0))
    for threads in args.threads:
        mpinn_threads.apply(mpinn_threads.ThreadPlan(threads, "benchmark"))  # fused steps too
        pinned = allowed if args.no_pin else pin(allowed, threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            if torch is not None:
                torch.set_num_threads(threads)
            results, start, clock = {}, cpu_seconds(), time.perf_counter()
            for name in args.workloads:
                samples, runners = contenders(name, torch)
                results[name] = measure(samples, runners, repeats)
            load = other_load(start, time.perf_counter() - clock)
            print(f"\n### {threads} BLAS thread(s): median samples/s of {repeats} interleaved "
                  "epochs (± half the range)\n")
            print(environment(torch))
            print(f"- CPUs this process ran on: {pinned}")
            print(f"- other processes used {load} during these runs\n")
            print(table(results))


if __name__ == "__main__":
    main()
