"""The jobs/*.sbatch scripts on a two-node Slurm (tests/multinode/slurm.py): `sbatch -N 2
--ntasks-per-node=2` runs 4 ranks, 2 on each node, for both strategies, and a job told
to stop mid-run requeues itself and ends with exactly the parameters of a job that ran
uninterrupted.

Where each rank ran is recorded by an `mpinn` first on the job's PATH, which writes its
rank into the node-local folder (`cluster.here`) and runs the real one: the job script
and its launch line are the ones users run.
"""

import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mpinn import checkpoint

BIN = Path(sys.executable).parent
FOUR = ("-N", "2", "--ntasks-per-node=2")
# train-ps.sbatch's `#SBATCH --ntasks=3` outlives the two options above: 3 ranks without this
FOUR_PS = (*FOUR, "--ntasks=4")
# MPICH's default netmod, UCX, on TCP (slurm.py's jobs use OFI): Allreduce crosses the links
UCX = {"MPIR_CVAR_CH4_NETMOD": "ucx", "UCX_TLS": "tcp,self"}
LINK_BYTES = 2_000_000  # 3 epochs cross it with ~10 MB; Slurm's and MPI's own setup ~30 kB
SHIM = """#!/bin/sh
echo "$(hostname)" > "{here}/{name}/rank-${{PMI_RANK:-$SLURM_PROCID}}"
exec {mpinn} "$@"
"""


def rank_recorder(cluster, tmp_path: Path) -> "tuple[str, Callable[[], dict]]":
    """(a PATH whose `mpinn` records where each rank runs, a function that reads it back:
    node -> sorted [(rank, hostname)])."""
    name = f"ranks-{tmp_path.name}"
    for node in cluster.nodes:
        (cluster.local(node) / name).mkdir()
    shim = tmp_path / "bin" / "mpinn"
    shim.parent.mkdir()
    shim.write_text(SHIM.format(here=cluster.here, name=name, mpinn=BIN / "mpinn"))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)

    def placed() -> dict:
        return {node: sorted((int(path.name.split("-")[1]), path.read_text().strip())
                             for path in (cluster.local(node) / name).glob("rank-*"))
                for node in cluster.nodes}

    return f"{shim.parent}:{BIN}:{os.environ['PATH']}", placed


def link_bytes(cluster, node) -> int:
    """Bytes received and sent on `node`'s link so far."""
    return sum(int(cluster.run(node, ["cat", f"/sys/class/net/eth0/statistics/{way}_bytes"],
                               capture_output=True, text=True, check=True).stdout)
               for way in ("rx", "tx"))


def two_per_node(cluster) -> dict:
    first, second = cluster.nodes
    return {first: [(0, first), (1, first)], second: [(2, second), (3, second)]}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("script, strategy, launch, env", [
    ("train.sbatch", "allreduce", "mpirun", {}),
    ("train.sbatch", "allreduce", "srun --mpi=pmi2", {}),
    ("train.sbatch", "allreduce", "mpirun", UCX),
    ("train-ps.sbatch", "ps", "mpirun", {}),
], ids=["allreduce-mpirun", "allreduce-srun", "allreduce-mpirun-ucx", "ps-mpirun"])
def test_a_job_on_two_nodes_runs_two_ranks_on_each(slurm_nodes, tmp_path,
                                                   script, strategy, launch, env):
    cluster = slurm_nodes.cluster
    path, placed = rank_recorder(cluster, tmp_path)
    run_dir = tmp_path / "run"
    before = link_bytes(cluster, cluster.nodes[1])
    options = FOUR_PS if script == "train-ps.sbatch" else FOUR
    job_id = slurm_nodes.submit(script, tmp_path / "out.txt", *options, MPINN_RUN_DIR=run_dir,
                                MPINN_LAUNCH=launch, MPINN_ARGS="--set training.epochs=3 -q",
                                PATH=path, **env)
    state = slurm_nodes.wait(job_id, timeout=100)
    log = (tmp_path / "out.txt").read_text()
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log
    assert state["NodeList"] == f"{cluster.prefix}n[1-2]" and state["NumTasks"] == "4"
    assert f"mpinn job {job_id} on {cluster.prefix}n[1-2]: 4 tasks" in log
    final = checkpoint.read(run_dir / "final.h5")
    assert final.attrs["strategy"] == strategy and final.attrs["world_size"] == 4
    assert placed() == two_per_node(cluster)
    # the data crossed the link (UCX's default would use shared memory: it sees one host)
    assert link_bytes(cluster, cluster.nodes[1]) - before > LINK_BYTES


JOB_ARGS = ("--set training.epochs=12 --set training.batch_size=8 --set run.seed=9 "
            "--set checkpoint.keep=100 -q")
ITERATIONS = 12 * 180  # 1437 training samples in global batches of 8


@pytest.mark.timeout(200)
def test_a_preempted_job_requeues_itself_and_ends_as_an_uninterrupted_one(
        slurm_nodes, tmp_path):
    cluster = slurm_nodes.cluster
    path, placed = rank_recorder(cluster, tmp_path)
    run_dir = tmp_path / "run"
    job_id = slurm_nodes.submit("train.sbatch", tmp_path / "out.txt", *FOUR,
                                "--open-mode=append",  # the log keeps both runs
                                MPINN_RUN_DIR=run_dir, MPINN_LAUNCH="mpirun", MPINN_REQUEUE=1,
                                MPINN_ARGS=JOB_ARGS, PATH=path)
    deadline = time.monotonic() + 60
    while not checkpoint.list_checkpoints(run_dir):  # mid-run: after the first epoch
        assert time.monotonic() < deadline, slurm_nodes.job(job_id).get("JobState")
        time.sleep(0.05)
    first_start = slurm_nodes.job(job_id)["StartTime"]
    slurm_nodes.run("scancel", "--signal=USR1", "--batch", str(job_id))
    while slurm_nodes.job(job_id).get("Restarts", "0") == "0":  # `scontrol requeue` by the job
        assert time.monotonic() < deadline, slurm_nodes.job(job_id).get("JobState")
        time.sleep(0.2)
    slurm_nodes.start_requeued(job_id, first_start)
    state = slurm_nodes.wait(job_id, timeout=100)
    log = (tmp_path / "out.txt").read_text()
    fields = {key: state.get(key) for key in ("JobState", "Reason", "ExitCode", "Restarts",
                                               "SubmitTime", "StartTime", "EndTime")}
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", (fields, log)
    assert "stopped by SIGUSR1" in log and "mpinn stopped on a signal (exit 138)" in log
    assert state["NodeList"] == f"{cluster.prefix}n[1-2]"
    assert placed() == two_per_node(cluster)  # the second start's, as the first's

    reference = tmp_path / "reference"
    again = slurm_nodes.submit("train.sbatch", tmp_path / "reference.txt", *FOUR,
                               MPINN_RUN_DIR=reference, MPINN_LAUNCH="mpirun",
                               MPINN_ARGS=JOB_ARGS)
    state = slurm_nodes.wait(again, timeout=100)
    assert state["JobState"] == "COMPLETED", (tmp_path / "reference.txt").read_text()
    ours, theirs = checkpoint.read(run_dir / "final.h5"), checkpoint.read(reference / "final.h5")
    assert ours.attrs["iterations"] == theirs.attrs["iterations"] == ITERATIONS
    for name, value in theirs.params.items():
        np.testing.assert_array_equal(ours.params[name], value, err_msg=name)
