"""BLAS and OpenMP threads per rank: each rank gets its share of the cores it runs on, so
that several ranks on one node do not each start one BLAS thread per core (2 ranks with 2
threads each on 2 cores train many times slower than with 1 each).

`plan` decides (a pure function of the environment and the cores), `apply` sets the limit
with threadpoolctl for the rest of the process, `fit_to_node` does both.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_info, threadpool_limits

from .errors import ConfigError, positive_int

# Set by the user or the launcher (torchrun, the job scripts): respected as they are.
# OpenBLAS reads the first three, in this order; the others are MKL's, BLIS's, Accelerate's.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for this rank's BLAS and OpenMP pools (None: leave them as they are), and
    why, in a few words for a run header."""

    threads: "int | None"
    reason: str


@dataclass(frozen=True)
class Cores:
    """The CPUs this process may run on (its affinity), the CPUs of the node it shares
    with the other ranks (its cgroup's cpuset, else every online CPU), and a cgroup CPU
    quota in cores (None: no quota)."""

    affinity: int
    node: int
    quota: "float | None" = None


def plan(local_ranks: int, setting: int = 0, environ=os.environ,
         cores: "Cores | None" = None) -> ThreadPlan:
    """The threads of one of `local_ranks` ranks on a node: as the environment sets them,
    else `setting` (run.threads) when > 0, else its share of the cores."""
    local_ranks = positive_int("threads.plan", "local_ranks", local_ranks)
    if setting < 0:
        raise ConfigError(f"run.threads must be >= 0 (0: fit to the node). "
                          f"Received: run.threads={setting!r}")
    given = [f"{name}={environ[name]}" for name in THREAD_VARIABLES if environ.get(name)]
    if given:
        return ThreadPlan(None, f"{' '.join(given)} in the environment")
    cores = cores or node_cores()
    if setting:
        more = (f", more than the {_many(cores.affinity, 'core')} this rank may use"
                if setting > cores.affinity else "")
        return ThreadPlan(setting, f"run.threads = {setting} in the job{more}")
    # With the node's ranks spread evenly over its CPUs, this rank's CPUs are shared by
    # `sharing` of them: 1 when each is bound to cores of its own, all when none is bound.
    sharing = math.ceil(local_ranks * cores.affinity / max(cores.node, cores.affinity))
    threads = max(1, cores.affinity // sharing)
    ranks = _many(local_ranks, "rank")
    if cores.quota is not None and cores.quota / local_ranks < threads:
        return ThreadPlan(max(1, int(cores.quota / local_ranks)),
                          f"CPU quota of {cores.quota:g} cores / {ranks} on this node")
    owned = _many(cores.affinity, "core")
    if sharing == local_ranks:
        return ThreadPlan(threads, f"{owned} / {ranks} on this node")
    if sharing == 1:
        return ThreadPlan(threads, f"{owned} bound to this rank")
    return ThreadPlan(threads, f"{owned} bound to this rank / {sharing} of the {ranks} on "
                               "this node")


_applied: "int | None" = None  # the threads `apply` last set, or `budget` found


def apply(plan: ThreadPlan) -> None:
    """Limit every BLAS and OpenMP pool loaded in this process to `plan.threads`, for good;
    mpinn's own threaded work (the fused optimizer step) follows it (see `budget`)."""
    global _applied
    if plan.threads is not None:
        threadpool_limits(limits=plan.threads)
        _applied = plan.threads


def budget() -> int:
    """The threads this process computes with: what `apply` set, else the most its BLAS
    pools use as they are (the environment's setting, or one per core)."""
    global _applied
    if _applied is None:  # read once: threadpoolctl takes milliseconds
        _applied = max((pool["num_threads"] for pool in threadpool_info()), default=1)
    return _applied


def fit_to_node(local_ranks: int, setting: int = 0) -> ThreadPlan:
    """Plan this rank's threads and apply the plan; call it before the first BLAS call."""
    chosen = plan(local_ranks, setting)
    apply(chosen)
    return chosen


def node_cores(cgroups: Path = Path("/sys/fs/cgroup"),
               membership: Path = Path("/proc/self/cgroup")) -> Cores:
    """This process's Cores, from its affinity and its cgroup (v1 or v2), where Linux has
    them."""
    online = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else online
    cpusets = [_count_cpus(text) for folder in _cgroup_folders("cpuset", cgroups, membership)
               for name in ("cpuset.cpus.effective", "cpuset.effective_cpus")
               if (text := _read(folder / name))]
    quotas = [quota for folder in _cgroup_folders("cpu", cgroups, membership)
              if (quota := _quota(folder)) is not None]
    return Cores(affinity, cpusets[0] if cpusets else online, min(quotas, default=None))


def _cgroup_folders(controller: str, cgroups: Path, membership: Path) -> list[Path]:
    """The folders of this process's cgroup for `controller` and of its ancestors, deepest
    first (a cgroup's limits are its ancestors' too)."""
    folders = []
    for line in _read(membership).splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:  # v1: one hierarchy per controller (or group of them)
            if controller not in controllers.split(","):
                continue
            root = next((cgroups / name for name in (controllers, controller)
                         if (cgroups / name).is_dir()), None)
            if root is None:
                continue
        else:  # v2: the unified hierarchy
            root = cgroups
        folder = root / path.lstrip("/")
        folders += [p for p in (folder, *folder.parents) if p.is_relative_to(root)
                    and p.is_dir()]
    return folders


def _quota(folder: Path) -> "float | None":
    """The CPU quota in cores set on one cgroup folder (cpu.max, or v1's cfs files)."""
    quota, _, period = _read(folder / "cpu.max").partition(" ")
    if not quota:
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if not quota or quota in ("max", "-1"):
        return None
    return int(quota) / int(period)


def _count_cpus(cpu_list: str) -> int:
    """How many CPUs a cpuset list such as "0-3,8-11" names."""
    count = 0
    for part in cpu_list.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _many(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"
