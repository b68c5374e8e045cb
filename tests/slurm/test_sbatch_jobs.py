"""The jobs/*.sbatch scripts, submitted with sbatch to the test Slurm: both strategies run
to completion, and a job signalled mid-run checkpoints, exits within the grace period and
is continued by the resubmitted job to exactly the parameters of an uninterrupted run.

The ranks start with `mpirun` inside the allocation: with the PyPI mpich wheel, starts
under `srun --mpi=pmi2` sometimes fail in MPI_Init (UCX address exchange) on this machine.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import ROOT

BIN = Path(sys.executable).parent


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script, strategy, ranks", [("train.sbatch", "allreduce", 2),
                                                     ("train-ps.sbatch", "ps", 3)])
def test_sbatch_scripts_complete(slurm, tmp_path, script, strategy, ranks):
    run_dir = tmp_path / "run"
    job_id = slurm.submit(script, tmp_path / "out.txt", MPINN_RUN_DIR=run_dir,
                          MPINN_LAUNCH="mpirun", MPINN_ARGS="--set training.epochs=3 -q")
    state = slurm.wait(job_id)
    log = (tmp_path / "out.txt").read_text()
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log
    final = checkpoint.read(run_dir / "final.h5")
    assert final.attrs["strategy"] == strategy and final.attrs["world_size"] == ranks
    assert f"mpinn job {job_id}" in log


JOB_ARGS = ("--set training.epochs=12 --set training.batch_size=8 --set run.seed=9 "
            "--set checkpoint.keep=100 -q")


@pytest.mark.timeout(400)
@pytest.mark.parametrize("signal_name, exit_code", [("USR1", 138), ("TERM", 143)])
def test_signalled_job_checkpoints_and_the_resubmitted_one_finishes_exactly(
        slurm, tmp_path, signal_name, exit_code):
    run_dir = tmp_path / "run"
    job_id = slurm.submit("train.sbatch", tmp_path / "first.txt", MPINN_RUN_DIR=run_dir,
                          MPINN_LAUNCH="mpirun", MPINN_ARGS=JOB_ARGS)
    deadline = time.monotonic() + 120
    while not checkpoint.list_checkpoints(run_dir):  # mid-run: after the first epoch
        state = slurm.job(job_id)
        assert time.monotonic() < deadline, {k: state.get(k) for k in
                                              ("JobState", "Reason", "ExitCode", "NodeList")}
        time.sleep(0.05)
    slurm.run("scancel", f"--signal={signal_name}", "--batch", str(job_id))
    signalled = time.monotonic()
    state = slurm.wait(job_id)
    assert time.monotonic() - signalled < 60  # well within the 120 s warning
    log = (tmp_path / "first.txt").read_text()
    assert state["ExitCode"] == f"{exit_code}:0", log
    assert f"stopped by SIG{signal_name}" in log
    stopped = checkpoint.latest_valid(run_dir)
    assert stopped.attrs["iterations"] < 12 * 180

    again = slurm.submit("train.sbatch", tmp_path / "second.txt", MPINN_RUN_DIR=run_dir,
                         MPINN_LAUNCH="mpirun", MPINN_ARGS=JOB_ARGS)
    state = slurm.wait(again)
    assert state["JobState"] == "COMPLETED", (tmp_path / "second.txt").read_text()

    reference = tmp_path / "reference"
    subprocess.run([str(BIN / "mpiexec"), "-n", "2", str(BIN / "mpinn"), "train",
                    str(ROOT / "jobs" / "digits.toml"), *JOB_ARGS.split(),
                    "--set", f"run.directory='{reference}'"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=200,
                   env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    ours, theirs = checkpoint.read(run_dir / "final.h5"), checkpoint.read(reference / "final.h5")
    assert ours.attrs["iterations"] == theirs.attrs["iterations"] == 12 * 180
    for name, value in theirs.params.items():
        np.testing.assert_array_equal(ours.params[name], value, err_msg=name)


@pytest.mark.timeout(300)
def test_a_stopped_job_requeues_itself_and_completes(slurm, tmp_path):
    run_dir = tmp_path / "run"
    job_id = slurm.submit("train.sbatch", tmp_path / "out.txt", MPINN_RUN_DIR=run_dir,
                          MPINN_LAUNCH="mpirun", MPINN_REQUEUE=1, MPINN_ARGS=JOB_ARGS)
    deadline = time.monotonic() + 120
    while not checkpoint.list_checkpoints(run_dir):
        assert time.monotonic() < deadline, slurm.job(job_id).get("JobState")
        time.sleep(0.05)
    slurm.run("scancel", "--signal=USR1", "--batch", str(job_id))
    # `scontrol requeue` from the job; until it is pending again, the state may still be the
    # first run's end (FAILED, exit 138)
    while ((state := slurm.job(job_id)).get("Restarts", "0") == "0"
           or state.get("JobState") not in ("PENDING", "RUNNING")):
        assert time.monotonic() < deadline, state.get("JobState")
        time.sleep(0.2)
    # skip the delay, but not into the second the old credential was revoked in (slurmd
    # refuses it: "Job credential revoked", exit 1)
    time.sleep(2)
    slurm.run("scontrol", "update", f"jobid={job_id}", "starttime=now")
    state = slurm.wait(job_id)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1"
    assert checkpoint.read(run_dir / "final.h5").attrs["iterations"] == 12 * 180
