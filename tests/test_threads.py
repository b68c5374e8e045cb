"""Threads per rank: the rules of `plan` on made-up nodes, the cgroup reading on made-up
cgroup trees, and `apply` on the real BLAS of a child process."""

import json
import os
import subprocess
import sys

import pytest

from mpinn.errors import ConfigError
from mpinn.threads import THREAD_VARIABLES, Cores, ThreadPlan, node_cores, plan

EIGHT = Cores(affinity=8, node=8)


@pytest.mark.parametrize("name", THREAD_VARIABLES)
def test_a_thread_variable_in_the_environment_is_left_alone(name):
    chosen = plan(2, setting=3, environ={name: "4"}, cores=EIGHT)
    assert chosen == ThreadPlan(None, f"{name}=4 in the environment")


def test_every_variable_set_is_named_and_empty_ones_are_not_settings():
    environ = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": ""}
    assert plan(2, environ=environ, cores=EIGHT).reason == (
        "OMP_NUM_THREADS=1 MKL_NUM_THREADS=2 in the environment")
    assert plan(2, environ={"OPENBLAS_NUM_THREADS": ""}, cores=EIGHT).threads == 4


def test_the_job_setting_wins_over_the_cores():
    assert plan(2, setting=3, environ={}, cores=EIGHT) == ThreadPlan(3, "run.threads = 3 "
                                                                        "in the job")
    assert plan(2, setting=99, environ={}, cores=EIGHT) == ThreadPlan(
        99, "run.threads = 99 in the job, more than the 8 cores this rank may use")


@pytest.mark.parametrize(("ranks", "threads", "reason"), [
    (1, 8, "8 cores / 1 rank on this node"),
    (2, 4, "8 cores / 2 ranks on this node"),
    (3, 2, "8 cores / 3 ranks on this node"),
    (16, 1, "8 cores / 16 ranks on this node"),
])
def test_unbound_ranks_share_the_node(ranks, threads, reason):
    assert plan(ranks, environ={}, cores=EIGHT) == ThreadPlan(threads, reason)


@pytest.mark.parametrize(("cores", "ranks", "threads", "reason"), [
    (Cores(1, 64), 2, 1, "1 core bound to this rank"),
    (Cores(4, 64), 16, 4, "4 cores bound to this rank"),  # srun --cpus-per-task=4
    (Cores(32, 64), 8, 8, "32 cores bound to this rank / 4 of the 8 ranks on this node"),
])
def test_bound_ranks_are_not_divided_again_unless_they_share(cores, ranks, threads, reason):
    assert plan(ranks, environ={}, cores=cores) == ThreadPlan(threads, reason)


@pytest.mark.parametrize(("quota", "ranks", "threads"), [(4.0, 2, 2), (3.0, 2, 1),
                                                         (0.5, 1, 1)])
def test_a_cpu_quota_caps_the_share(quota, ranks, threads):
    chosen = plan(ranks, environ={}, cores=Cores(8, 8, quota))
    assert chosen.threads == threads
    assert chosen.reason.startswith(f"CPU quota of {quota:g} cores / {ranks} rank")


def test_a_quota_above_the_share_changes_nothing():
    assert plan(2, environ={}, cores=Cores(8, 8, 16.0)) == plan(2, environ={}, cores=EIGHT)


@pytest.mark.parametrize(("ranks", "setting", "message"), [
    (0, 0, "local_ranks=0"), (2, -1, "run.threads=-1")])
def test_bad_arguments_are_named(ranks, setting, message):
    with pytest.raises(ConfigError, match=message):
        plan(ranks, setting, environ={}, cores=EIGHT)


def _tree(root, files: dict) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")


def test_cgroup_v2_quota_is_the_tightest_of_the_ancestors(tmp_path):
    _tree(tmp_path, {"proc": "0::/job/step",
                     "fs/cpuset.cpus.effective": "0-63",
                     "fs/job/cpuset.cpus.effective": "0-3,8-11",
                     "fs/job/cpu.max": "150000 100000",
                     "fs/job/step/cpu.max": "max 100000"})
    found = node_cores(tmp_path / "fs", tmp_path / "proc")
    assert (found.node, found.quota) == (8, 1.5)


def test_cgroup_v1_with_a_path_the_container_does_not_show(tmp_path):
    _tree(tmp_path, {"proc": "4:cpu,cpuacct:/docker/abc\n3:cpuset:/docker/abc\n1:name=systemd:/",
                     "fs/cpu,cpuacct/cpu.cfs_quota_us": "200000",
                     "fs/cpu,cpuacct/cpu.cfs_period_us": "100000",
                     "fs/cpuset/cpuset.effective_cpus": "2"})
    found = node_cores(tmp_path / "fs", tmp_path / "proc")
    assert (found.node, found.quota) == (1, 2.0)


def test_no_cgroup_means_every_online_cpu_and_no_quota(tmp_path):
    found = node_cores(tmp_path / "fs", tmp_path / "missing")
    assert (found.node, found.quota) == (os.cpu_count(), None)
    assert 1 <= found.affinity <= os.cpu_count()


def _blas_threads_after(code: str) -> list[int]:
    """The BLAS pools' thread counts in a fresh interpreter, with no thread variable set,
    after limiting them to 3 and running `code`."""
    script = ("import json, numpy\n"
              "from threadpoolctl import threadpool_info, threadpool_limits\n"
              "from mpinn import threads\n"
              f"threadpool_limits(limits=3)\n{code}\n"
              "print(json.dumps([p['num_threads'] for p in threadpool_info()"
              " if p['user_api'] == 'blas']))")
    environ = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=environ, timeout=60, check=True)
    return json.loads(result.stdout)


def test_apply_sets_the_blas_threads_of_the_process():
    assert _blas_threads_after("") == [3]
    assert _blas_threads_after("threads.apply(threads.ThreadPlan(None, 'left alone'))") == [3]
    assert _blas_threads_after("threads.apply(threads.ThreadPlan(2, 'set'))") == [2]
    assert _blas_threads_after("threads.fit_to_node(4096)") == [1]
