"""Checkpoint save and load time against a raw h5py write/read of the same bytes.
See benchmarks/README.md.

    python benchmarks/bench_checkpoint.py [--repeats N] [--workload W2]

mpinn: `checkpoint.save` of a W2 model with Adam state (about 70 MB: parameters, m, v),
and `checkpoint.read` + `checkpoint.restore` into a model. Two references, the same named
float32 arrays read back into preallocated arrays with `read_direct`:
- "raw, same integrity": plain h5py with what the checkpoint format requires of any
  writer, a Fletcher-32 checksum per dataset and an fsync before close;
- "raw, plain": contiguous datasets, no checksum, no fsync (the floor).
Interleaved, medians, files in one temporary directory.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import WORKLOADS, mpinn_model  # noqa: E402

from mpinn import checkpoint  # noqa: E402


def named_arrays(model) -> dict[str, np.ndarray]:
    arrays = {f"params/{k}": v for k, v in model.params.values.items()}
    for slot, flat in model.optimizer.state().items():
        arrays.update({f"optimizer/{slot}/{k}": v for k, v in model.params.views(flat).items()})
    return arrays


def raw_write(path, arrays, integrity: bool):
    with h5py.File(path, "w") as file:
        for name, value in arrays.items():
            if integrity:
                file.create_dataset(name, data=value, fletcher32=True, chunks=value.shape)
            else:
                file.create_dataset(name, data=value)
        if integrity:
            file.flush()
            os.fsync(file.id.get_vfd_handle())


def raw_read(path, arrays):
    with h5py.File(path, "r") as file:
        for name, value in arrays.items():
            file[name].read_direct(value)


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workload", default="W2", choices=sorted(WORKLOADS))
    args = parser.parse_args()
    hidden, _, _ = WORKLOADS[args.workload]
    model = mpinn_model((784, *hidden, 10))
    model.params.grad[...] = 1e-3
    model.optimizer.apply(model.params)  # non-trivial optimizer state
    arrays = named_arrays(model)
    megabytes = sum(a.nbytes for a in arrays.values()) / 1e6
    kinds = ("mpinn", "same", "plain")
    times = {(op, kind): [] for op in ("save", "load") for kind in kinds}
    with tempfile.TemporaryDirectory(dir=".") as directory:
        paths = {kind: Path(directory) / f"{kind}.h5" for kind in kinds}
        for _ in range(args.repeats):
            times["save", "mpinn"].append(timed(lambda: checkpoint.save(paths["mpinn"], model)))
            for kind in ("same", "plain"):
                times["save", kind].append(
                    timed(lambda k=kind: raw_write(paths[k], arrays, k == "same")))
            times["load", "mpinn"].append(
                timed(lambda: checkpoint.restore(model, checkpoint.read(paths["mpinn"]))))
            for kind in ("same", "plain"):
                times["load", kind].append(timed(lambda k=kind: raw_read(paths[k], arrays)))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"{args.workload}: {megabytes:.1f} MB (parameters + Adam m, v), medians of "
          f"{args.repeats}, files on the current directory's file system")
    print("| operation | mpinn s | raw, same integrity s | mpinn / raw same | raw, plain s "
          "| mpinn / raw plain |")
    print("|---|---|---|---|---|---|")
    for op in ("save", "load"):
        ours, same, plain = (median[op, kind] for kind in kinds)
        print(f"| {op} | {ours:.3f} | {same:.3f} | {ours / same:.2f}x | {plain:.3f} "
              f"| {ours / plain:.2f}x |")


if __name__ == "__main__":
    main()
