"""Two emulated nodes (tests/emulated_nodes.py) joined by a shaped link: a raw Allreduce of
23 MB between them against the line-rate bound, and W2 data-parallel throughput
(bench_allreduce's worker), on 2 nodes x 1 rank, at each rate, with each MPI installed.
Needs root. See benchmarks/README.md.

    python benchmarks/bench_nodes.py [--rates 1gbit,10gbit] [--repeats 7]
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "multinode")]

from emulated_nodes import Cluster, unavailable  # noqa: E402 - the test harness
from launchers import (  # noqa: E402
    mpich_command,
    mpich_unavailable,
    openmpi_command,
    openmpi_unavailable,
)

MEGABYTES = 23
PROBE = f"""
import json, sys, time
import numpy as np
from mpi4py import MPI
comm, repeats = MPI.COMM_WORLD, int(sys.argv[1])
buffer = np.ones({MEGABYTES * 10**6 // 4}, np.float32)
times = []
for _ in range(repeats + 2):  # two to warm up
    comm.Barrier()
    started = time.perf_counter()
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
    times.append(time.perf_counter() - started)
if comm.rank == 0:
    print(json.dumps({{"library": MPI.Get_library_version().splitlines()[0].strip("\\0 "),
                      "hosts": comm.allgather(MPI.Get_processor_name()), "ms": times[2:]}}))
else:
    comm.allgather(MPI.Get_processor_name())
"""
MPIS = {"MPICH": (mpich_command, mpich_unavailable),
        "Open MPI": (openmpi_command, openmpi_unavailable)}


def run(cluster, command_for, argv: list[str]) -> str:
    command, added = command_for(cluster, [1, 1], argv)
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **added}
    done = cluster.run(cluster.head, command, env=environment, capture_output=True, text=True,
                       timeout=900, check=True)
    return done.stdout.strip().splitlines()[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1gbit,10gbit")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--w2-repeats", type=int, default=3)
    args = parser.parse_args()
    why = unavailable()
    if why:
        sys.exit(f"bench_nodes: {why}")
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-nodes-{os.getpid()}.py"
    probe.write_text(PROBE)
    rows = []
    try:
        with Cluster(2) as cluster:
            for name, (command_for, missing) in MPIS.items():
                if missing():
                    print(f"{name}: skipped ({missing()})")
                    continue
                for rate in args.rates.split(","):
                    cluster.shape(rate)
                    found = json.loads(run(cluster, command_for, [
                        sys.executable, str(probe), str(args.repeats)]))
                    w2 = json.loads(run(cluster, command_for, [
                        sys.executable, str(ROOT / "benchmarks" / "bench_allreduce.py"),
                        "--worker", "--repeats", str(args.w2_repeats), "--workloads", "W2"]))
                    rows.append((name, rate, found, w2["results"]["W2"]))
    finally:
        probe.unlink(missing_ok=True)
    print(f"2 emulated nodes x 1 rank; Allreduce of {MEGABYTES} MB float32, median of "
          f"{args.repeats}; W2 medians of {args.w2_repeats} epochs")
    print("| MPI | link | Allreduce ms | line-rate bound ms | measured / bound "
          "| W2 samples/s (reference) | W2 exchange ms (raw Allreduce ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, rate, found, w2 in rows:
        measured = statistics.median(found["ms"]) * 1000
        bound = MEGABYTES * 10**6 * 8 / _bits(rate) * 1000
        speeds = w2["samples_per_second"]
        print(f"| {name} | {rate} | {measured:.1f} | {bound:.1f} | {measured / bound:.2f} "
              f"| {speeds['mpinn']:,.0f} ({speeds['reference']:,.0f}) "
              f"| {w2['exchange_seconds'] * 1000:.1f} ({w2['raw_allreduce_seconds'] * 1000:.1f}) |")
    hosts = {tuple(found["hosts"]) for _, _, found, _ in rows}
    print(f"hosts: {sorted(hosts)}; libraries: "
          f"{sorted({found['library'] for _, _, found, _ in rows})}")


def _bits(rate: str) -> float:
    for unit, factor in (("kbit", 1e3), ("mbit", 1e6), ("gbit", 1e9)):
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * factor
    return float(rate)


if __name__ == "__main__":
    main()
