"""Runs never mix: a new run into a directory that holds another run is refused with the
ways on; `--start-over` moves the earlier run aside whole; `--resume auto` resumes only
the same job; every metrics line names its run and time."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpinn import checkpoint

MPINN = Path(sys.executable).parent / "mpinn"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def train(cwd, *arguments):
    return subprocess.run([str(MPINN), "train", "-q", "--set", "training.epochs=2",
                           *arguments], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def contents(directory: Path) -> dict[str, str]:
    """Every file under `directory` (but the lock) by path, with a digest of its bytes."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()
            and path.name != ".mpinn.lock"}


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def first_run(tmp_path):
    done = train(tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "runs" / "digits"


def test_every_metrics_line_names_its_run_and_time(first_run):
    lines = records(first_run / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2]
    assert len({line["run"] for line in lines}) == 1 and all(TIME.match(line["time"])
                                                            for line in lines)
    assert checkpoint.read(first_run / "final.h5").attrs["run_id"] == lines[0]["run"]


def test_a_second_run_into_the_same_directory_is_refused_and_changes_nothing(tmp_path,
                                                                             first_run):
    before = contents(first_run)
    again = train(tmp_path)
    assert again.returncode == 2 and again.stdout == ""
    run = records(first_run / "metrics.jsonl")[0]["run"]
    assert again.stderr == (
        f"mpinn: error: runs/digits holds an earlier run (final.h5, 2 checkpoints (newest "
        f"ckpt-000000090.h5) and metrics.jsonl (run {run}, 2 epochs, last "
        f"{records(first_run / 'metrics.jsonl')[-1]['time']})); continue it with --resume "
        "auto, train into a new directory with --set run.name=NEW, or move it into earlier/ "
        "and start afresh with --start-over\n")
    assert contents(first_run) == before


def test_start_over_moves_the_earlier_run_aside_whole(tmp_path, first_run):
    (first_run / "curves.png").write_bytes(b"the earlier run's picture")
    before = contents(first_run)
    run = records(first_run / "metrics.jsonl")[0]["run"]
    fresh = train(tmp_path, "--start-over")
    assert fresh.returncode == 0, fresh.stderr
    assert "mpinn: moved the earlier run (" in fresh.stderr
    assert contents(first_run / "earlier" / run) == before
    lines = records(first_run / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2] and lines[0]["run"] != run
    twice = train(tmp_path, "--start-over")
    assert twice.returncode == 0 and len(list((first_run / "earlier").iterdir())) == 2


def test_two_runs_with_different_names_keep_their_own_files(tmp_path, first_run):
    before = contents(first_run)
    other = train(tmp_path, "--set", "run.name=other", "--set", "run.seed=1")
    assert other.returncode == 0, other.stderr
    assert contents(first_run) == before
    assert len(records(tmp_path / "runs" / "other" / "metrics.jsonl")) == 2


def test_resume_auto_refuses_another_runs_checkpoint_and_names_the_difference(tmp_path,
                                                                              first_run):
    before = contents(first_run)
    other = train(tmp_path, "--resume", "auto", "--set", "training.epochs=4",
                  "--set", "data.validation_split=0.3")
    assert other.returncode == 2
    assert other.stderr == (
        "mpinn: error: --resume auto: runs/digits/ckpt-000000090.h5 is another run's "
        "checkpoint: data.validation_split is 0.3 here but 0.2 in "
        "runs/digits/ckpt-000000090.h5 (stored job); resume it with that job, train into a "
        "new directory with --set run.name=NEW, or start over with --start-over\n")
    assert contents(first_run) == before
    longer = train(tmp_path, "--resume", "auto", "--set", "training.epochs=3")
    assert longer.returncode == 0, longer.stderr
    lines = records(first_run / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2, 3] and len({
        line["run"] for line in lines}) == 1  # a resumed run keeps its id


def test_an_explicit_resume_of_changed_settings_says_what_changed(tmp_path, first_run):
    tuned = train(tmp_path, "--resume", "runs/digits/final.h5", "--set", "run.name=tuned",
                  "--set", "training.epochs=3", "--set", "optimizer.learning_rate=0.0005")
    assert tuned.returncode == 0, tuned.stderr
    assert tuned.stderr == (
        "mpinn: note: resuming runs/digits/final.h5 with other settings: "
        "optimizer.learning_rate is 0.0005 here but 0.001 in runs/digits/final.h5 "
        "(stored job)\n")
    first, forked = (records(tmp_path / "runs" / name / "metrics.jsonl")
                     for name in ("digits", "tuned"))
    assert [line["epoch"] for line in forked] == [3] and forked[0]["run"] != first[0]["run"]
    into = train(tmp_path, "--resume", "runs/tuned/final.h5", "--set", "training.epochs=4")
    assert into.returncode == 2 and "runs/digits holds an earlier run" in into.stderr


def test_start_over_and_resume_do_not_go_together(tmp_path):
    both = train(tmp_path, "--start-over", "--resume", "auto")
    assert both.returncode == 2 and both.stderr == (
        "mpinn: error: --start-over trains afresh: it cannot go with --resume\n")


def test_resume_auto_of_a_run_without_checkpoints_offers_the_ways_that_work(tmp_path):
    stopped = train(tmp_path, "--set", "run.directory='fixed'")
    assert stopped.returncode == 0, stopped.stderr
    for saved in (tmp_path / "fixed").glob("*.h5"):
        saved.unlink()  # as if it died before its first checkpoint: a log only
    again = train(tmp_path, "--resume", "auto", "--set", "run.directory='fixed'")
    assert again.returncode == 2 and again.stderr.startswith(
        "mpinn: error: --resume auto: fixed holds an earlier run (metrics.jsonl (run ")
    assert again.stderr.endswith(
        "but no checkpoint of it to resume; train into a new directory with --set "
        "run.directory=NEW, or move it into earlier/ and start afresh with --start-over\n")


def test_a_mid_epoch_checkpoint_resumes_only_with_its_batch_size(tmp_path):
    done = train(tmp_path, "--set", "checkpoint.every_steps=7", "--set", "checkpoint.keep=50")
    assert done.returncode == 0, done.stderr
    middle = next(path for path in checkpoint.list_checkpoints(tmp_path / "runs" / "digits")
                  if checkpoint.read(path).data["step"])
    found = checkpoint.read(middle).data
    other = train(tmp_path, "--resume", str(middle), "--set", "run.name=other",
                  "--set", "training.batch_size=64")
    assert other.returncode == 2 and other.stderr == (
        f"mpinn: error: --resume {middle}: {middle} stopped {found['step']} steps into epoch "
        f"{found['epoch'] + 1} with training.batch_size = 32: resume it with that batch size "
        "(another would replay other samples), or from an epoch's end\n")
