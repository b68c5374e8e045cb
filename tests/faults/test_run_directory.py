"""One run directory, one job, and I/O errors as one line: a second job in a directory is
refused naming the holder; a lock left by a dead process is taken over; a read-only
directory, or one that is a file, is refused before training; a full disk ends the job
with exit 74, naming the file, the previous checkpoint intact and no temporary file left."""

import json
import os
import socket
import time

import pytest

from mpinn import checkpoint

from .conftest import private_mounts_work, write_job
from .test_stalls import first_checkpoint

needs_mounts = pytest.mark.skipif(not private_mounts_work(),
                                  reason="needs root to mount a tmpfs (unshare -m)")


@pytest.mark.timeout(120)
def test_a_second_job_in_the_same_directory_is_refused(tmp_path, launch):
    directory = tmp_path / "run"
    write_job(tmp_path / "job.toml", directory, epochs=40)
    first = launch(2, "train", "job.toml", "-q")
    first_checkpoint(directory, first)
    second = launch(2, "train", "job.toml", "-q").finish(timeout=30)
    assert second.returncode == 2, second.stderr
    holder = json.loads((directory / ".mpinn.lock").read_text())
    assert second.stderr == (
        f"mpinn: error: on rank 0: {directory} is in use by another job: pid {holder['pid']} on "
        f"{socket.gethostname()}, since {holder['started']}; wait for it, choose another "
        f"run.name, or, if that job is gone, remove {directory / '.mpinn.lock'}\n")
    assert first.finish().returncode == 0, first.stderr
    epochs = [json.loads(line)["epoch"] for line in
              (directory / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))  # one job's lines, in order
    assert not (directory / ".mpinn.lock").exists()


@pytest.mark.timeout(60)
def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, launch):
    directory = tmp_path / "run"
    directory.mkdir()
    dead = launch(None, "--version").finish()  # a pid that no longer runs
    (directory / ".mpinn.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.process.pid, "started": "earlier"}))
    write_job(tmp_path / "job.toml", directory, epochs=1)
    run = launch(None, "train", "job.toml", "-q").finish()
    assert run.returncode == 0, run.stderr
    assert (f"mpinn: took over the lock of {directory} from pid {dead.process.pid} on "
            f"{socket.gethostname()}: process {dead.process.pid}") in run.stderr
    assert (directory / "final.h5").exists()


@pytest.mark.timeout(60)
def test_a_run_directory_that_is_a_file_is_refused_before_training(tmp_path, launch):
    (tmp_path / "run").write_text("not a directory")
    write_job(tmp_path / "job.toml", tmp_path / "run", epochs=1)
    run = launch(2, "train", "job.toml", "-q").finish()
    assert run.returncode == 2
    assert run.stderr == (f"mpinn: error: on rank 0: run directory {tmp_path / 'run'} is a "
                          "file, not a directory\n")


def in_tmpfs(options: str, keep: "str | None" = None) -> list[str]:
    """A command prefix: the command runs in a private mount namespace with a tmpfs on
    ./disk (gone with the namespace); `keep`: where to copy disk/run to when it ends."""
    after = f"cp -a disk/run {keep}; " if keep else ""
    return ["unshare", "-m", "sh", "-c",
            f"mkdir -p disk && mount -t tmpfs -o {options} none disk && "
            f"{{ \"$@\"; code=$?; {after}exit $code; }}", "sh"]


@pytest.mark.timeout(60)
@needs_mounts
def test_a_read_only_run_directory_is_refused_before_training(tmp_path, launch):
    write_job(tmp_path / "job.toml", tmp_path / "disk" / "run", epochs=1000)
    started = time.monotonic()
    run = launch(2, "train", "job.toml", "-q", wrap=in_tmpfs("ro,size=1m")).finish()
    assert run.returncode == 2, run.stderr
    assert time.monotonic() - started < 15
    assert run.stderr == (f"mpinn: error: on rank 0: cannot create the run directory "
                          f"{tmp_path / 'disk' / 'run'}: Read-only file system\n")


@pytest.mark.timeout(120)
@needs_mounts
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_full_disk_ends_the_job_with_exit_74_keeping_the_last_checkpoint(tmp_path, launch,
                                                                           ranks):
    """A 1 MiB disk holds the metrics log and about three checkpoints of 190 KB."""
    directory = tmp_path / "disk" / "run"
    write_job(tmp_path / "job.toml", directory, epochs=50, keep=100, units=640)
    keep = tmp_path / "kept"
    run = launch(ranks, "train", "job.toml", "-q",
                 wrap=in_tmpfs("size=1m", keep=str(keep)))
    run.finish()
    assert run.returncode == 74, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"mpinn: cannot write {directory}/ckpt-")
    assert "No space left on device" in lines[0]
    assert f"the last good checkpoint is {directory}/ckpt-" in lines[0]
    left = sorted(path.name for path in keep.iterdir())
    assert not [name for name in left if ".tmp-" in name]
    assert checkpoint.latest_valid(keep) is not None
    assert ".mpinn.lock" not in left
    assert os.path.getsize(keep / "metrics.jsonl") > 0


@pytest.mark.timeout(60)
def test_a_metrics_log_that_cannot_be_written_is_refused_before_training(tmp_path, launch):
    (tmp_path / "run" / "log").mkdir(parents=True)
    write_job(tmp_path / "job.toml", tmp_path / "run", epochs=1,
              extra='\n[logging]\nmetrics_log = "log"\n')
    run = launch(2, "train", "job.toml", "-q").finish()
    assert run.returncode == 2
    assert run.stderr == (f"mpinn: error: on rank 0: job.toml: logging.metrics_log: cannot "
                          f"write {tmp_path / 'run' / 'log'}: Is a directory\n")
    assert not (tmp_path / "run" / ".mpinn.lock").exists()
