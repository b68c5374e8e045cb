"""One run per directory: what an earlier run left is found and described in one phrase,
whatever its metrics log holds, and moved aside into earlier/<run id>/ without
overwriting anything; metrics lines name their run."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import mpinn
from mpinn import Dense, Sequential, checkpoint
from mpinn.callbacks import MetricsLog
from mpinn.rundir import LOCK_NAME, process_running
from mpinn.runs import earlier_run, move_aside, new_run_id

RUN = "20261201-051000-3fa2"


@pytest.fixture(scope="module")
def model():
    model = Sequential([Dense(2, input_shape=(3,))], seed=0)
    model.compile(mpinn.SGD(0.1), "mse")
    model.build()
    return model


def ckpt(directory, iterations, model=None, run_id=None):
    """A checkpoint file: a real one with `model`, else a name alone."""
    path = checkpoint.checkpoint_path(directory, iterations)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model is None:
        path.write_bytes(b"")
    else:
        checkpoint.save(path, model, run_id=run_id)
    return path


def log_lines(*records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def found(directory, checkpoints=None):
    return earlier_run(directory, checkpoints or directory, directory / "metrics.jsonl")


def moved(directory, checkpoints=None):
    return move_aside(directory, checkpoints or directory, directory / "metrics.jsonl")


def files(directory) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*")
                  if path.is_file())


def test_a_run_id_is_short_filename_safe_and_new_each_time():
    ids = {new_run_id() for _ in range(20)}
    assert len(ids) > 1
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id) for run_id in ids)


def test_nothing_a_run_leaves_is_no_earlier_run(tmp_path):
    assert found(tmp_path / "missing") is None
    assert found(tmp_path) is None
    (tmp_path / LOCK_NAME).write_text("{}")
    (tmp_path / "metrics.jsonl").touch()  # what a probe of the metrics log may leave
    (tmp_path / "earlier").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert found(tmp_path) is None
    assert moved(tmp_path) == []


def test_an_earlier_run_is_described_in_one_phrase(tmp_path):
    (tmp_path / "final.h5").write_bytes(b"x")
    assert found(tmp_path) == "final.h5"
    for iterations in (10, 30, 20):
        ckpt(tmp_path, iterations)
    (tmp_path / ".ckpt-000000040.h5.tmp-99").write_bytes(b"")
    (tmp_path / "metrics.jsonl").write_text(log_lines(
        *({"epoch": epoch, "loss": 1.0, "time": f"2026-12-01T05:1{epoch}:03Z", "run": RUN}
          for epoch in (1, 2, 3)), {"strategy": "allreduce", "bytes": 10}))
    assert found(tmp_path) == (
        "final.h5, 3 checkpoints (newest ckpt-000000030.h5), 1 temporary checkpoint file and "
        f"metrics.jsonl (run {RUN}, 3 epochs, last 2026-12-01T05:13:03Z)")


def test_checkpoints_in_another_directory_are_found_there(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "checkpoints"
    ckpt(elsewhere, 5)
    run.mkdir()
    assert found(run) is None
    assert found(run, elsewhere) == f"1 checkpoint in {elsewhere} (newest ckpt-000000005.h5)"


@pytest.mark.parametrize("content", [
    b"\x00\xff garbage\n{not json\n[1, 2]\n\"text\"\n" + b"[" * 100_000 + b"\n",
    log_lines({"epoch": "3", "run": "../../etc", "time": "yesterday"},
              {"epoch": True, "run": 7, "time": None}, {"epoch": 10**30}).encode(),
    b"{\"epoch\": 1" + b"1" * 10_000 + b"}\n",
], ids=["binary-and-deep", "wrong-types", "huge-number"])
def test_a_garbage_metrics_log_is_described_by_its_size(tmp_path, content):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    assert found(tmp_path) == f"metrics.jsonl ({len(content):,} bytes)"


@pytest.mark.timeout(10)
def test_only_the_end_of_a_huge_metrics_log_is_read(tmp_path):
    with (tmp_path / "metrics.jsonl").open("wb") as file:
        file.seek(2**40)  # a terabyte of zeros, sparse: reading it all would never end
        file.write(b"\n" + log_lines({"epoch": 7, "run": RUN}).encode())
    assert found(tmp_path) == f"metrics.jsonl (run {RUN}, 7 epochs)"


def test_start_over_moves_the_earlier_run_into_earlier_its_id(tmp_path, model):
    ckpt(tmp_path, 1, model, run_id=RUN)
    (tmp_path / "final.h5").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text(log_lines({"epoch": 1, "run": RUN}))
    (tmp_path / LOCK_NAME).write_text("{}")
    assert moved(tmp_path) == [tmp_path / "earlier" / RUN]
    assert files(tmp_path) == [LOCK_NAME, f"earlier/{RUN}/ckpt-000000001.h5",
                               f"earlier/{RUN}/final.h5", f"earlier/{RUN}/metrics.jsonl"]
    assert found(tmp_path) is None


def test_a_run_id_that_is_no_file_name_is_not_used(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(log_lines({"epoch": 1, "run": "abc\n"}))
    assert found(tmp_path) == "metrics.jsonl (1 epoch)"
    (destination,) = moved(tmp_path)
    assert re.fullmatch(r"\d{8}-\d{6}", destination.name)


def test_without_a_log_the_id_comes_from_the_newest_checkpoint(tmp_path, model):
    ckpt(tmp_path, 1, model, run_id="older")
    ckpt(tmp_path, 2, model, run_id=RUN)
    assert moved(tmp_path) == [tmp_path / "earlier" / RUN]


def test_without_an_id_the_earlier_run_is_named_by_its_newest_file(tmp_path):
    (tmp_path / "final.h5").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text(log_lines({"epoch": 1, "run": "../../etc"}))
    (destination,) = moved(tmp_path)
    assert destination.parent == tmp_path / "earlier"
    assert re.fullmatch(r"\d{8}-\d{6}", destination.name)


def test_successive_start_overs_keep_every_earlier_run(tmp_path):
    for content in ("first", "second", "third"):
        (tmp_path / "final.h5").write_text(content)
        (tmp_path / "metrics.jsonl").write_text(log_lines({"epoch": 1, "run": RUN}))
        moved(tmp_path)
    assert [(tmp_path / "earlier" / name / "final.h5").read_text()
            for name in (RUN, f"{RUN}-2", f"{RUN}-3")] == ["first", "second", "third"]


def test_a_separate_checkpoint_directory_gets_its_own_earlier_folder(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "checkpoints"
    ckpt(elsewhere, 5)
    run.mkdir()
    (run / "metrics.jsonl").write_text(log_lines({"epoch": 1, "run": RUN}))
    (elsewhere / "earlier" / RUN).mkdir(parents=True)  # taken there: both take -2
    assert moved(run, elsewhere) == [elsewhere / "earlier" / f"{RUN}-2",
                                     run / "earlier" / f"{RUN}-2"]
    assert files(tmp_path) == [f"checkpoints/earlier/{RUN}-2/ckpt-000000005.h5",
                               f"run/earlier/{RUN}-2/metrics.jsonl"]


def test_metrics_lines_carry_the_time_and_the_run(tmp_path):
    for run_id in (RUN, None):
        log = MetricsLog(tmp_path / "metrics.jsonl", samples=10, run_id=run_id, world_size=2)
        log.on_epoch_begin(0)
        log.on_epoch_end(0, {"loss": float("nan")})
    with_id, without = map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert with_id["run"] == RUN and "run" not in without
    assert with_id["loss"] is None and with_id["world_size"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", with_id["time"])


def test_a_process_that_has_ended_but_is_not_yet_reaped_is_not_running():
    """A lock's holder killed with its job may linger as a zombie for a moment."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not process_running(child.pid)
    child.wait()
    assert process_running(os.getpid())
