"""Real multi-process jobs: `mpiexec -n K mpinn train ...` through subprocess, each with a
timeout so that a hang fails the test instead of stalling the suite."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _tool(name):
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


MPIEXEC, MPINN = _tool("mpiexec"), _tool("mpinn")


class Run:
    def __init__(self, completed, seconds):
        self.returncode = completed.returncode
        self.stdout, self.stderr = completed.stdout, completed.stderr
        self.seconds = seconds


@pytest.fixture
def launch(tmp_path):
    """launch(ranks, *mpinn_args, env=...) -> Run; ranks=None runs without mpiexec; a
    variable given as None in `env` is unset."""
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or the mpinn command is not installed (pip install -e '.[dev]')")

    def run(ranks, *args, env=None, timeout=120):
        command = [MPINN, *args] if ranks is None else [MPIEXEC, "-n", str(ranks), MPINN, *args]
        environment = {key: value for key, value in
                       {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}.items()
                       if value is not None}
        started = time.monotonic()
        completed = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True,
                                   text=True, timeout=timeout)
        return Run(completed, time.monotonic() - started)

    return run
