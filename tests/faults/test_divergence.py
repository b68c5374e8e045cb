"""Non-finite values are a stop, not a checkpoint: a diverging run exits 3 naming where it
diverged and the last good checkpoint; nothing non-finite is ever written; pruning keeps
the good checkpoints and `--resume auto` resumes one; the metrics log stays valid JSON.
With `training.on_nonfinite = "skip"` such steps are skipped and counted instead."""

import json

import h5py
import numpy as np
import pytest

from mpinn import checkpoint

JOB = """
[run]
name = "regression"
directory = "{directory}"

[data]
dataset = "npz"
path = "{data}"

[model]
layers = [{{ type = "dense", units = 16, activation = "relu" }}, {{ type = "dense", units = 1 }}]

[training]
epochs = {epochs}
batch_size = 16
loss = "mse"

[optimizer]
name = "sgd"
learning_rate = 0.1

[checkpoint]
keep = 2
"""


def regression_job(tmp_path, epochs=3, outlier=False):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (400, 1)).astype(np.float32)
    y = (1.5 * x + 0.8).astype(np.float32)
    if outlier:  # finite, but its squared error overflows float32: one Inf loss per epoch
        y[7] = 3e38
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "job.toml").write_text(JOB.format(directory=tmp_path / "run", epochs=epochs,
                                                  data=tmp_path / "data.npz"))
    return tmp_path / "run"


def all_finite(path) -> bool:
    found = checkpoint.read(path)
    tensors = [*found.params.values()] + [v for slot in found.optimizer.values()
                                         for v in slot.values()]
    return all(np.isfinite(value).all() for value in tensors)


def metrics(directory) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_diverging_run_stops_with_exit_3_and_keeps_the_good_checkpoints(tmp_path, launch,
                                                                          ranks):
    directory = regression_job(tmp_path)
    good = launch(ranks, "train", "job.toml", "-q").finish()
    assert good.returncode == 0, good.stderr
    kept = checkpoint.list_checkpoints(directory)
    final = (directory / "final.h5").read_bytes()

    diverged = launch(ranks, "train", "job.toml", "-q", "--resume", "auto", "--set",
                      "training.epochs=6", "--set", "optimizer.learning_rate=50").finish()
    assert diverged.returncode == 3, diverged.stderr
    assert diverged.seconds < 20
    assert "mpinn: training diverged in epoch 4 step" in diverged.stderr
    assert "the loss is nan" in diverged.stderr or "the loss is inf" in diverged.stderr
    assert f"the last good checkpoint is {kept[0]}" in diverged.stderr
    assert diverged.stderr.startswith(
        f"mpinn: note: resuming {kept[0]} with other settings: optimizer.learning_rate is "
        f"50.0 here but 0.1 in {kept[0]} (stored job)\n")
    assert diverged.stderr.count("\n") == 2  # and the one line of the stop, from one rank
    assert checkpoint.list_checkpoints(directory) == kept  # none written, none pruned
    assert all(all_finite(path) for path in kept)
    assert (directory / "final.h5").read_bytes() == final
    assert len(metrics(directory)) == 3  # the log is JSON, and the run logged no epoch

    resumed = launch(ranks, "train", "job.toml", "-q", "--resume", "auto", "--set",
                     "training.epochs=4").finish()
    assert resumed.returncode == 0, resumed.stderr
    assert all_finite(directory / "final.h5")


@pytest.mark.timeout(120)
def test_a_run_that_diverges_at_an_epoch_end_writes_null_not_nan(tmp_path, launch):
    directory = regression_job(tmp_path, epochs=2)
    run = launch(None, "train", "job.toml", "-q", "--set", "optimizer.learning_rate=1e38",
                 "--set", "training.batch_size=320").finish()  # one step, to Inf
    assert run.returncode == 3, run.stderr
    assert "training diverged in epoch 1: val_loss = nan" in run.stderr
    assert "no checkpoint was written" in run.stderr
    assert not checkpoint.list_checkpoints(directory)
    for record in metrics(directory) if (directory / "metrics.jsonl").exists() else []:
        assert all(value is None or not isinstance(value, float) or np.isfinite(value)
                   for value in record.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks", [1, 2])
def test_skip_policy_skips_and_counts_the_non_finite_steps(tmp_path, launch, ranks):
    directory = regression_job(tmp_path, epochs=4, outlier=True)
    stopped = launch(ranks, "train", "job.toml", "-q").finish()
    assert stopped.returncode == 3, stopped.stderr
    assert "training diverged in epoch 1 step" in stopped.stderr

    skipped = launch(ranks, "train", "job.toml", "-q", "--set",
                     "training.on_nonfinite='skip'").finish()
    assert skipped.returncode == 0, skipped.stderr
    records = metrics(directory)
    assert [record["nonfinite_steps_skipped"] for record in records] == [1, 2, 3, 4]
    assert all(np.isfinite(record["loss"]) for record in records)
    assert records[-1]["loss"] < records[0]["loss"]  # it trained on the other steps
    assert all_finite(directory / "final.h5")


@pytest.mark.timeout(120)
def test_resume_auto_passes_over_a_nan_checkpoint_and_pruning_keeps_the_new_one(tmp_path,
                                                                                launch):
    """The newest checkpoint holds NaN (an older mpinn, a bad disk): it is skipped, said
    so, and the resumed run's checkpoint is kept, though the NaN one has more steps."""
    directory = regression_job(tmp_path, epochs=3)
    assert launch(None, "train", "job.toml", "-q").finish().returncode == 0
    nan, resumed = checkpoint.list_checkpoints(directory)[:2]  # 60 and 40 steps
    with h5py.File(nan, "r+") as file:  # HDF5 updates the checksum: it reads cleanly
        file["params/dense_0/kernel"][0, 0] = np.nan
    run = launch(None, "train", "job.toml", "-q", "--resume", "auto", "--set",
                 "training.batch_size=32", "--set", "checkpoint.keep=1").finish()
    assert run.returncode == 0, run.stderr
    assert run.stderr == (f"mpinn: --resume auto skipped {nan}: parameters dense_0/kernel "
                          f"holds NaN\nmpinn: note: resuming {resumed} with other settings: "
                          f"training.batch_size is 32 here but 16 in {resumed} (stored job)\n")
    assert checkpoint.list_checkpoints(directory) == [directory / "ckpt-000000050.h5"]
    assert all_finite(directory / "ckpt-000000050.h5")
