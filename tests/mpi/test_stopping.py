"""Stopping on SIGTERM, SIGUSR1 (Slurm's warnings) and SIGINT (Ctrl-C): every rank stops at
the same step, rank 0 checkpoints, the exit code is 128 + the signal, and a resumed run
ends with exactly the parameters of an uninterrupted one."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from mpinn import checkpoint

from .conftest import MPIEXEC, MPINN

JOB = """
[run]
name = "stop"
directory = "{directory}"
seed = 5

[model]
layers = [
    {{ type = "dense", units = 32, activation = "relu" }},
    {{ type = "dense", units = 10, activation = "softmax" }},
]

[training]
epochs = 20
batch_size = 8
loss = "sparse_categorical_crossentropy"

[checkpoint]
keep = 100
"""


def start(command, cwd):
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def signal_after_first_checkpoint(process, directory, signum, timeout=60):
    deadline = time.monotonic() + timeout
    while not checkpoint.list_checkpoints(directory):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signum)
    return process.communicate(timeout=timeout)


def stopped_and_resumed(tmp_path, sets):
    """Two runs of JOB on 2 ranks with `sets` (--set arguments): one whole, one stopped by
    SIGTERM after its first checkpoint and resumed; (the stop's checkpoint, the whole
    run's final.h5, the resumed run's)."""
    launcher = [MPIEXEC, "-n", "2", MPINN, "train"]
    for name in ("whole", "parts"):
        (tmp_path / f"{name}.toml").write_text(JOB.format(directory=tmp_path / name))
    whole = start([*launcher, "whole.toml", "-q", *sets], tmp_path)
    assert whole.wait(timeout=120) == 0, whole.communicate()[1]
    parts = start([*launcher, "parts.toml", "-q", *sets], tmp_path)
    _, stderr = signal_after_first_checkpoint(parts, tmp_path / "parts", signal.SIGTERM)
    assert parts.returncode == 128 + signal.SIGTERM, stderr
    stopped = checkpoint.latest_valid(tmp_path / "parts")
    resumed = start([*launcher, "parts.toml", "-q", "--resume", "auto", *sets], tmp_path)
    assert resumed.wait(timeout=120) == 0, resumed.communicate()[1]
    return (stopped, checkpoint.read(tmp_path / "whole" / "final.h5"),
            checkpoint.read(tmp_path / "parts" / "final.h5"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum, ranks", [(signal.SIGTERM, 2), (signal.SIGUSR1, 2),
                                           (signal.SIGINT, 2), (signal.SIGUSR1, None)],
                         ids=["TERM-2-ranks", "USR1-2-ranks", "INT-2-ranks", "USR1-1-process"])
def test_stop_checkpoint_and_resume_equal_an_uninterrupted_run(tmp_path, signum, ranks):
    if MPIEXEC is None or MPINN is None:
        pytest.skip("mpiexec or mpinn is not installed")
    launcher = [] if ranks is None else [MPIEXEC, "-n", str(ranks)]
    directories = {name: tmp_path / name for name in ("whole", "parts")}
    for name, directory in directories.items():
        (tmp_path / f"{name}.toml").write_text(JOB.format(directory=directory))
    whole = subprocess.run([*launcher, MPINN, "train", "whole.toml", "-q"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert whole.returncode == 0, whole.stderr

    process = start([*launcher, MPINN, "train", "parts.toml", "-q"], tmp_path)
    _, stderr = signal_after_first_checkpoint(process, directories["parts"], signum)
    assert process.returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    assert f"mpinn: stopped by {name} after" in stderr and "--resume auto" in stderr
    stopped_at = checkpoint.latest_valid(directories["parts"])
    assert stopped_at.attrs["iterations"] < 20 * 180  # it did stop before the end

    resumed = subprocess.run([*launcher, MPINN, "train", "parts.toml", "-q", "--resume", "auto"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    a = checkpoint.read(directories["whole"] / "final.h5")
    b = checkpoint.read(directories["parts"] / "final.h5")
    for tensor, value in a.params.items():
        np.testing.assert_array_equal(b.params[tensor], value, err_msg=tensor)
