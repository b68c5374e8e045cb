"""A rank that stops (SIGSTOP: a dead NFS mount, a stuck driver) is named by the others
within the warning time, and the job ends with exit 4 at the abort time, without burning
CPU meanwhile; a stop signal during a stall ends the job within seconds, rank 0
checkpointing the last step boundary when it can."""

import json
import os
import platform
import re
import signal
import time

import pytest

from mpinn import checkpoint

from .conftest import cpu_seconds, write_job


def first_checkpoint(directory, job, timeout=60):
    deadline = time.monotonic() + timeout
    while not checkpoint.list_checkpoints(directory):
        assert job.process.poll() is None, job.finish().stderr
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks, stopped", [(2, 1), (4, 2)])
def test_a_stopped_rank_is_named_then_the_job_ends_with_exit_4(tmp_path, launch, ranks,
                                                               stopped):
    directory = tmp_path / "run"
    write_job(tmp_path / "job.toml", directory, warn=2, abort=6)
    job = launch(ranks, "train", "job.toml", "-q")
    first_checkpoint(directory, job)
    waiting = job.rank_pid(0)
    job_pid = job.rank_pid(stopped)
    os.kill(job_pid, signal.SIGSTOP)
    since = time.monotonic()
    time.sleep(1)  # past the half second of yielding polls
    cpu_before = cpu_seconds(waiting)
    time.sleep(3)
    cpu_used = cpu_seconds(waiting) - cpu_before
    job.finish(timeout=30)
    assert job.returncode == 4, job.stderr
    assert 5.5 < time.monotonic() - since < 12
    # the stop can land in a step or in validation; the first warning may still count the
    # stopped rank's last beat as recent (status messages are read up to a beat late)
    warnings = re.findall(r"mpinn: epoch \d+ [a-z]+(?: \d+)?: allreduce still waiting after "
                          rf"(\d) s for rank {stopped} \((silent|heard)[^)]*\)", job.stderr)
    # once each, from one rank, and silent by the second
    assert [seconds for seconds, _ in warnings] == ["2", "4"], job.stderr
    assert warnings[1][1] == "silent", job.stderr
    assert re.search(rf"allreduce waited 6 s for rank {stopped} \(silent for \d s, last at "
                     r"[^)]+\); ending the job \(exit 4\)", job.stderr)
    assert cpu_used < 0.3  # of 3 s: the waiting rank sleeps between polls
    assert checkpoint.latest_valid(directory) is not None


def terminate_during_a_stall(tmp_path, launch, stalled: int):
    """A 2-rank run with rank `stalled` stopped, then SIGTERM to mpiexec: the ended job,
    and the seconds from the signal to its end."""
    write_job(tmp_path / "job.toml", tmp_path / "run", warn=60, abort=600,
              extra="\n[data]\nvalidation_split = 0.0\n")  # a stall in validation: no state
    job = launch(2, "train", "job.toml", "-q")
    first_checkpoint(tmp_path / "run", job)
    os.kill(job.rank_pid(stalled), signal.SIGSTOP)
    time.sleep(1)
    sent = job.signal(signal.SIGTERM)
    job.finish(timeout=30)
    return job, time.monotonic() - sent


@pytest.mark.timeout(120)
def test_sigterm_during_a_stall_checkpoints_on_rank_0_and_ends_within_seconds(tmp_path,
                                                                              launch):
    job, seconds = terminate_during_a_stall(tmp_path, launch, stalled=1)
    assert job.returncode == 143, job.stderr
    assert seconds < 8
    assert "mpinn: stopped by SIGTERM while allreduce at epoch" in job.stderr
    assert "waited" in job.stderr and "for rank 1 (" in job.stderr
    newest = checkpoint.list_checkpoints(tmp_path / "run")[0]
    assert f"checkpoint {newest} written, continue with --resume auto" in job.stderr
    stopped = checkpoint.read(newest)
    assert len(next(iter(stopped.history.values()), [])) == stopped.data["epoch"]

    epochs = stopped.data["epoch"] + 1
    resumed = launch(2, "train", "job.toml", "-q", "--resume", "auto",
                     "--set", f"training.epochs={epochs}").finish()
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.read(tmp_path / "run" / "final.h5").attrs["iterations"] == epochs * 113


@pytest.mark.timeout(120)
def test_sigterm_with_rank_0_stalled_ends_the_job_from_another_rank(tmp_path, launch):
    job, seconds = terminate_during_a_stall(tmp_path, launch, stalled=0)
    assert job.returncode == 143, job.stderr
    assert seconds < 12
    assert "rank 0 did not respond, so no checkpoint was written" in job.stderr
    assert checkpoint.latest_valid(tmp_path / "run") is not None


@pytest.mark.timeout(120)
def test_a_stopped_parameter_server_worker_is_named(tmp_path, launch):
    directory = tmp_path / "run"
    write_job(tmp_path / "job.toml", directory, warn=2, abort=5,
              extra='\n[strategy]\nname = "ps"\nstaleness = 1\n')
    job = launch(3, "train", "job.toml", "-q")
    first_checkpoint(directory, job)
    os.kill(job.rank_pid(2), signal.SIGSTOP)
    job.finish(timeout=30)
    assert job.returncode == 4, job.stderr
    assert re.search(r"still waiting after 2 s for rank 2 \(silent", job.stderr), job.stderr


@pytest.mark.timeout(120)
@pytest.mark.skipif(platform.machine() != "x86_64", reason="OpenBLAS's x86 kernel names")
def test_the_metrics_log_names_a_straggler(tmp_path, launch):
    """Rank 1 multiplies with OpenBLAS's generic Prescott kernels: a slower node."""
    directory = tmp_path / "run"
    write_job(tmp_path / "job.toml", directory, epochs=6, warn=60, abort=600, units=2048,
              batch_size=128)
    arguments = ["train", "job.toml", "-q"]
    job = launch(None, mpmd=[(1, arguments, {}),
                             (1, arguments, {"OPENBLAS_CORETYPE": "Prescott"})]).finish()
    assert job.returncode == 0, job.stderr
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text()
               .splitlines() if '"epoch"' in line]
    named = [record for record in records if record["slowest_rank"] == 1
             and record["compute_seconds_spread"] > 0.1 * record["slowest_compute_seconds"]]
    assert len(named) >= 5  # of 6: a loaded machine may blur one epoch


@pytest.mark.timeout(120)
def test_a_slow_but_busy_rank_is_not_a_stall(tmp_path, launch):
    """ps async: from the second epoch on (all set up: slowed while it sets up, it would be
    silent, a stall), worker 2 runs at a fifth of its speed (stopped 0.2 s of every
    0.25 s), so worker 1 waits at the epoch's end for several times `abort_seconds`;
    worker 2 is heard from all along, so the job warns, naming it busy, and completes."""
    directory = tmp_path / "run"
    write_job(tmp_path / "job.toml", directory, epochs=2, warn=0.5, abort=1.5, units=512,
              batch_size=32, extra='\n[strategy]\nname = "ps"\n[data]\ndataset = "blobs"\n'
                                   'samples = 128000\nfeatures = 256\nvalidation_split = 0.0\n')
    job = launch(3, "train", "job.toml", "-q")
    slow = job.rank_pid(2)
    while job.process.poll() is None and not (directory / "metrics.jsonl").exists():
        time.sleep(0.01)
    while job.process.poll() is None:
        try:
            os.kill(slow, signal.SIGSTOP)
            time.sleep(0.2)
            os.kill(slow, signal.SIGCONT)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    job.finish()
    assert job.returncode == 0, job.stderr
    waits = [int(seconds) for seconds in re.findall(
        r"broadcast still waiting after (\d+) s for rank 0 \(heard \d+ s ago, at epoch 2\), "
        r"rank 2 \(heard \d+ s ago, at epoch 2 step \d+\)", job.stderr)]
    assert max(waits) >= 3  # twice abort_seconds, and no stall
