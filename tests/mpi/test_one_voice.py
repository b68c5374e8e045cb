"""Under mpirun a message every rank agrees on prints once: `mpinn info` gathers one table
of the ranks, and each rank's BLAS threads fit the node unless the environment says so."""

import os
import re

import numpy as np
import pytest

from mpinn.data import load_digits

CORES = len(os.sched_getaffinity(0))
FITTED = f"{max(1, CORES // 2)} ({CORES} cores / 2 ranks on this node)"


@pytest.mark.parametrize("environment, threads", [
    ({}, re.escape(FITTED)),
    ({"OPENBLAS_NUM_THREADS": "2"}, r"2 \(OPENBLAS_NUM_THREADS=2 in the environment\)")])
def test_info_prints_one_table_of_the_ranks(launch, environment, threads):
    shown = launch(2, "info", env={"OPENBLAS_NUM_THREADS": None, **environment})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert sum(line.startswith("mpinn ") for line in lines) == 1
    header = lines.index(next(line for line in lines if line.startswith("rank  host")))
    assert len(lines) == header + 3 and "; 2 rank(s)" in shown.stdout
    for rank, line in enumerate(lines[header + 1:]):
        assert re.fullmatch(rf"{rank}\s+\S+\s+{rank}\s+host\s+{threads}", line), line


def test_training_fits_blas_threads_to_the_node_and_says_so(tmp_path, launch):
    trained = launch(2, "train", "--set", "training.epochs=1", "--set",
                     f"run.directory='{tmp_path / 'run'}'", env={"OPENBLAS_NUM_THREADS": None})
    assert trained.returncode == 0, trained.stderr
    threads = max(1, CORES // 2)
    assert (f"2 rank(s), allreduce, numpy backend (host); {threads} BLAS thread"
            f"{'s' * (threads > 1)} per rank ({CORES} cores / 2 ranks on this node)"
            ) in trained.stdout.splitlines()[0]


def test_raw_pixels_get_one_note_naming_the_rescale_layer(tmp_path, launch):
    digits = load_digits()
    np.savez(tmp_path / "pixels.npz", x=(digits.x * 255).astype(np.uint8), y=digits.y)
    trained = launch(2, "train", "-q", "--set", "training.epochs=1", "--set",
                     "data.dataset=npz", "--set", "data.path=pixels.npz")
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr == (
        "mpinn: note: default job: data x looks like raw 0-255 pixels (uint8, max 255); add a "
        'rescale layer first: { type = "rescale", scale = 0.00392156862745098 } (1/255) in a '
        "job file, mpinn.Rescale(1 / 255) in Python\n")
