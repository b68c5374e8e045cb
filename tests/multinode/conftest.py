"""Real jobs across emulated nodes (tests/emulated_nodes.py): one cluster of two nodes for
the session, removed afterwards, and each test run with MPICH and with Open MPI
(launchers.py). A test skips, saying why, where namespaces cannot be made (not root, no
iproute2) or an MPI is not installed."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from emulated_nodes import Cluster, unavailable

from .launchers import mpich_command, mpich_unavailable, openmpi_command, openmpi_unavailable
from .slurm import slurm_nodes  # noqa: F401 - the session's two-node Slurm (over `cluster`)

MPINN = str(Path(sys.executable).parent / "mpinn")
LAUNCHERS = {"mpich": (mpich_command, mpich_unavailable),
             "openmpi": (openmpi_command, openmpi_unavailable)}


@pytest.fixture(scope="session")
def cluster():
    why = unavailable()
    if why:
        pytest.skip(why)
    with Cluster(2) as made:
        yield made


@pytest.fixture(params=sorted(LAUNCHERS))
def mpi(request) -> str:
    """Each MPI in turn; one that is not installed skips."""
    why = LAUNCHERS[request.param][1]()
    if why:
        pytest.skip(why)
    return request.param


class Job:
    def __init__(self, process: subprocess.Popen):
        self.process, self.started = process, time.monotonic()
        self.returncode = self.stdout = self.stderr = self.seconds = None

    def finish(self, timeout: float = 120) -> "Job":
        try:
            self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.stdout, self.stderr = self.process.communicate()
            raise
        self.returncode, self.seconds = self.process.returncode, time.monotonic() - self.started
        return self


@pytest.fixture
def across(cluster, mpi, tmp_path):
    """across(per_node, *argv, env=...) -> a started Job: argv as per_node[i] ranks on node
    i ([2, 2]: two on each node; [4]: four on the first), launched from the head with the
    test's MPI, in tmp_path; a variable given as None in `env` is unset."""

    def start(per_node, *argv, env=None):
        command, added = LAUNCHERS[mpi][0](cluster, per_node, list(argv))
        environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **added, **(env or {})}
        environment = {key: value for key, value in environment.items() if value is not None}
        return Job(subprocess.Popen(cluster.command(cluster.head, command), cwd=tmp_path,
                                    env=environment, text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE))

    return start
