"""`mpinn` across two emulated nodes (2 nodes x 2 ranks), with MPICH and with Open MPI:
each rank knows its host and its place on its node, the trained model equals the one 4
ranks train on one node (allreduce node by node), `by_node` on 3 + 1 ranks, local SGD with a
replica per node, bfloat16 across the nodes node by node, rank 0 alone writes, and a
rank killed on the second node ends the job, which then resumes."""

import json
import os
import re
import signal
import sys
import time

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import MPINN

TRAIN = [MPINN, "train", "-q", "--set", "training.epochs=3"]


def final(directory) -> dict:
    return checkpoint.read(directory / "final.h5").params


@pytest.mark.timeout(120)
def test_every_rank_knows_its_host_and_its_place_on_its_node(cluster, across):
    shown = across([2, 2], MPINN, "info", env={"OPENBLAS_NUM_THREADS": None}).finish()
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("rank  host"))
    rows = [line.split() for line in lines[header + 1:]]
    assert [row[:4] for row in rows] == [
        [str(rank), cluster.nodes[rank // 2], str(rank % 2), "host"] for rank in range(4)]
    assert all(" ".join(row[4:]).endswith("cores / 2 ranks on this node)") for row in rows), (
        shown.stdout)
    assert "; 4 rank(s)" in shown.stdout and shown.stdout.count("mpinn 0.") == 1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["allreduce", "ps"])
def test_two_nodes_train_the_model_of_one_node(tmp_path, across, strategy):
    """The same 4 ranks on 2 nodes and on 1: the gradients are summed in another order
    (MPICH picks its Allreduce algorithm by topology), so float32 rounding may differ."""
    options = ["--set", f"strategy.name={strategy}"] + (
        ["--set", "strategy.mode=sync"] if strategy == "ps" else [])
    for per_node, name in (([2, 2], "two"), ([4], "one")):
        done = across(per_node, *TRAIN, *options, "--set", f"run.directory='{name}'").finish()
        assert done.returncode == 0, done.stderr
    one, two = final(tmp_path / "one"), final(tmp_path / "two")
    for key, value in one.items():
        np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    if strategy == "allreduce":  # by_node "auto": node by node across the nodes alone
        assert [last_record(tmp_path / name).get("by_node") for name in ("two", "one")] == [
            True, None]


def last_record(directory) -> dict:
    return json.loads((directory / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.timeout(240)
def test_by_node_needs_as_many_ranks_on_every_node(tmp_path, across):
    """3 ranks on one node and 1 on the other: "auto" trains by one flat Allreduce, as
    false does; true is one line, exit 2."""
    for setting, name in (("'auto'", "auto"), ("false", "flat")):
        done = across([3, 1], *TRAIN, "--set", f"strategy.by_node={setting}",
                      "--set", f"run.directory='{name}'").finish()
        assert done.returncode == 0, done.stderr
    auto, flat = final(tmp_path / "auto"), final(tmp_path / "flat")
    for key, value in flat.items():
        np.testing.assert_array_equal(auto[key], value, err_msg=key)
    insisted = across([3, 1], *TRAIN, "--set", "strategy.by_node=true").finish()
    assert insisted.returncode == 2
    said = [line for line in insisted.stderr.splitlines() if "mpinn" in line]  # Open MPI's
    assert said == ["mpinn: error: allreduce: by_node needs as many ranks on every node; "
                    "found 1 to 3"], insisted.stderr  # launcher adds a banner of its own


@pytest.mark.timeout(240)
def test_local_sgd_node_replicas_keep_one_model_per_node(tmp_path, across):
    """replica = "node": a checkpoint between synchronisations (step 10, every 7) holds
    one row per rank, equal within each node and different across them."""
    done = across([2, 2], MPINN, "train", "-q", "--set", "training.epochs=1",
                  "--set", "strategy.name='local_sgd'", "--set", "strategy.replica='node'",
                  "--set", "strategy.sync_every=7", "--set", "checkpoint.every_steps=10",
                  "--set", "checkpoint.keep=10", "--set", "run.directory='run'").finish()
    assert done.returncode == 0, done.stderr
    rows = checkpoint.read(tmp_path / "run" / "ckpt-000000010.h5").strategy_tensor(
        "params_by_rank")
    np.testing.assert_array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(rows[2], rows[3])
    assert not np.array_equal(rows[0], rows[2])


@pytest.mark.timeout(300)
def test_by_node_compressed_across_nodes_resumes_exactly(tmp_path, across):
    """bfloat16 between the nodes, node by node ("auto"): a checkpoint mid-epoch keeps
    every rank's residual (each nonzero on its own slice alone), one at an epoch's end
    their sum on rank 0; both resume to the bits of the run that wrote them."""
    sets = [arg for setting in ["strategy.compression='bfloat16'", "checkpoint.every_steps=20",
                                "checkpoint.keep=100", "training.epochs=2"]
            for arg in ("--set", setting)]
    done = across([2, 2], MPINN, "train", "-q", *sets, "--set", "run.directory='whole'").finish()
    assert done.returncode == 0, done.stderr
    assert last_record(tmp_path / "whole")["by_node"] is True
    found = [checkpoint.read(path) for path in checkpoint.list_checkpoints(tmp_path / "whole")]
    middle = next(c for c in found if "residual_by_rank" in c.shapes.get("strategy", {}))
    end = next(c for c in found if "residual_by_rank" not in c.shapes.get("strategy", {}))
    rows = middle.strategy_tensor("residual_by_rank")
    size = rows.shape[1]
    for local in range(2):  # a rank's residual: its slice of its node's sum
        start, stop = size * local // 2, size * (local + 1) // 2
        for rank in (local, local + 2):
            assert rows[rank, start:stop].any() and not rows[rank, :start].any()
            assert not rows[rank, stop:].any()
    assert end.strategy_tensor("residual").any()
    for name, resumed_from in (("again-middle", middle), ("again-end", end)):
        again = across([2, 2], MPINN, "train", "-q", *sets, "--set", f"run.directory='{name}'",
                       "--resume", str(resumed_from.path)).finish()
        assert again.returncode == 0, again.stderr
        for key, value in final(tmp_path / "whole").items():
            np.testing.assert_array_equal(final(tmp_path / name)[key], value,
                                          err_msg=f"{key} from {resumed_from.path.name}")


UNFREED = """
from mpinn.dist import world
memory = world().shared_memory(1 << 20)  # a run stopped mid-epoch never frees its own
print("done")
"""


@pytest.mark.timeout(120)
def test_shared_memory_left_at_exit_is_freed_before_mpi_finalizes(tmp_path, across):
    """MPICH over libfabric failed MPI_Finalize on every rank ("fabricclose ... Device or
    resource busy") while a window lived, so a preempted Slurm job failed instead of
    requeueing."""
    (tmp_path / "unfreed.py").write_text(UNFREED)
    done = across([2, 2], sys.executable, str(tmp_path / "unfreed.py")).finish()
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done") == 4 and "Finalize" not in done.stderr  # lines may mix


@pytest.mark.timeout(120)
def test_rank_0_alone_writes(cluster, across):
    """The run directory is node-local: whatever a rank writes lands on its own node."""
    run = f"{cluster.here}/alone-{os.getpid()}-{time.monotonic_ns()}"
    done = across([2, 2], *TRAIN, "--set", f"run.directory='{run}'").finish()
    assert done.returncode == 0, done.stderr
    name = run.rsplit("/", 1)[1]
    written = {node: sorted(path.name for path in (cluster.local(node) / name).glob("*"))
               if (cluster.local(node) / name).exists() else [] for node in cluster.nodes}
    assert written[cluster.nodes[1]] == []
    assert {"final.h5", "metrics.jsonl"} <= set(written[cluster.nodes[0]])


@pytest.mark.timeout(240)
def test_a_rank_killed_on_the_second_node_ends_the_job_which_then_resumes(cluster, across,
                                                                         tmp_path):
    arguments = [MPINN, "train", "-q", "--set", "training.epochs=200", "--set",
                 "run.directory='run'", "--resume", "auto"]
    job = across([2, 2], *arguments)
    deadline = time.monotonic() + 90
    while not checkpoint.list_checkpoints(tmp_path / "run"):
        assert job.process.poll() is None, job.finish().stderr
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    victim = rank_pid(cluster, cluster.nodes[1], rank=3)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    job.finish(timeout=60)
    assert job.returncode != 0
    assert time.monotonic() - killed < 30
    assert not [pid for node in cluster.nodes for pid in mpinn_pids(cluster, node)]
    resumed = across([2, 2], MPINN, "train", "-q", "--set", "training.epochs=3", "--set",
                     "run.directory='run'", "--resume", "auto").finish()
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.read(tmp_path / "run" / "final.h5").data["epoch"] == 3


def mpinn_pids(cluster, node) -> list[int]:
    """The mpinn processes running on `node`."""
    listed = cluster.run(node, ["ip", "netns", "pids", node], capture_output=True,
                         text=True).stdout.split()
    return [int(pid) for pid in listed if _is_mpinn(pid)]


def rank_pid(cluster, node, rank: int) -> int:
    for pid in mpinn_pids(cluster, node):
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        if {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()} & set(environ):
            return pid
    raise AssertionError(f"no rank {rank} on {node}")


def _is_mpinn(pid: str) -> bool:
    try:
        command = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return any(re.search(rb"bin/mpinn$", part) for part in command)
