"""A checkpoint is used as it was trained: `--set` overrides of layers, activations, dtype,
split and seeds reach `evaluate`, `predict` and `load_model`, whose figures then equal
training's own (exactly, for the same world size: same shards, same batches, same sums)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mpinn
from mpinn import checkpoint
from mpinn.data import load_digits
from mpinn.dist import LocalComm
from mpinn.inference import prepare_evaluation

from .conftest import MPIEXEC

JOB = """
[run]
directory = "run"
[data]
dataset = "npz"
path = "digits.npz"
[model]
layers = [{ type = "dense", units = 32, activation = "relu" },
          { type = "dense", units = 10, activation = "softmax" }]
[training]
epochs = 3
batch_size = 20
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
"""
OVERRIDES = ['model.layers=[{ type = "dense", units = 24, activation = "tanh" }, '
             '{ type = "dense", units = 10, activation = "softmax" }]',
             "model.dtype=float64", "data.validation_split=0.5", "data.split_seed=7",
             "run.seed=3"]


def trained(tmp_path, launch, ranks):
    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x=digits.x, y=digits.y)
    (tmp_path / "job.toml").write_text(JOB)
    arguments = ["train", "job.toml", "-q"] + [f"--set={item}" for item in OVERRIDES]
    done = launch(ranks, *arguments)
    assert done.returncode == 0, done.stderr
    final = tmp_path / "run" / "final.h5"
    history = checkpoint.read(final).history
    return final, {key: values[-1] for key, values in history.items() if key.startswith("val_")}


def test_evaluate_and_load_model_reproduce_training_exactly(tmp_path, launch, monkeypatch):
    final, last = trained(tmp_path, launch, None)
    monkeypatch.chdir(tmp_path)
    evaluation = prepare_evaluation(final)
    assert len(evaluation.x) == 898  # half of 1797: the split of the --set, not the file's
    logs = evaluation.run(LocalComm())
    assert {f"val_{key}": value for key, value in logs.items()} == last
    model = mpinn.load_model(final)
    assert model.dtype == np.float64 and model.layers[0].output_dim == 24
    assert model.layers[0].get_config()["activation"] == "tanh"
    x, y = evaluation.x, evaluation.y
    assert model.evaluate(x, y, batch_size=20, return_dict=True) == logs
    np.save(tmp_path / "x.npy", load_digits().x[:50])
    shown = launch(None, "predict", str(final), "x.npy", "-o", "out.npy")
    assert shown.returncode == 0, shown.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), model.predict(load_digits().x[:50]))
    printed = launch(None, "evaluate", str(final))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == ("the validation hold-out (0.5 of the data, split_seed 7), 898 "
                              f"samples: loss: {last['val_loss']:.4f} - accuracy: "
                              f"{last['val_accuracy']:.4f}\n")


def test_evaluate_on_two_ranks_reproduces_two_rank_training(tmp_path, launch):
    final, last = trained(tmp_path, launch, 2)
    script = ("import json, sys; from mpinn.dist.comm import world; "
              "from mpinn.inference import prepare_evaluation; comm = world(); "
              "logs = prepare_evaluation(sys.argv[1]).run(comm); "
              "comm.rank or print(json.dumps(logs))")
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", script, str(final)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    logs = json.loads(done.stdout)
    assert {f"val_{key}": value for key, value in logs.items()} == last
    printed = launch(2, "evaluate", str(final))
    assert printed.returncode == 0 and len(printed.stdout.splitlines()) == 1, printed.stderr


def test_a_separate_file_is_scored_whole(tmp_path, launch):
    final, _ = trained(tmp_path, launch, None)
    digits = load_digits()
    np.savez(tmp_path / "test.npz", x=digits.x[:300], y=digits.y[:300])
    whole = launch(None, "evaluate", str(final), "--data", "test.npz")
    assert whole.returncode == 0 and whole.stdout.startswith("test.npz, 300 samples: loss: ")
    also = launch(None, "evaluate", str(final), "--set", "data.path=test.npz")
    assert also.returncode == 0 and also.stdout.startswith("dataset 'npz', 300 samples: ")
    assert whole.stdout.split(": ", 1)[1] == also.stdout.split(": ", 1)[1]
    refused = launch(None, "evaluate", str(final), "--set", "model.dtype=float32")
    assert refused.returncode == 2 and refused.stderr == (
        "mpinn: error: --set 'model.dtype=float32': only data.* keys and model.backend can "
        "be set here; the model is the checkpoint's\n")
    wrong = launch(None, "evaluate", str(final), "--data", "test.csv")
    assert wrong.returncode == 2 and "--data test.csv: give a .npz or HDF5" in wrong.stderr


@pytest.mark.parametrize("ranks", [None, 2])
def test_bad_input_prints_one_line_once(tmp_path, launch, ranks):
    for command in (["evaluate", "missing.h5"], ["predict", "missing.h5", "x.npy", "-o", "o"],
                    ["inspect", "missing.h5"]):
        done = launch(ranks, *command)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == "mpinn: error: missing.h5: no such checkpoint file\n"


def test_a_validation_file_is_the_validation_set(tmp_path, launch):
    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x=digits.x[:1500], y=digits.y[:1500])
    np.savez(tmp_path / "val.npz", x=digits.x[1500:], y=digits.y[1500:])
    (tmp_path / "job.toml").write_text(JOB.replace('path = "digits.npz"',
                                                   'path = "digits.npz"\n'
                                                   'validation = { path = "val.npz" }'))
    done = launch(None, "train", "job.toml", "-q")
    assert done.returncode == 0, done.stderr
    last = checkpoint.read(tmp_path / "run" / "final.h5").history["val_loss"][-1]
    scored = launch(None, "evaluate", "run/final.h5")
    assert scored.stdout.startswith(f"the validation set (data.validation), 297 samples: "
                                    f"loss: {last:.4f} - accuracy: "), scored.stderr
