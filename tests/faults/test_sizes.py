"""Data and sizes are checked before anything is allocated or trained: x and y of
different lengths, a model too large for the node's memory, a batch larger than the data,
each with one line that names the file or the key."""

import numpy as np
import pytest

from mpinn.data import load_digits

from .conftest import write_job

NPZ = '\n[data]\ndataset = "npz"\npath = "{}"\n'


@pytest.mark.timeout(60)
@pytest.mark.parametrize("short", ["x", "y"])
def test_x_and_y_of_different_lengths_are_refused_naming_the_file(tmp_path, launch, short):
    x, y = load_digits()
    arrays = {"x": x, "y": y}
    arrays[short] = arrays[short][:-5]
    np.savez(tmp_path / "data.npz", **arrays)
    write_job(tmp_path / "job.toml", tmp_path / "run", extra=NPZ.format(tmp_path / "data.npz"))
    run = launch(2, "train", "job.toml", "-q").finish()
    assert run.returncode == 2
    lengths = {name: len(array) for name, array in arrays.items()}
    assert run.stderr == (f"mpinn: error: job.toml: [data] (dataset 'npz', path="
                          f"'{tmp_path / 'data.npz'}', x='x', y='y'): x has {lengths['x']} "
                          f"samples but y has {lengths['y']}\n")


@pytest.mark.timeout(60)
def test_a_model_too_large_for_memory_is_refused_before_allocating(tmp_path, launch):
    write_job(tmp_path / "job.toml", tmp_path / "run")
    run = launch(2, "train", "job.toml", "-q", "--set",
                 "model.layers=[{type='dense', units=100000000000}, {type='dense', units=10}]"
                 ).finish()
    assert run.returncode == 2, run.stderr
    assert run.seconds < 15
    line, = run.stderr.splitlines()
    assert line.startswith("mpinn: error: job.toml: [model] needs 109.1 TiB for "
                           "7,500,000,000,010 parameters (float32: values, gradients and 2 "
                           "optimizer buffers), but this node has ")
    assert line.endswith("of memory available for each of its 2 ranks")


@pytest.mark.timeout(60)
def test_a_batch_larger_than_the_data_says_what_happens(tmp_path, launch):
    write_job(tmp_path / "job.toml", tmp_path / "run", epochs=2)
    run = launch(2, "train", "job.toml", "-q", "--set", "training.batch_size=5000").finish()
    assert run.returncode == 0, run.stderr
    assert run.stderr == ("mpinn: note: training.batch_size = 5000 exceeds the 1438 training "
                          "samples: each epoch is one step on all of them\n")
