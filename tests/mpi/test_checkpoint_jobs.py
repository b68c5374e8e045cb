"""Checkpoints across ranks: exact resume on 2 ranks, resuming on another world size or
strategy, and kill -9 while checkpoints are being written."""

import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import MPINN

JOB = """
[run]
name = "ckpt"
directory = "{directory}"
seed = 11

[data]
dataset = "digits"

[model]
layers = [
    {{ type = "dense", units = 32, activation = "relu" }},
    {{ type = "dense", units = 10, activation = "softmax" }},
]

[training]
epochs = {epochs}
batch_size = 64
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]

[optimizer]
name = "adam"
learning_rate = 0.003

[checkpoint]
keep = 100
"""


def write_job(tmp_path, name, epochs):
    directory = tmp_path / name
    (tmp_path / f"{name}.toml").write_text(JOB.format(directory=directory, epochs=epochs))
    return directory


def losses(directory):
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


@pytest.mark.timeout(240)
def test_two_rank_resume_is_bit_identical(tmp_path, launch):
    whole, parts = write_job(tmp_path, "whole", 4), write_job(tmp_path, "parts", 4)
    assert launch(2, "train", "whole.toml", "-q").returncode == 0
    assert launch(2, "train", "parts.toml", "-q", "--set", "training.epochs=2").returncode == 0
    resumed = launch(2, "train", "parts.toml", "-q", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    a, b = checkpoint.read(whole / "final.h5"), checkpoint.read(parts / "final.h5")
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    for slot in a.optimizer:
        for name in a.optimizer[slot]:
            np.testing.assert_array_equal(a.optimizer[slot][name], b.optimizer[slot][name])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("first, then", [
    ((4, "allreduce"), (2, "allreduce")),
    ((4, "allreduce"), (None, "allreduce")),
    ((3, "ps"), (2, "allreduce")),
    ((2, "allreduce"), (3, "ps")),
], ids=["4-to-2", "4-to-1", "ps-to-allreduce", "allreduce-to-ps"])
def test_resume_on_another_world_size_or_strategy(tmp_path, launch, first, then):
    directory = write_job(tmp_path, "run", 6)
    ranks, strategy = first
    sync = ["--set", "strategy.mode='sync'"] if strategy == "ps" else []
    started = launch(ranks, "train", "run.toml", "-q", "--set", "training.epochs=3",
                     "--set", f"strategy.name='{strategy}'", *sync)
    assert started.returncode == 0, started.stderr
    before = losses(directory)
    ranks, strategy = then
    sync = ["--set", "strategy.mode='sync'"] if strategy == "ps" else []
    resumed = launch(ranks, "train", "run.toml", "-q", "--resume", "auto",
                     "--set", f"strategy.name='{strategy}'", *sync)
    assert resumed.returncode == 0, resumed.stderr
    after = losses(directory)[len(before):]
    assert len(before) == 3 and len(after) == 3
    # training continues where it stopped: no jump back up to an untrained loss
    assert after[0] < before[-1] * 1.1 and after[-1] < before[-1]
    assert checkpoint.read(directory / "final.h5").attrs["strategy"] == strategy


@pytest.mark.timeout(300)
def test_a_checkpoint_of_two_servers_holds_the_whole_state_and_resumes_anywhere(tmp_path,
                                                                               launch):
    """Two sync servers and one worker train exactly as one process does: the checkpoint
    they wrote (each server's slice of the optimizer state gathered on rank 0) equals the
    single-process one bit for bit, and resuming it with one server or under allreduce
    ends where the single-process run ends."""
    alone, two = write_job(tmp_path, "alone", 4), write_job(tmp_path, "two", 4)
    assert launch(None, "train", "alone.toml", "-q").returncode == 0
    ps = ["--set", "strategy.name='ps'", "--set", "strategy.mode='sync'"]
    started = launch(3, "train", "two.toml", "-q", "--set", "training.epochs=2", *ps,
                     "--set", "strategy.servers=2")
    assert started.returncode == 0, started.stderr
    saved = sorted(two.glob("ckpt-*.h5"))[-1]
    a, b = checkpoint.read(alone / saved.name), checkpoint.read(saved)
    assert b.attrs["iterations"] == a.attrs["iterations"] > 0
    for slot in a.optimizer:
        for name in a.optimizer[slot]:
            np.testing.assert_array_equal(b.optimizer[slot][name], a.optimizer[slot][name],
                                          err_msg=f"{slot}/{name}")
    expected = checkpoint.read(alone / "final.h5").params
    for name, ranks, strategy in (("one", 2, ps), ("allreduce", None, [])):
        directory = write_job(tmp_path, name, 4)
        resumed = launch(ranks, "train", f"{name}.toml", "-q", "--resume", str(saved),
                         *strategy)
        assert resumed.returncode == 0, resumed.stderr
        final = checkpoint.read(directory / "final.h5")
        assert final.attrs["iterations"] == checkpoint.read(alone / "final.h5").attrs["iterations"]
        for tensor in expected:
            np.testing.assert_array_equal(final.params[tensor], expected[tensor],
                                          err_msg=f"{name}: {tensor}")


@pytest.mark.timeout(600)
def test_kill_9_while_writing_checkpoints_never_loses_the_last_good_one(tmp_path):
    """A larger model checkpointed every step, killed at 20 random moments: each time a
    valid checkpoint remains, stray temporary files are ignored, and --resume auto works."""
    directory = tmp_path / "killed"
    job = JOB.format(directory=directory, epochs=1000).replace(
        "units = 32", "units = 2048").replace("keep = 100", "keep = 2\nevery_steps = 1")
    (tmp_path / "killed.toml").write_text(job)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    rng = random.Random(0)
    kills = interrupted_writes = 0
    while kills < 20:
        process = subprocess.Popen([MPINN, "train", "killed.toml", "-q", "--resume", "auto"],
                                   cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        time.sleep(rng.uniform(1.0, 2.5))
        if process.poll() is not None:
            pytest.fail(f"training ended before the kill: {process.stderr.read()!r}")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills += 1
        interrupted_writes += any(".tmp-" in p.name for p in directory.iterdir())
        found = checkpoint.latest_valid(directory)
        if kills > 1:  # after the first run there is always a checkpoint to resume
            assert found is not None
    assert interrupted_writes >= 3  # the kills did land in the middle of writes
    finished = subprocess.run([MPINN, "train", "killed.toml", "-q", "--resume", "auto",
                               "--set", "training.epochs=1"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert not [p for p in directory.iterdir() if ".tmp-" in p.name]  # strays cleaned


@pytest.mark.timeout(60)
def test_a_damaged_checkpoint_exits_2_on_every_rank(tmp_path, launch):
    write_job(tmp_path, "run", 1)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an HDF5 signature, then nothing
    run = launch(2, "train", "run.toml", "--resume", str(broken))
    assert run.returncode == 2
    assert run.stderr.count(f"{broken}: damaged checkpoint") == 1
    assert len(run.stderr.splitlines()) == 1
