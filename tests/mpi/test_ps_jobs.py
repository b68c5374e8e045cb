"""`mpinn train` with parameter servers (strategy "ps": rank 0, or ranks 0..k-1 with
`servers = k`) on 3 and 4 ranks."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import MPIEXEC, MPINN
from .test_allreduce_jobs import SMALL_JOB


def records(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks, servers, clip", [(3, 1, False), (4, 1, False), (4, 2, False),
                                                 (4, 2, True)],
                         ids=["3-ranks", "4-ranks", "4-ranks-2-servers",
                              "4-ranks-2-servers-clipped"])
def test_sync_mode_equals_allreduce_over_the_workers(tmp_path, launch, ranks, servers, clip):
    """Clipped: the servers add their slices' squared norms, so each clips by the norm of
    the whole summed gradient, as allreduce does (a norm of 0.05 clips nearly every step)."""
    finals = {}
    for strategy in ("allreduce", "ps"):
        directory = tmp_path / strategy
        job = tmp_path / f"{strategy}.toml"
        job.write_text(SMALL_JOB.format(directory=directory))
        # allreduce over the same number of trainers as ps has workers
        world = ranks - servers if strategy == "allreduce" else ranks
        ps = ["--set", "strategy.mode='sync'", "--set", f"strategy.servers={servers}"]
        clipped = ["--set", "optimizer.global_clipnorm=0.05"] if clip else []
        run = launch(world, "train", str(job), "--quiet", "--set", f"strategy.name='{strategy}'",
                     *(ps if strategy == "ps" else []), *clipped)
        assert run.returncode == 0, run.stderr
        finals[strategy] = checkpoint.read(directory / "final.h5").params
    for name, value in finals["allreduce"].items():
        np.testing.assert_allclose(finals["ps"][name], value, rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    *epochs, report = records(tmp_path / "ps")
    assert report["mode"] == "sync" and report["servers"] == servers
    assert report["version_lag_histogram"] == {
        "0": report["updates_applied"] * (ranks - servers) * servers}
    assert list(report)[-2:] == ["time", "run"] and report["run"] == epochs[0]["run"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("staleness, aware", [(0, False), (2, False), (None, False),
                                              (None, True)],
                         ids=["s0", "s2", "unbounded", "unbounded-staleness-aware-rate"])
def test_async_reaches_095_and_the_server_record_keeps_the_bound(tmp_path, launch, staleness,
                                                                 aware):
    bound = [] if staleness is None else ["--set", f"strategy.staleness={staleness}"]
    if aware:
        bound += ["--set", "strategy.staleness_aware_lr=true"]
    run = launch(3, "train", "--quiet", "--set", "strategy.name='ps'",
                 "--set", "strategy.mode='async'", *bound)
    assert run.returncode == 0, run.stderr
    *epochs, report = records(tmp_path / "runs/digits")
    assert len(epochs) == 30 and epochs[-1]["val_accuracy"] >= 0.95
    assert report["lead_bound"] == staleness
    steps = 45  # ceil(1437 / 32) global batches per epoch, one push per worker each
    assert report["updates_by_worker"] == {"1": 30 * steps, "2": 30 * steps}
    assert sum(report["version_lag_histogram"].values()) == 2 * 30 * steps
    if staleness is not None:
        assert report["largest_lead"] <= staleness


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_two_servers_train_the_default_job_and_keep_the_bound_across_slices(tmp_path, launch,
                                                                            mode):
    """Ranks 0 and 1 each own half of the model; ranks 2 and 3 train. In async mode each
    server holds a worker back by its own count of pushes, and the worker needs both
    replies: no server's record shows a lead beyond the bound."""
    bound = ["--set", "strategy.staleness=1"] if mode == "async" else []
    run = launch(4, "train", "--quiet", "--set", "strategy.name='ps'", "--set",
                 f"strategy.mode='{mode}'", "--set", "strategy.servers=2", *bound)
    assert run.returncode == 0, run.stderr
    *epochs, report = records(tmp_path / "runs/digits")
    assert len(epochs) == 30 and epochs[-1]["val_accuracy"] >= 0.95
    assert report["servers"] == 2
    steps = 45
    if mode == "async":
        assert report["updates_by_worker"] == {"2": 30 * steps, "3": 30 * steps}
        assert report["updates_applied"] == 2 * 30 * steps
        assert sum(report["version_lag_histogram"].values()) == 2 * 2 * 30 * steps
        assert report["largest_lead"] <= 1 and report["lead_bound"] == 1
    else:
        assert report["updates_applied"] == 30 * steps


@pytest.mark.timeout(300)
def test_downpour_intervals_push_summed_steps_and_pull_now_and_then(tmp_path, launch):
    """push_every = 2: a push is the mean gradient of two steps, so an epoch of 45 steps
    is 23 pushes per worker; pull_every = 2: every other reply carries parameters. The
    staleness bound still holds (every reply carries the version)."""
    run = launch(3, "train", "--quiet", "--set", "strategy.name='ps'", "--set",
                 "strategy.push_every=2", "--set", "strategy.pull_every=2", "--set",
                 "strategy.staleness=2")
    assert run.returncode == 0, run.stderr
    *epochs, report = records(tmp_path / "runs/digits")
    assert len(epochs) == 30 and epochs[-1]["val_accuracy"] >= 0.95
    assert report["updates_by_worker"] == {"1": 30 * 23, "2": 30 * 23}
    assert sum(report["version_lag_histogram"].values()) == report["updates_applied"] == 1380
    assert report["largest_lead"] <= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("setting, message", [
    ("strategy.servers=3", "ps: servers = 3 leaves no rank to train on 3 ranks; use at most 2"),
    ("strategy.push_every=0", "ps: push_every must be an integer >= 1. Received: push_every=0"),
    ("strategy.mode='sync'\nstrategy.pull_every=2", "ps: staleness, staleness_aware_lr, "
     "push_every, pull_every and compression apply to mode 'async' only")],
    ids=["no-worker-left", "push-every-0", "pull-every-in-sync"])
def test_a_bad_ps_setting_is_one_line_from_rank_0(launch, setting, message):
    sets = [item for line in setting.split("\n") for item in ("--set", line)]
    run = launch(3, "train", "--set", "strategy.name='ps'", *sets)
    assert run.returncode == 2
    assert run.stderr.strip() == f"mpinn: error: default job: [strategy] ('ps'): {message}"


WIDE = ('model.layers=[{type="dense", units=16384, activation="relu"}, '
        '{type="dense", units=10, activation="softmax"}]')  # 1.2 M parameters: 4.7 MB


@pytest.mark.timeout(120)
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to mount a small /dev/shm")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_node_short_of_shared_memory_trains_by_messages(tmp_path, mode):
    """A container's /dev/shm is often 64 MB. Here 8 MB, where two workers' parameters in
    shared memory would take 19 MB (touching memory past the room kills the process):
    the ranks see it before allocating and exchange by messages instead."""
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or the mpinn command is not installed")
    train = [MPIEXEC, "-n", "3", MPINN, "train", "-q", "--set", "strategy.name=ps", "--set",
             f"strategy.mode={mode}", "--set", "training.epochs=2", "--set", WIDE]
    script = 'mount -t tmpfs -o size=8M tmpfs /dev/shm && exec "$@"'
    run = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *train], cwd=tmp_path,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=100)
    assert run.returncode == 0, run.stderr
    *epochs, report = records(tmp_path / "runs/digits")
    assert len(epochs) == 2 and report["mode"] == mode


@pytest.mark.timeout(60)
@pytest.mark.parametrize("failing_rank, servers", [(2, 1), (0, 1), (1, 2)],
                         ids=["worker", "server", "second-of-two-servers"])
def test_an_exception_on_a_worker_or_a_server_ends_the_job(launch, failing_rank, servers):
    run = launch(3, "train", "--quiet", "--set", "strategy.name='ps'",
                 "--set", f"strategy.servers={servers}",
                 "--set", "training.epochs=1000", env={"MPINN_FAIL_AT": f"{failing_rank}:30"},
                 timeout=45)
    assert run.returncode != 0
    assert run.seconds < 15
    assert f"[rank {failing_rank}/3" in run.stderr and "injected failure" in run.stderr


@pytest.mark.timeout(60)
def test_ps_on_one_rank_is_a_clear_error(launch):
    run = launch(None, "train", "--set", "strategy.name='ps'")
    assert run.returncode == 2
    assert "strategy 'ps' needs at least 2 ranks" in run.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_server_receives_over_ucx_on_tcp(tmp_path, launch, mode):
    """MPICH's UCX netmod on TCP (as between nodes without InfiniBand) never completed a
    receive from any rank once two workers sent: the server posts one receive per worker."""
    done = launch(3, "train", "-q", "--set", "training.epochs=2", "--set", "strategy.name=ps",
                  "--set", f"strategy.mode={mode}", "--set", "watchdog.abort_seconds=30",
                  "--set", f"run.directory='{tmp_path / 'run'}'",
                  env={"UCX_TLS": "tcp,self", "MPIR_CVAR_NOLOCAL": "1"})
    assert done.returncode == 0, done.stderr
    assert checkpoint.read(tmp_path / "run" / "final.h5").data["epoch"] == 2
