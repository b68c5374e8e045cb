"""`mpinn train` with rank 0 as parameter server (strategy "ps") on 3 and 4 ranks."""

import json

import numpy as np
import pytest

from mpinn import checkpoint

from .test_allreduce_jobs import SMALL_JOB


def records(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ranks", [3, 4])
def test_sync_mode_equals_allreduce_over_the_workers(tmp_path, launch, ranks):
    finals = {}
    for strategy in ("allreduce", "ps"):
        directory = tmp_path / strategy
        job = tmp_path / f"{strategy}.toml"
        job.write_text(SMALL_JOB.format(directory=directory))
        # allreduce over the same number of trainers as ps has workers
        world = ranks - 1 if strategy == "allreduce" else ranks
        run = launch(world, "train", str(job), "--quiet", "--set", f"strategy.name='{strategy}'",
                     *(["--set", "strategy.mode='sync'"] if strategy == "ps" else []))
        assert run.returncode == 0, run.stderr
        finals[strategy] = checkpoint.read(directory / "final.h5").params
    for name, value in finals["allreduce"].items():
        np.testing.assert_allclose(finals["ps"][name], value, rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    *epochs, report = records(tmp_path / "ps")
    assert report["mode"] == "sync" and report["version_lag_histogram"] == {
        "0": report["updates_applied"] * (ranks - 1)}
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("failing_rank", [2, 0], ids=["worker", "server"])
def test_an_exception_on_a_worker_or_the_server_ends_the_job(launch, failing_rank):
    run = launch(3, "train", "--quiet", "--set", "strategy.name='ps'",
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
