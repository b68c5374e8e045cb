"""One process trains where mpi4py cannot load an MPI library (a world of one)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

MPINN = Path(sys.executable).parent / "mpinn"
BROKEN_MPI = {"MPI4PY_LIBMPI": "/nonexistent/libmpi.so.12"}  # mpi4py fails to load MPI


def run(args, cwd, env):
    if not MPINN.exists():
        pytest.skip("the mpinn command is not installed (pip install -e '.[dev]')")
    return subprocess.run([str(MPINN), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_train_and_info_without_a_loadable_mpi_library(tmp_path):
    info = run(["info"], tmp_path, BROKEN_MPI)
    assert info.returncode == 0, info.stderr
    assert "MPI: none (mpi4py unavailable: cannot load MPI library" in info.stdout
    trained = run(["train", "--set", "training.epochs=1"], tmp_path, BROKEN_MPI)
    assert trained.returncode == 0, trained.stderr
    assert "on 1 rank(s)" in trained.stdout
    assert (tmp_path / "runs/digits/final.h5").exists()


def test_a_launched_rank_without_mpi_refuses_to_train_alone(tmp_path):
    result = run(["train"], tmp_path, {**BROKEN_MPI, "PMI_SIZE": "4"})
    assert result.returncode == 2
    assert "launched as one of 4 processes, but mpi4py cannot load an MPI library" in (
        result.stderr)
